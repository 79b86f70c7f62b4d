"""The rewards of ReVisual-R1 GRPO (paper §2.1, §4.1.2): strings and token counts in, floats out.

    completion = "<think>3+4=7</think> \\boxed{7}"       # gold "7", 20 tokens, budget 1024
    accuracy_reward(completion, "7")  -> 1.0   the last \\boxed{} grades equal to "7" (grader.py)
    format_reward(completion)         -> 1.0   one non-empty think block, then a non-empty box
    length_reward(20, budget=1024)    -> 1.0   clip(0.005 * (1024 - 20) + 0.5, 0, 1)

The released reward adds three text heuristics in [0, 1] that the paper does not describe:
self_critique_reward, image_revisit_reward, repetition_reward (docs/paper_notes.md §2).
train_grpo.py's --rewards NAME=WEIGHT picks the weighted sum (docs/paper_notes.md §8,
Deviation 8); RELEASED_WEIGHTS is the released one.
"""

import re

from nanorevisual.grader import extract_boxed, grade


def accuracy_reward(completion: str, gold: str) -> float:
    """1.0 if the last \\boxed{} answer grades equal to gold, else 0.0 (§2.1, rule-based)."""
    answer = extract_boxed(completion)
    return 1.0 if answer is not None and grade(answer, gold) else 0.0


def format_reward(completion: str) -> float:
    """1.0 for '<think>non-empty</think> ... \\boxed{non-empty}', else 0.0."""
    # reward-hacking guards: duplicated tags, empty thinking, empty or thought-only boxes
    text = completion.strip()
    if not text.startswith("<think>") or text.count("<think>") != 1 or text.count("</think>") != 1:
        return 0.0
    thought, _, answer = text[len("<think>"):].partition("</think>")
    return 1.0 if thought.strip() and extract_boxed(answer) else 0.0


def length_reward(num_tokens: int, budget: int, alpha: float = 0.005, delta: float = 0.5) -> float:
    """Efficient-length reward, in [0, 1]."""
    # ReVisual-R1 eq. 5-6: R_len = clip(α·(L_budget − L_y) + δ, 0, 1); the released
    # length_reward_l1_max, clipped in the other order: equal
    return min(1.0, max(0.0, alpha * (budget - num_tokens) + delta))


# -----------------------------------------------------------------------------
# The released heuristics (released: examples/reward_function/math.py). Every pattern is a regex,
# matched case-insensitively; the tables keep the released order, on which the float sums depend.

SENTENCE_END = r"(?<=[.!?])\s+"  # sentences split at the whitespace after . ! or ?

# released: self_critic_reward's keyword weights; a keyword is matched as \bKEYWORD\b
CRITIQUE_KEYWORDS = {
    # strong critique
    "mistake": 0.12, "error": 0.12, "incorrect": 0.12, "wrong": 0.10, "I was mistaken": 0.15,
    "That's not right": 0.15, "This contradicts": 0.15, "I need to reconsider": 0.15,
    "this doesn't make sense": 0.14, "I made an error": 0.15, "contradiction": 0.13,
    "flaw": 0.12, "invalid": 0.12,
    # reconsideration
    "let me recalculate": 0.10, "let's revise": 0.10, "let me reconsider": 0.10,
    "let's rethink": 0.10, "let me check again": 0.09, "double-check": 0.09, "verify": 0.08,
    "re-evaluate": 0.10, "reassess": 0.10, "revisit": 0.08, "let's try again": 0.09,
    # doubt
    "wait": 0.06, "hold on": 0.06, "I doubt": 0.07, "I question": 0.07, "however": 0.05,
    "but": 0.04, "although": 0.04, "on second thought": 0.08, "wait a second": 0.07,
    "is that right": 0.08, "did I miss something": 0.08,
    # mild reflection
    "perhaps": 0.03, "maybe": 0.03, "I think": 0.02, "I wonder": 0.04, "alternatively": 0.05,
    "on the other hand": 0.05, "I'm not sure": 0.05,
}

# released: reflection_starter_patterns, sentences that open a self-critique
CRITIQUE_STARTERS = (
    r"(?:That|This|It|The result) (?:is|seems|appears to be) "
    r"(?:incorrect|wrong|mistaken|an error|a mistake|flawed)",
    r"(?:I|We) (?:made|committed) (?:an error|a mistake|a miscalculation)",
    r"(?:I|We) (?:was|were) (?:wrong|mistaken|incorrect|in error)",
    r"(?:Wait|Hold on|Actually|However|But|Oh)(?:,)? (?:that|this|it) (?:doesn't|does not) "
    r"(?:seem|look|appear) (?:right|correct|accurate)",
    # released oddity: "(?:me|) " needs two spaces after "I should" / "I need to", which the
    # whitespace collapsing never leaves, so only "Let me ..." matches
    r"(?:Let|I should|I need to) (?:me|) "
    r"(?:reconsider|recalculate|rethink|revise|check|verify|double-check)",
    r"(?:Let's|Let us) (?:try again|recalculate|rethink|revise|check|verify|double-check)",
    r"(?:Wait|Hold on|Hmm|Actually|But|However)(?:,)? (?:I'm|I am|I) "
    r"(?:not sure|uncertain|confused|doubtful|unsure)",
    r"(?:Wait|Hold on|Hmm|Actually|But|However)(?:,)? (?:this|that|it) (?:might|may|could) "
    r"(?:be|not be) (?:right|correct|accurate)",
)

