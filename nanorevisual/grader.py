"""The answer checker shared by the rewards and eval: the last \\boxed{} of a completion, then a
bounded comparison with the gold answer (paper §2.1; how it differs from the released MathRuler
checker: docs/paper_notes.md §2). Stdlib only, and it never executes model text: a small evaluator
with size and depth limits stands in for sympy, so a hostile completion costs at most a few ms.

    extract_boxed("so <think>..</think> \\boxed{\\frac{1}{2}}")  -> "\\frac{1}{2}"
    grade("\\frac{1}{2}", "0.5") -> True    grade("(B)", "B") -> True
"""

import math
import re
from functools import lru_cache

MAX_ANSWER_CHARS = 1000  # longer answers grade False unparsed: all grading work stays bounded
MAX_EXPR_CHARS = 200  # the expression evaluator refuses longer strings
MAX_EXPR_DEPTH = 50  # nesting limit of the evaluator, far below Python's recursion limit
MAX_ITEMS = 32  # longest tuple / list compared element by element (unordered matching is quadratic)
REL_TOL = 1e-4
ZERO_TOL = 1e-12  # |x| below this equals an exact 0 (float noise such as sin(pi))

# -----------------------------------------------------------------------------
# Extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _closing_brace(text: str, start: int) -> int:
    """Index of the '}' matching the '{' at text[start], or -1; escaped braces are skipped."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character, so "\{" inside a box does not count
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (braces matched) or "\\boxed 5"; or None."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    i = starts[-1]  # MathRuler: the LAST box is the answer
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] == "{":
        end = _closing_brace(text, i)
        return text[i + 1:end].strip() if end != -1 else None
    m = re.match(r"[^\s$]+", text[i:])  # "\boxed 5$": the token up to whitespace or "$"
    return m.group(0) if m else None


# -----------------------------------------------------------------------------
# Normalisation: LaTeX answer -> canonical string

_UNICODE = {"π": "\\pi", "∞": "\\infty", "−": "-", "×": "\\times", "·": "\\cdot", "÷": "\\div",
            "√": "\\sqrt", "²": "^2", "³": "^3", "°": "^\\circ"}
_SPACING_RE = re.compile(r"\\[,;:! ]|~|\\q?quad(?![a-zA-Z])|\\displaystyle"
                         r"|\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree(?![a-zA-Z])")
_TEXT_CMD = (r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname|boldsymbol"
             r"|boxed)\s*\{([^{}]*)\}")
_TEXT_CMD_RE = re.compile(_TEXT_CMD)
_TRAILING_TEXT_RE = re.compile(r"\s*" + _TEXT_CMD + r"(?:\^\{?\d\}?)?\s*$")
_WORD_UNIT_RE = re.compile(r"([-+]?[\d.,]*\d)\s*(?!pi\b)[a-zA-Z]{2,}(?:\^\{?\d\}?)?")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_ASSIGN_RE = re.compile(r"(?:[a-z]|\\[a-z]+)(?:_\{?[a-z0-9]+\}?)?(?:\([a-z]\))?(?:=|\\in(?![a-z]))")
_INFINITY_RE = re.compile(r"(?<![a-z\\])inf(?:inity)?(?![a-z])")


def unwrap_latex(s: str) -> str:
    """\\text{abc} -> abc (also \\mathrm, \\textbf, \\boxed, ...), innermost first."""
    for _ in range(10):  # bounded: each pass removes one nesting level
        s, n = _TEXT_CMD_RE.subn(r"\1", s)
        if n == 0:
            break
    return s


def _strip_units(s: str) -> str:
    """'5 \\text{cm}' -> '5', '12 apples' -> '12': a unit only counts after something numeric."""
    m = _TRAILING_TEXT_RE.search(s)
    if m and re.search(r"\d|\\pi", s[:m.start()]):
        s = s[:m.start()]
    m = _WORD_UNIT_RE.fullmatch(s.strip())
    return m.group(1) if m else s


def _fix_shorthand(s: str) -> str:
    """\\frac12, \\frac1{2}, \\frac{1}2 -> \\frac{1}{2}; \\sqrt2 -> \\sqrt{2}: TeX reads a token."""
    s = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\w)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac(\{[^{}]*\})(\w)", r"\\frac\1{\2}", s)
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def _strip_assignment(s: str) -> str:
    """'x=5' -> '5', 'f(x)=2x' -> '2x', 'x\\in[0,1]' -> '[0,1]'; 'x+y=5', 'x=1,y=2' stay."""
    m = _ASSIGN_RE.match(s)
    if m is None or s.count("=") != (1 if m.group(0).endswith("=") else 0):  # only the matched '='
        return s
    return s[m.end():]


def _strip_outer_braces(s: str) -> str:
    """'{{5}}' -> '5' (TeX grouping), but '{1,2}' is a set and stays."""
    for _ in range(8):
        grouped = s.startswith("{") and _closing_brace(s, 0) == len(s) - 1
        if not grouped or len(_split_top(s[1:-1])) > 1:
            break
        s = s[1:-1]
    return s


def normalize_answer(s: str) -> str:
    """Canonical lowercase answer: LaTeX wrappers, units, spaces, '$', '%', 'x =' removed."""
    s = s.strip()
    if len(s) > MAX_ANSWER_CHARS:
        return s.lower()
    for src, dst in _UNICODE.items():
        s = s.replace(src, dst)
    for delim in ("\\(", "\\)", "\\[", "\\]"):
        s = s.replace(delim, "")
    s = _SPACING_RE.sub(" ", s)  # thin spaces and \left( \right) carry no meaning
    s = re.sub(r"\\[dtc]frac(?![a-zA-Z])", r"\\frac", s)
    s = _DEGREE_RE.sub("", s)
    for sign in ("\\%", "%", "\\$", "$"):  # "50\%" == "50" (paper_notes.md §2); "$" delimits math
        s = s.replace(sign, "")
    s = unwrap_latex(_strip_units(s))
    s = s.replace("\\{", "{").replace("\\}", "}").replace("{,}", ",")
    s = re.sub(r"\s+", "", s).lower()
    s = _fix_shorthand(s)
    if _THOUSANDS_RE.fullmatch(s):  # "1,000" is a number, "(1,000)" stays a tuple
        s = s.replace(",", "")
    s = _INFINITY_RE.sub(r"\\infty", s.rstrip("."))
    return _strip_outer_braces(_strip_assignment(s))


# -----------------------------------------------------------------------------
# A tiny, bounded expression evaluator (never eval/exec model text)

_TOKEN_RE = re.compile(r"\d+\.?\d*(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?"  # numbers, 1e-3 included
                       r"|\\(?:frac|sqrt|pi|cdot|times|div)"  # the only commands we evaluate
                       r"|[a-z](?![a-z])"  # a lone letter is a variable; "red" is not r*e*d
                       r"|[-+*/^(){}\[\]]")
_MIXED_RE = re.compile(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_INT_RE = re.compile(r"[-+]?\d+")
_NUM_POINTS = 3  # expressions with variables are compared at this many points


def _tokenize(s: str) -> list[str] | None:
    tokens, pos = [], 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            return None  # any other character (',', '=', '_', unknown \commands): not an expression
        tokens.append(m.group(0))
        pos = m.end()
    return tokens


def _is_var(tok: str) -> bool:
    return len(tok) == 1 and tok.isalpha()


def _is_number(tok: str) -> bool:
    return tok[0].isdigit() or tok[0] == "."


class _Parser:
    """Recursive descent over tokens, evaluating floats as it goes:
        expr := term (('+'|'-') term)*        term  := unary (('*'|'/'|implicit) unary)*
        unary := ('+'|'-') unary | power      power := atom ('^' unary)?    (right-associative)
        atom  := number | var | \\pi | (expr) | {expr} | \\frac atom atom | \\sqrt [expr]? atom
    Raises ValueError / ZeroDivisionError / OverflowError; the caller reads them as "not a number".
    """

    def __init__(self, tokens: list[str], env: dict[str, float]):
        self.tokens, self.env, self.i, self.depth = tokens, env, 0, 0

    def parse(self) -> float:
        value = self.expr()
        if self.i != len(self.tokens):
            raise ValueError(f"unexpected {self.peek()!r}")
        return value

    def peek(self) -> str:
        return self.tokens[self.i] if self.i < len(self.tokens) else ""

    def take(self, expected: str = "") -> str:
        tok = self.peek()
        if not tok or (expected and tok != expected):
            raise ValueError(f"expected {expected or 'a token'}, got {tok!r}")
        self.i += 1
        return tok

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> float:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "\\cdot", "\\times"):
                self.take()
                value *= self.unary()
            elif tok in ("/", "\\div"):
                self.take()
                value /= self.unary()
            elif tok and (tok in ("(", "{", "\\pi", "\\frac", "\\sqrt") or _is_var(tok)):
                value *= self.power()  # implicit: 2\pi, 2(3), x^2y; never "2" "3" (see _is_number)
            else:
                return value

    def unary(self) -> float:
        # every recursion cycle (groups, exponents, sign chains) passes here: one counter bounds it
        self.depth += 1
        if self.depth > MAX_EXPR_DEPTH:
            raise ValueError("expression nested too deeply")
        try:
            if self.peek() in ("+", "-"):
                sign = -1.0 if self.take() == "-" else 1.0
                return sign * self.unary()
            return self.power()
        finally:
            self.depth -= 1

    def power(self) -> float:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        return math.pow(base, self.unary())  # raises instead of hanging or going complex

    def atom(self) -> float:
        tok = self.take()
        if tok in ("(", "{"):
            value = self.expr()
            self.take(")" if tok == "(" else "}")
            return value
        if tok == "\\pi":
            return math.pi
        if tok == "\\frac":
            numerator = self.atom()
            return numerator / self.atom()
        if tok == "\\sqrt":
            index = 2.0
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
            radicand = self.atom()
            if radicand < 0 or index <= 0:
                raise ValueError("root of a negative number")
            return math.pow(radicand, 1.0 / index)
        if tok in self.env:
            return self.env[tok]
        if _is_number(tok):
            return float(tok)
        raise ValueError(f"unexpected {tok!r}")


def _var_value(name: str, k: int) -> float:
    """Deterministic, non-integer test point k for variable `name` (same on both sides)."""
    return 0.37 + 0.29 * (ord(name) - ord("a")) + 0.83 * k


@lru_cache(maxsize=4096)
def _evaluate(s: str) -> tuple[frozenset, tuple[float, ...]] | None:
    """(variable names, values at the test points) of a normalised answer, or None."""
    if not s or len(s) > MAX_EXPR_CHARS:
        return None
    m = _MIXED_RE.fullmatch(s)
    if m and 0 < int(m.group(3)) < int(m.group(4)):  # "3\frac{1}{2}" is a mixed number, 3.5
        value = int(m.group(2)) + int(m.group(3)) / int(m.group(4))
        return frozenset(), (-value if m.group(1) else value,)
    tokens = _tokenize(s)
    if not tokens:
        return None
    names = sorted({t for t in tokens if _is_var(t)})
    values = []
    for k in range(_NUM_POINTS if names else 1):
        try:
            value = _Parser(tokens, {n: _var_value(n, k) for n in names}).parse()
        except (ValueError, ZeroDivisionError, OverflowError):
            return None
        if not math.isfinite(value):  # "1e999999" parses to inf; inf - inf is nan
            return None
        values.append(value)
    return frozenset(names), tuple(values)


# -----------------------------------------------------------------------------
# Comparison

def _split_top(s: str) -> list[str]:
    """Split at commas outside any brackets: '(1,2),3' -> ['(1,2)', '3']."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(s[start:i])
            start = i + 1
    items.append(s[start:])
    return items


