"""
Tests for nanorevisual/grader.py (the math answer checker, table-driven, and box extraction) and
nanorevisual/rewards.py (the format, length and accuracy rewards, and their weighted combination). Pure Python, hermetic, well under a second:

    python -m pytest -q tests/test_rewards.py
"""

import time

import pytest

from nanorevisual.grader import extract_boxed, grade, normalize_answer
from nanorevisual.rewards import accuracy_reward, compute_rewards, format_reward, length_reward

GOOD = "<think>3+4=7</think> \\boxed{7}"  # the module docstring's example completion

# (pred, gold, expected)
GRADE_CASES = [
    # integers and decimals
    ("7", "7", True),
    ("7", "8", False),
    ("-5", "5", False),
    ("- 5", "-5", True),
    ("+5", "5", True),
    ("5.0", "5", True),
    ("5.00", "5", True),
    (".5", "0.5", True),
    ("0.5", "0.51", False),
    ("0", "0.0", True),
    ("0", "0.001", False),
    ("1e-3", "0.001", True),
    ("1e5", "100000", True),
    ("1000000", "1000001", False),  # integers match exactly, no relative tolerance
    ("1000000", "1000000.0", True),
    # small values compare relatively: an absolute tolerance would make every tiny constant equal
    ("6.63\\times10^{-34}", "9.11\\times10^{-31}", False),
    ("10^{-9}", "0", False),
    ("6.63\\times10^{-34}", "6.630\\times 10^{-34}", True),
    ("1.6\\times10^{-19}", "1.60001\\times10^{-19}", True),
    ("0.0", "0", True),
    ("007", "7", True),
    ("7.", "7", True),
    ("0.1+0.2", "0.3", True),
    # fractions vs decimals
    ("\\frac{1}{2}", "0.5", True),
    ("\\frac{1}{2}", "1/2", True),
    ("0.5", "1/2", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("\\tfrac{3}{4}", "\\frac{3}{4}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("\\frac1{2}", "0.5", True),
    ("\\frac{1}2", "0.5", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),  # lenient: equal value (docs/paper_notes.md §2)
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{-1}{2}", "-\\frac{1}{2}", True),
    ("\\frac{1}{3}", "0.33333", True),
    ("\\frac{1}{3}", "0.33", False),
    ("12", "1/2", False),
    ("\\frac{1}{0}", "1", False),
    ("3\\frac{1}{2}", "3.5", True),  # mixed number
    ("\\frac{7}{2}", "3\\frac{1}{2}", True),
    # sqrt, pi, powers
    ("\\sqrt{2}", "\\sqrt2", True),
    ("\\sqrt{2}", "1.41421", True),
    ("\\sqrt{2}", "1.41", False),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\sqrt[3]{8}", "2", True),
    ("\\sqrt{-1}", "1", False),
    ("\\pi", "3.14159", True),
    ("3.14", "\\pi", False),
    ("2\\pi", "6.2832", True),
    ("\\frac{\\pi}{2}", "\\frac12\\pi", True),
    ("π", "\\pi", True),
    ("2^{10}", "1024", True),
    ("10^3", "1000", True),
    ("2 \\times 10^{3}", "2000", True),
    ("3 \\cdot 4", "12", True),
    # expressions in variables (compared at fixed points)
    ("2x+1", "1+2x", True),
    ("x^2-1", "(x-1)(x+1)", True),
    ("\\frac{x}{2}", "x/2", True),
    ("\\pi r^2", "r^2\\pi", True),
    ("2x", "2y", False),
    ("x^2", "2x", False),
    # LaTeX wrappers, spacing, assignments
    ("\\left( 1, 2 \\right)", "(1,2)", True),
    ("\\textbf{7}", "7", True),
    ("\\mathrm{7}", "7", True),
    ("$7$", "7", True),
    ("\\(7\\)", "7", True),
    ("7\\,", "7", True),
    ("{7}", "7", True),
    ("{{7}}", "7", True),
    ("\\displaystyle \\frac{1}{2}", "0.5", True),
    ("x = 7", "7", True),
    ("y=7", "7", True),
    ("f(x) = 3", "3", True),
    ("\\theta = 30^\\circ", "30", True),
    ("x+y=5", "5", False),
    ("x \\in [0, 1]", "[0,1]", True),
    ("x \\in [0, 1]", "[0,1)", False),
    ("y = 2x+1", "2x+1", True),
    # units, degrees, currency, percentages, thousands separators
    ("5 \\text{cm}", "5", True),
    ("5\\text{ cm}^2", "5", True),
    ("5 cm", "5", True),
    ("\\frac{1}{2} \\text{m}", "0.5", True),
    ("5 \\text{cm}", "6", False),
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30", True),
    ("30°", "30", True),
    ("\\$5", "5", True),
    ("$5.00", "5", True),
    ("5 dollars", "5", True),
    ("\\$1,000", "1000", True),
    ("50\\%", "50", True),
    ("50%", "50", True),
    ("50\\%", "0.5", False),  # percent sign dropped, not divided by 100 (docs/paper_notes.md §2)
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("1\\,000", "1000", True),
    ("1,000,000", "1000000", True),
    ("1,000", "100", False),
    # multiple choice (gold is a single capital letter)
    ("B", "B", True),
    ("(B)", "B", True),
    ("B.", "B", True),
    ("B)", "B", True),
    ("B: 12 apples", "B", True),
    ("(B) 12 apples", "B", True),
    ("\\text{B}", "B", True),
    ("\\textbf{(B)}", "B", True),
    ("Option B", "B", True),
    ("the answer is B", "B", True),  # the letter parser is shared with eval (grader.choice_letter)
    ("**(C)** because", "C", True),
    ("B and C", "B", False),
    ("b", "B", True),
    ("B", "(B)", True),
    ("A", "B", False),
    ("A or B", "B", False),
    ("AB", "B", False),
    ("Bob", "B", False),
    ("12", "B", False),
    # tuples, intervals, sets, lists
    ("(1, 2)", "(1,2)", True),
    ("(1,2)", "(2,1)", False),
    ("(1,2)", "[1,2]", False),
    ("1,2", "(1,2)", False),
    ("(1,2,3)", "(1,2)", False),
    ("(0.5, \\frac{1}{3})", "(\\frac{1}{2}, 0.33333)", True),
    ("((1,2),(3,4))", "((1, 2), (3, 4))", True),
    ("[0, 1)", "[0,1)", True),
    ("[0, 1)", "[0, 1]", False),
    ("\\left[0, 1\\right)", "[0,1)", True),
    ("(-\\infty, 3]", "(-∞, 3]", True),
    ("(-\\infty, 3]", "(-\\infty, 3)", False),
    ("[0,1)\\cup(2,3]", "[0, 1) \\cup (2, 3]", True),
    ("[0,1)\\cup(2,3]", "[0,1)\\cup(2,3)", False),
    ("\\{1, 2\\}", "\\{2, 1\\}", True),
    ("1, 2", "2, 1", True),
    ("x=1, x=2", "1, 2", True),
    ("1, 2", "1, 3", False),
    # text, infinity
    ("Red", "red", True),
    ("\\text{Red}", "red", True),
    ("red", "blue", False),
    ("red", "der", False),  # letters are not multiplied together
    ("\\text{yes}", "Yes", True),
    ("New York", "new york", True),
    ("\\infty", "∞", True),
    ("\\infty", "infinity", True),
    ("\\infty", "-\\infty", False),
    # empty
    ("", "5", False),
    ("5", "", False),
    ("", "", False),
    ("   ", "5", False),
    ("\\text{}", "5", False),
    # adversarial: must return quickly and never raise
    ("1" * 100_000, "1", False),
    ("1e999999", "1", False),
    ("1e999999", "1e999998", False),
    ("{" * 10_000, "1", False),
    ("{" * 150 + "1" + "}" * 150, "2", False),
    ("(" * 400 + "1" + ")" * 400, "1", False),
    ("-" * 151 + "1", "1", False),
    ("__import__('os')", "0", False),
    ("__import__('os').system('ls')", "1", False),
    ("9**9**9**9", "1", False),
    ("9^9^9^9", "1", False),
    ("2^{2^{2^{2^{2^{2}}}}}", "1", False),
    ("10^{1000000}", "1", False),
    ("\\frac{" * 60 + "1", "1", False),
    ("\\boxed{" * 100, "1", False),
    ("x" * 500, "x", False),
    (", " * 400, "1", False),
    ("1," * 400 + "1", "1," * 400 + "2", False),
]


@pytest.mark.parametrize("pred,gold,expected", GRADE_CASES)
def test_grade(pred, gold, expected):
    start = time.perf_counter()
    assert grade(pred, gold) is expected
    assert time.perf_counter() - start < 1.0, "grading must stay fast on any input"


def test_grade_cases_do_not_contradict_each_other():
    outcomes = {}
    for pred, gold, expected in GRADE_CASES:
        outcomes.setdefault((pred, gold), set()).add(expected)
    assert not [pair for pair, seen in outcomes.items() if len(seen) > 1]


@pytest.mark.parametrize("pred,gold", [("7", "7"), ("(1,2)", "(1, 2)"), ("\\frac{1}{2}", "0.5"), ("Red", "red")])
def test_grade_is_symmetric_for_non_choice_answers(pred, gold):
    assert grade(pred, gold) and grade(gold, pred)


def test_grade_non_string_is_false():
    assert grade(None, "5") is False
    assert grade("5", None) is False


@pytest.mark.parametrize("raw,expected", [
    ("x = \\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\text{Red}", "red"),
    ("\\$1,000", "1000"),
    ("50\\%", "50"),
    ("30^{\\circ}", "30"),
    ("5 \\text{cm}", "5"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("\\{1, 2\\}", "{1,2}"),
    ("(B)", "(b)"),
    ("7.", "7"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{5}.", "5"),
    ("\\boxed{1} then \\boxed{2}", "2"),  # last box wins
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces kept
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
    ("\\fbox{7}", "7"),
    ("\\boxed{a} and \\fbox{b}", "b"),
    ("$\\boxed 5$", "5"),
    ("\\boxed {6}", "6"),
    ("\\boxed{ 8 }", "8"),
    ("\\boxed{}", ""),
    ("\\boxed{\\text{(B)}}", "\\text{(B)}"),
    ("no box here", None),
    ("\\boxed{1", None),  # unbalanced
    ("\\boxed{2} and \\boxed{3", None),  # the last box is unbalanced
    ("\\boxed", None),
    ("\\boxedanswer{3}", None),
    ("", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("completion,expected", [
    (GOOD, 1.0),
    ("  <think>\nreasoning\n</think>\nThe answer is $\\boxed{7}$.\n", 1.0),
    ("<think>a \\boxed{6}</think> \\boxed{7}", 1.0),  # a box inside the thought is fine if one follows
    ("<think>a</think><think>b</think>\\boxed{7}", 0.0),  # duplicate <think>
    ("<think>a</think></think>\\boxed{7}", 0.0),  # duplicate </think>
    ("<think>a<think>b</think>\\boxed{7}", 0.0),
    ("<think>   </think>\\boxed{7}", 0.0),  # empty thought
    ("<think></think>\\boxed{7}", 0.0),
    ("<think>a</think> the answer is 7", 0.0),  # no box
    ("<think>so \\boxed{7}</think> done", 0.0),  # box only inside the thought
    ("<think>a</think>\\boxed{}", 0.0),  # empty box
    ("<think>a</think>\\boxed{ }", 0.0),
    ("<think>a</think>\\boxed{7", 0.0),  # unbalanced box
    ("\\boxed{7}", 0.0),  # no thought at all
    ("Sure! <think>a</think>\\boxed{7}", 0.0),  # must start with <think>
    ("<think>a\\boxed{7}", 0.0),  # unclosed thought
    ("", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


@pytest.mark.parametrize("num_tokens,budget,expected", [
    (1000, 1000, 0.5),  # at the budget: delta
    (950, 1000, 0.75),
    (1050, 1000, 0.25),
    (900, 1000, 1.0),  # clipped at 1 from here on
    (0, 1000, 1.0),
    (1100, 1000, 0.0),  # clipped at 0 from here on
    (5000, 1000, 0.0),
    (20, 1024, 1.0),
])
def test_length_reward(num_tokens, budget, expected):
    assert length_reward(num_tokens, budget) == pytest.approx(expected)


def test_length_reward_custom_alpha_delta():
    assert length_reward(10, 10, alpha=0.01, delta=0.2) == pytest.approx(0.2)
    assert length_reward(0, 10, alpha=0.01, delta=0.2) == pytest.approx(0.3)
    assert length_reward(100, 10, alpha=0.01, delta=0.2) == 0.0


@pytest.mark.parametrize("completion,gold,expected", [
    (GOOD, "7", 1.0),
    (GOOD, "8", 0.0),
    ("<think>x</think> \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("<think>x</think> \\boxed{(B)}", "B", 1.0),
    ("\\boxed{7} wait, no: \\boxed{8}", "7", 0.0),  # the last box counts
    ("\\boxed{8} wait, no: \\boxed{7}", "7", 1.0),
    ("<think>x</think> the answer is 7", "7", 0.0),  # unboxed answers get nothing
    ("<think>x</think> \\boxed{}", "7", 0.0),
    ("\\boxed{A, B, C, D}", "B", 0.0),  # listing every option does not pay
])
def test_accuracy_reward(completion, gold, expected):
    assert accuracy_reward(completion, gold) == expected


def test_docstring_example():
    assert accuracy_reward(GOOD, "7") == 1.0
    assert format_reward(GOOD) == 1.0
    assert length_reward(20, budget=1024) == 1.0
    totals, components = compute_rewards([GOOD], ["7"], [20], weights={"accuracy": 1.0, "format": 0.5},
                                         length_budget=1024)
    assert totals == [1.5]
    assert components == {"accuracy": [1.0], "format": [1.0], "length": [1.0]}


def test_compute_rewards_weighted_sum():
    completions = [GOOD, "7", "<think>a</think> \\boxed{8}"]
    totals, components = compute_rewards(completions, ["7", "7", "7"], [50, 200, 100],
                                         weights={"accuracy": 0.8, "format": 0.1, "length": 0.2}, length_budget=100)
    assert components["accuracy"] == [1.0, 0.0, 0.0]
    assert components["format"] == [1.0, 0.0, 1.0]
    assert components["length"] == pytest.approx([0.75, 0.0, 0.5])
    assert totals == pytest.approx([0.8 + 0.1 + 0.2 * 0.75, 0.0, 0.1 + 0.2 * 0.5])


def test_compute_rewards_zero_weight_still_reported():
    totals, components = compute_rewards([GOOD, "<think>a</think> \\boxed{8}"], ["7", "7"], [10, 90],
                                         weights={"accuracy": 1.0, "length": 0.0}, length_budget=100)
    assert totals == [1.0, 0.0]
    assert set(components) == {"accuracy", "format", "length"}
    assert components["length"] == pytest.approx([0.95, 0.55])  # computed for logging, not added to the total
    assert components["format"] == [1.0, 1.0]


def test_compute_rewards_empty_batch():
    totals, components = compute_rewards([], [], [], weights={"accuracy": 1.0}, length_budget=100)
    assert totals == [] and components == {"accuracy": [], "format": [], "length": []}


def test_compute_rewards_unknown_component():
    with pytest.raises(ValueError, match="self_critic"):
        compute_rewards([GOOD], ["7"], [10], weights={"accuracy": 1.0, "self_critic": 0.05}, length_budget=100)


def test_compute_rewards_length_mismatch():
    with pytest.raises(ValueError, match="mismatch"):
        compute_rewards([GOOD, GOOD], ["7"], [10, 10], weights={"accuracy": 1.0}, length_budget=100)