# released: progress_followup_patterns, sentences that then fix the mistake
CRITIQUE_FIXES = (
    r"(?:The|A) correct (?:answer|solution|approach|calculation|value|result) (?:is|should be)",
    r"(?:I|We) should (?:have|instead) (?:calculated|computed|determined|found|used)",
    r"(?:Actually|In fact|Instead|Rather|Correctly)(?:,)? (?:the|we|I) "
    r"(?:should|need to|must|have to)",
    r"(?:After|Upon) (?:reconsideration|recalculation|checking|verifying)(?:,)? (?:I|we) "
    r"(?:see|realize|find|determine)",
    r"(?:Now|So|Therefore|Thus)(?:,)? (?:the|a) (?:correct|accurate|proper|right) "
    r"(?:approach|calculation|solution|answer)",
    r"(?:The|A) (?:error|mistake|issue|problem|flaw) (?:was|is) (?:that|because|due to)",
    r"(?:I|We) (?:missed|overlooked|forgot|didn't consider|failed to account for)",
    r"(?:This|That) (?:leads to|gives|results in|produces) (?:a|the) "
    r"(?:correct|accurate|better|improved|proper)",
)

# released: image_revisit_reward's three tables; released oddities: no \b, so "attribute of the
# image" is a revisit ("but" .{1,30} "image"), and "the image shows" is a reference and a revisit
IMAGE_REFERENCES = (
    r"the image shows", r"according to the image", r"the image illustrates",
    r"the image depicts", r"in the image", r"from the image", r"the diagram", r"the figure",
    r"as shown", r"is displayed",
)
IMAGE_REVISITS = (
    r"looking (at|back at) the image again", r"upon (further|closer) inspection",
    r"revisiting the (image|figure|diagram)", r"taking another look",
    r"on second thought.{1,30}(image|figure|diagram)", r"wait.{1,30}(image|figure|diagram)",
    r"but.{1,30}(image|figure|diagram)", r"checking the (image|figure|diagram) again",
    r"let me look at the (image|figure|diagram) again", r"the (image|figure|diagram).{1,30}shows",
    r"no, the (image|figure|diagram)",
    r"if I look at the (image|figure|diagram) more carefully",
)
# released oddity: it also counts these over the whole text but never uses that count
REVISIT_INSIGHTS = (
    r"I (see|notice|realize|observe) that", r"actually", r"in fact",
    r"I was (wrong|mistaken|incorrect)", r"contrary to", r"unlike what I thought",
    r"(now|then) I (can|see|understand)", r"this (contradicts|confirms)",
    r"(now|then) it (is clear|becomes clear)", r"I missed that", r"I didn't notice",
    r"I overlooked",
)

# released: repetition_penalty_reward's circular_patterns (released oddity: \1 may be empty, so
# the first counts nearly every " But wait/actually/maybe/perhaps")
CIRCULAR = (
    r"(.*?)\s+But\s+(?:wait|actually|maybe|perhaps).*?\1",
    r"(.*?)\s+So\s+maybe\s+(?:.*?)\s+But\s+(?:wait|actually).*?\1",
    r"But the image (?:displays|illustrates|shows|depicts).*?"
    r"But the image (?:displays|illustrates|shows|depicts)",
    r"So maybe.*?So maybe", r"Wait, but.*?Wait, but", r"Wait, maybe.*?Wait, maybe",
)
# released: maybe_but_wait_count, "maybe X. But wait ... maybe X"
MAYBE_LOOP = r"maybe\s+(.*?)\.\s+But\s+(?:wait|actually).*?maybe\s+\1"


def _count(patterns, text: str) -> int:
    """Matches of all patterns in text, case-insensitive."""
    return sum(len(re.findall(p, text, re.IGNORECASE)) for p in patterns)


def _found(patterns, text: str) -> bool:
    """Whether any pattern occurs in text, case-insensitive."""
    return any(re.search(p, text, re.IGNORECASE) for p in patterns)