def _encloses(s: str) -> bool:
    """True if s[0] opens a bracket closed by s[-1] (they may mix, as in the interval '[0,1)')."""
    depth = 0
    for i, c in enumerate(s):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i < len(s) - 1:
            return False
    return depth == 0


def _as_sequence(s: str) -> tuple[str, list[str]] | None:
    """'(1,2]' -> ('(]', ['1', '2']), '1,2' -> ('', ['1', '2']); None for a single item."""
    brackets = ""
    if len(s) >= 2 and s[0] in "([{" and s[-1] in ")]}" and _encloses(s):
        brackets, s = s[0] + s[-1], s[1:-1]
    items = _split_top(s)
    return (brackets, [_strip_assignment(x) for x in items]) if len(items) > 1 else None


def _match_unordered(xs: list[str], ys: list[str], depth: int) -> bool:
    left = list(ys)
    for x in xs:
        j = next((j for j, y in enumerate(left) if _equal(x, y, depth + 1)), None)
        if j is None:
            return False
        left.pop(j)
    return True


def _close(x: float, y: float) -> bool:
    """Relative: 6.63e-34 != 9.11e-31 and 1e-9 != 0; only an exact 0 gets an absolute margin."""
    if x == 0 or y == 0:
        return abs(x - y) <= ZERO_TOL
    return math.isclose(x, y, rel_tol=REL_TOL)


def _equal(a: str, b: str, depth: int = 0) -> bool:
    """Two normalised answers: string, then union / sequence structure, then numeric value."""
    if not a or not b:
        return False  # an empty answer never matches, even an empty gold
    if a == b:
        return True
    if depth > 4:
        return False
    if "\\cup" in a or "\\cup" in b:
        parts_a, parts_b = a.split("\\cup"), b.split("\\cup")
        return len(parts_a) == len(parts_b) and all(
            _equal(x, y, depth + 1) for x, y in zip(parts_a, parts_b))
    seq_a, seq_b = _as_sequence(a), _as_sequence(b)
    if seq_a or seq_b:
        if not (seq_a and seq_b) or seq_a[0] != seq_b[0] or len(seq_a[1]) != len(seq_b[1]):
            return False  # "(1,2)" vs "[1,2]" or vs "1,2": different objects
        if len(seq_a[1]) > MAX_ITEMS:
            return False
        if seq_a[0] in ("", "{}"):  # sets and bare solution lists: order does not matter
            return _match_unordered(seq_a[1], seq_b[1], depth)
        return all(_equal(x, y, depth + 1) for x, y in zip(seq_a[1], seq_b[1]))
    if _INT_RE.fullmatch(a) and _INT_RE.fullmatch(b):
        return int(a) == int(b)  # a relative tolerance would make 1000000 == 1000001
    value_a, value_b = _evaluate(a), _evaluate(b)
    if value_a is None or value_b is None or value_a[0] != value_b[0]:
        return False
    return all(_close(x, y) for x, y in zip(value_a[1], value_b[1]))