def self_critique_reward(text: str) -> float:
    """Keyword score + 0.25 per critique-then-fix pair + 0.1 late bonus, in [0, 1]."""
    if not text or len(text.strip()) < 10:  # released: under 10 characters scores 0
        return 0.0
    text = re.sub(r"\.{2,}", ".", re.sub(r"\s+", " ", text))  # one space, ellipses to one period
    sentences = re.split(SENTENCE_END + r"(?=[A-Z0-9])", text)  # a new sentence starts A-Z or 0-9
    keywords = [(rf"\b{k}\b", w) for k, w in CRITIQUE_KEYWORDS.items()]
    # a keyword found n >= 1 times adds w (1 + 0.5 (n - 1)); released oddity: IGNORECASE on the
    # lowercased text, redundant but harmless
    score, lower = 0.0, text.lower()
    for pattern, weight in keywords:
        n = _count([pattern], lower)
        if n:
            score += weight * (1 + 0.5 * (n - 1))
    # a starter sentence (>= 5 characters) with a fix in one of the next 3 sentences, at most 3
    # pairs (released oddity: a double break, both leaving the inner loop)
    pairs = sum(1 for i, sentence in enumerate(sentences)
                if len(sentence) >= 5 and _found(CRITIQUE_STARTERS, sentence)
                and any(_found(CRITIQUE_FIXES, later) for later in sentences[i + 1:i + 4]))
    score += 0.25 * min(pairs, 3)
    # late bonus: >= 4 sentences, more keywords in the second half than the first, each counted
    # once per sentence
    if len(sentences) >= 4:
        hits = [sum(1 for p, _ in keywords if _found([p], s.lower())) for s in sentences]
        half = len(sentences) // 2
        score += 0.1 if sum(hits[half:]) > sum(hits[:half]) else 0.0
    return min(1.0, max(0.0, score))


def image_revisit_reward(text: str) -> float:
    """0.2 per image reference (at most 0.4) + 0.3 if revisited + 0.3 if an insight follows."""
    sentences = re.split(SENTENCE_END, text)
    pairs = sum(1 for before, after in zip(sentences, sentences[1:])  # a revisit, then an insight
                if _found(IMAGE_REVISITS, before) and _found(REVISIT_INSIGHTS, after))
    references, revisits = _count(IMAGE_REFERENCES, text), _count(IMAGE_REVISITS, text)
    return min(min(0.2 * references, 0.4) + min(0.3 * revisits, 0.3) + min(0.3 * pairs, 0.3), 1.0)


def repetition_reward(text: str) -> float:
    """1 - penalties for repeated sentences, 5-word phrases and circular reasoning, at least 0."""
    # cost: the lazy patterns with back-references are quadratic in a line's length (about 10 s on
    # one 23k-character line), so compute_rewards runs the heuristics only when weighted
    sentences = re.split(SENTENCE_END, text)
    words = text.split()
    phrases = [" ".join(words[i:i + 5]) for i in range(len(words) - 4)]
    circular, loops = _count(CIRCULAR, text), _count([MAYBE_LOOP], text)
    penalty = (min(0.5, 0.1 * (len(sentences) - len(set(sentences))))  # 0.1 per repeated sentence
               + min(0.3, 0.05 * (len(phrases) - len(set(phrases))))  # 0.05 per repeated phrase
               + min(0.2, 0.1 * circular + 0.2 * loops))
    return max(0.0, 1.0 - penalty)


# -----------------------------------------------------------------------------
# The weighted total

HEURISTICS = {"self_critique": self_critique_reward, "image_revisit": image_revisit_reward,
              "repetition": repetition_reward}
COMPONENTS = ("accuracy", "format", "length", *HEURISTICS)
# released: overall = (1 - 4w) accuracy + w (self_critique + image_revisit + repetition
# [+ length when use_efficient]), w = format_weight = 0.05; format is logged, weight 0
RELEASED_WEIGHTS = {"accuracy": 0.8, "self_critique": 0.05, "image_revisit": 0.05,
                    "repetition": 0.05}


def compute_rewards(completions: list[str], golds: list[str], num_tokens: list[int], *,
                    weights: dict[str, float],
                    length_budget: int) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, scores per component: accuracy, format and length always,
    a heuristic only when weighted)."""
    unknown = [k for k in weights if k not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown reward component(s) {unknown}; expected {COMPONENTS}")
    if not len(completions) == len(golds) == len(num_tokens):
        raise ValueError(f"length mismatch: {len(completions)} completions, {len(golds)} golds, "
                         f"{len(num_tokens)} token counts")
    components = {
        "accuracy": [accuracy_reward(c, g) for c, g in zip(completions, golds)],
        "format": [format_reward(c) for c in completions],
        "length": [length_reward(n, length_budget) for n in num_tokens],
    }
    # released: every score reads the response with the spaces around < > / removed (for
    # Qwen2.5-VL-32B); here the heuristics do, accuracy and format read it as generated (grader.py
    # drops such spaces in a box; format_reward wants exact tags)
    # only the weighted heuristics: repetition_reward may take seconds on one long rollout
    weighted = [name for name in HEURISTICS if weights.get(name, 0)]
    tight = [re.sub(r"\s*([<>/])\s*", r"\1", c) for c in completions] if weighted else []
    for name in weighted:
        components[name] = [HEURISTICS[name](c) for c in tight]
    totals = [sum(w * components[k][i] for k, w in weights.items() if w)
              for i in range(len(completions))]
    return totals, components