def plain_text(s: str) -> str:
    """LaTeX wrappers, "$", markdown bold, outer spaces removed: \\text{B}, $B$, **B** -> B."""
    return unwrap_latex(str(s)).replace("$", "").replace("**", "").strip()


_GOLD_CHOICE_RE = re.compile(r"\(?([A-Z])\)?\.?")  # a gold option letter: "B", "(B)", "B."
# a predicted letter: "B", "(B)", "B.", "B)", "B: text", "(B) text", "Option B", "the answer is B"
_PRED_CHOICE_RE = re.compile(
    r"(?:(?:the\s+)?(?:correct\s+)?(?:option|choice|answer)(?:\s+is)?\s*[:\-]?\s*)?"
    r"(?:\((?P<paren>[A-Za-z])\)(?:\s.*)?|(?P<bare>[A-Za-z])(?:[.:)．：]\s*.*)?)", re.I | re.S)


def gold_choice_letter(gold: str) -> str | None:
    """The option letter a gold answer names ("B", "(B)", "B."), or None."""
    m = _GOLD_CHOICE_RE.fullmatch(plain_text(gold))
    return m.group(1) if m else None


def choice_letter(text: str) -> str | None:
    """The option letter a predicted answer names, upper case, or None."""
    m = _PRED_CHOICE_RE.fullmatch(plain_text(text))
    return (m.group("paren") or m.group("bare")).upper() if m else None


def grade(pred: str, gold: str) -> bool:
    """True if the predicted answer is equivalent to the gold answer."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    pred, gold = pred.strip(), gold.strip()
    if not pred or not gold or len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    gold_letter = gold_choice_letter(gold)
    if gold_letter is not None:  # multiple choice: the prediction must name that letter
        return choice_letter(pred) == gold_letter
    return _equal(normalize_answer(pred), normalize_answer(gold))
