"""
Tests for nanorevisual/grader.py (the math answer checker, table-driven, and box extraction) and
nanorevisual/rewards.py (the accuracy, format and length rewards, the released heuristics, equal to
the released code's on ~30 texts, and their weighted combination). Pure Python, hermetic, about a
second:

    python -m pytest -q tests/test_rewards.py
"""

import re
import time

import pytest

import released_math_reward as released  # the released reward, verbatim: the parity reference
from nanorevisual.grader import extract_boxed, grade, normalize_answer
from nanorevisual.rewards import (RELEASED_WEIGHTS, accuracy_reward, compute_rewards,
                                  format_reward, image_revisit_reward, length_reward,
                                  repetition_reward, self_critique_reward)

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


# -----------------------------------------------------------------------------
# The released heuristics

@pytest.mark.parametrize("text,expected", [
    ("Wait, I made a mistake. The correct answer is 7.", 0.12 + 0.06 + 0.25),  # 2 keywords, a pair
    ("wait wait wait, is it 5?", 0.06 * (1 + 0.5 * 2)),  # diminishing returns
    ("The base is 6. The height is 4. Wait, it is 5. So the area is 15.", 0.06 + 0.1),  # late
    ("The base is 6 and the height is 4, so the area is 12.", 0.0),
    ("wait, no", 0.0),  # under 10 characters
    ("", 0.0),
    ("Wait, that is wrong. I made a mistake and an error. This is incorrect, invalid, a flaw. "
     "Let me reconsider and verify. The correct answer is 5.", 1.0),  # many keywords: capped
])
def test_self_critique_reward(text, expected):
    assert self_critique_reward(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("In the image, a triangle has base 6.", 0.2),  # one reference
    ("The image shows a triangle.", 0.2 + 0.3),  # a reference and (released oddity) a revisit
    ("The area is 12.", 0.0),
    ("", 0.0),
    ("The image shows a triangle. In the image the base is 6. Looking at the image again, "
     "the base is 8. I see that the area is 16.", 1.0),  # 0.4 (capped) + 0.3 + 0.3
])
def test_image_revisit_reward(text, expected):
    assert image_revisit_reward(text) == expected


REPEATED = "So maybe x is 5. But wait, maybe x is 5. " * 10


@pytest.mark.parametrize("text,expected", [
    ("The base is 6. The height is 4. So the area is 12.", 1.0),
    ("", 1.0),
    ("The base is 6. The base is 6.", 1.0 - 0.1),  # one repeated sentence
    ("x is 5 But wait x is 5", 1.0 - 0.1),  # one circular pattern
    (REPEATED, 0.0),  # every penalty at its cap: floored at 0
])
def test_repetition_reward(text, expected):
    assert repetition_reward(text) == expected


REASONING = (
    "<think>The image shows a right triangle with legs 6 and 8. By Pythagoras, c^2 = 36 + 64. "
    "Wait, that is wrong: I added 36 and 46. Let me recalculate. 36 + 64 = 100, so c = 10. "
    "Looking at the image again, the right angle is between the legs. I see that c = 10."
    "</think>\nThe hypotenuse is \\boxed{10}.")
PARITY_TEXTS = [
    "", " ", "\n\n", "short", "wait", "Wait, no.", "0123456789", "I made a mistake.",
    REASONING,
    REASONING.replace(" ", "  ").replace(".", "..."),  # doubled spaces and ellipses
    "< think >The figure shows 3 apples . < / think > \\boxed{ 3 / 4 }",  # spaced tags
    "<think></think>\\boxed{}",
    "Hmm... I'm not sure. Maybe it is 5? Perhaps 6. I think 5. I wonder. Alternatively, 7. "
    "On the other hand, 5. Is that right? Did I miss something? On second thought, wait a second.",
    "I was mistaken. That's not right. This contradicts the premise. I need to reconsider. "
    "This doesn't make sense. I made an error. A contradiction! A flaw. Invalid. Wrong.",
    "Let me reconsider. Let's revise it. Let's rethink. Let me check again. Double-check: ok. "
    "Re-evaluate, reassess, revisit. Let's try again. I should recalculate. I need to verify.",
    "This seems incorrect. We made a miscalculation. Actually, we should use 8. The error was "
    "that I added. We missed the sign. This leads to the correct result. Now, the correct answer.",
    "Hold on, this might be right. Upon reconsideration, I see the point. However, I am unsure. "
    "But it does not seem right. After checking, we find 4. Oh, it doesn't look accurate.",
    "1. First. 2. Second. 3. Third. 4. Wait, the fourth is wrong. 5. The correct value is 9.",
    "maybe x = 2. But wait, it could be 3. So maybe x = 2. But actually maybe x = 2.",
    "So maybe 4. So maybe 5. Wait, but why? Wait, but how? Wait, maybe 6. Wait, maybe 7.",
    "But the image shows a cat. But the image depicts a dog. But the image displays a bird.",
    "the answer is 5. the answer is 5. the answer is 5. the answer is 5. the answer is 5.",
    REPEATED,
    "Upon closer inspection, the diagram is a square. Actually, it is a rhombus. Taking another "
    "look, no, the figure is a kite. Contrary to my guess, now I see. This confirms it.",
    "Revisiting the figure, the angle is 30. In fact it is 45. Checking the diagram again: "
    "I overlooked the label. Let me look at the image again. I didn't notice the arc.",
    "If I look at the figure more carefully, the side is 4. Then it becomes clear. An attribute "
    "of the image is its color, as shown. The value is displayed. According to the image, 4.",
    "等一下，我算错了。Wait, that is wrong. Die Antwort ist falsch. ¿Es correcto? 答案是 5。",
    "ÉTAPE 1. İstanbul. Wait… the résumé is incorrect. Ω = 5. ∑ x = 10! Now, the right answer.",
    "The image shows the graph.\nThe image shows the graph.\nBut wait\nthe image\nshows it.",
    "Let me compute. " * 40 + "\\boxed{40}",
    "word " * 60,
    "A. B. C. D.",
    "From the image, the base is 6 and the height is 4.",
    "In the image and from the image and as shown, the angle is 30.",  # references capped at 0.4
]


@pytest.mark.parametrize("text", PARITY_TEXTS)
def test_heuristics_equal_the_released_code(text):
    assert self_critique_reward(text) == released.self_critic_reward(text)
    assert image_revisit_reward(text) == released.image_revisit_reward(text)
    assert repetition_reward(text) == released.repetition_penalty_reward(text)


def test_parity_texts_exercise_every_heuristic():
    """The parity texts reach both ends of each heuristic and values in between."""
    for ours in (self_critique_reward, image_revisit_reward, repetition_reward):
        scores = {ours(t) for t in PARITY_TEXTS}
        assert {0.0, 1.0} <= scores and len(scores) >= 6, (ours.__name__, scores)


@pytest.mark.parametrize("n", [0, 1, 99, 100, 101, 1000, 1099, 1100, 1101, 5000])
def test_length_reward_is_the_released_l1_max(n):
    assert length_reward(n, 1000) == released.length_reward_l1_max(n, 1000)


def test_released_weights_total(monkeypatch):
    """compute_rewards with RELEASED_WEIGHTS (+ length 0.05 when use_efficient) is the released
    compute_score's overall, MathRuler's grader swapped for ours."""
    monkeypatch.setattr(released, "accuracy_reward", accuracy_reward)
    texts = [REASONING, GOOD, PARITY_TEXTS[10], "<think>x</think> \\boxed{8}", PARITY_TEXTS[19]]
    golds, lengths = ["10", "7", "3/4", "7", "5"], [900, 20, 1000, 1100, 1050]
    for efficient in (False, True):
        weights = {**RELEASED_WEIGHTS, "length": 0.05} if efficient else RELEASED_WEIGHTS
        scores = released.compute_score(texts, golds, lengths, efficient, 1000)
        want = [score["overall"] for score in scores]
        totals, components = compute_rewards(texts, golds, lengths, weights=weights,
                                             length_budget=1000)
        # the released 1 - w - w - 2w is 0.7999999999999999 in floats, ours 0.8: last bits differ
        assert totals == pytest.approx(want, rel=0, abs=1e-15)
        as_released = {**weights, "accuracy": 1 - 0.05 - 0.05 - 0.05 * 2}
        assert compute_rewards(texts, golds, lengths, weights=as_released,
                               length_budget=1000)[0] == want
        assert components["accuracy"] == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_compute_rewards_heuristics_only_when_weighted():
    spaced = "Wait. x < y. x <y."  # the released normalisation makes the last two sentences equal
    _, components = compute_rewards([spaced], ["1"], [10], length_budget=100,
                                    weights={"accuracy": 1.0, "repetition": 0.0})
    assert set(components) == {"accuracy", "format", "length"}
    _, components = compute_rewards([spaced], ["1"], [10], weights={"repetition": 0.05},
                                    length_budget=100)
    assert repetition_reward(spaced) == 1.0
    assert components["repetition"] == [1.0 - 0.1]
    assert components["repetition"] == [released.repetition_penalty_reward("Wait. x<y. x<y.")]


# docs/paper_notes.md §2's worked example: a G = 8 group, every answer right
EXAMPLE_GROUP = [
    "<think>The image shows a right triangle with legs 6 and 8. By Pythagoras the hypotenuse is "
    "sqrt(36 + 64) = 10.</think> \\boxed{10}",
    "<think>Legs 6 and 8, so c = sqrt(36 + 64) = sqrt(100) = 10.</think> \\boxed{10}",
    "<think>The legs are 6 and 8. So c^2 = 36 + 64 = 100. Wait, let me double-check: "
    "36 + 64 = 100. So c = 10.</think> \\boxed{10}",
    "<think>In the image the legs are 6 and 8. Maybe the hypotenuse is 14? That is wrong, the "
    "sides do not add. The correct answer is sqrt(36 + 64) = 10.</think> \\boxed{10}",
    "<think>The legs are 6 and 8. The hypotenuse is 10. The legs are 6 and 8. The hypotenuse is "
    "10.</think> \\boxed{10}",
    "<think>The figure shows legs 6 and 8. Looking at the image again, the right angle is between "
    "them. I see that c = sqrt(6^2 + 8^2) = 10.</think> \\boxed{10}",
    "<think>6-8-10 is a Pythagorean triple, twice 3-4-5.</think> \\boxed{10}",
    "<think>c = sqrt(6^2 + 8^2). Hmm, I think that is 10. But maybe I should verify: "
    "36 + 64 = 100, and sqrt(100) = 10.</think> \\boxed{10}",
]


def test_paper_notes_worked_example():
    """The numbers docs/paper_notes.md §2 quotes (3 or 4 decimals, hence the rounding)."""
    import torch

    from nanorevisual.grpo import PAD_PRESETS, group_advantages, pad_distribution
    totals, parts = compute_rewards(EXAMPLE_GROUP, ["10"] * 8, [60] * 8, weights=RELEASED_WEIGHTS,
                                    length_budget=1024)
    assert parts["accuracy"] == [1.0] * 8
    assert [round(x, 2) for x in parts["self_critique"]] == [0, 0, 0.25, 0.38, 0, 0, 0, 0.17]
    assert [round(x, 1) for x in parts["image_revisit"]] == [0.5, 0, 0, 0.2, 0, 0.8, 0, 0]
    assert [round(x, 2) for x in parts["repetition"]] == [1, 1, 0.95, 1, 0.8, 1, 1, 0.9]
    assert [round(t, 4) for t in totals] == [0.875, 0.85, 0.86, 0.879, 0.84, 0.89, 0.85, 0.8535]
    advantages = group_advantages(torch.tensor(totals), 8)  # float32, as train_grpo.py
    assert [round(a, 3) for a in advantages.tolist()] == \
        [0.741, -0.705, -0.127, 0.973, -1.284, 1.61, -0.705, -0.503]
    code = PAD_PRESETS["code"]
    assert pad_distribution(advantages, **code)[0].tolist() == [0, 1, 2, 6, 7]  # 0.03 < |A| < 0.97
    accuracy_only = group_advantages(torch.tensor(parts["accuracy"]), 8)  # all 0: nothing passes
    assert pad_distribution(accuracy_only, **code)[0].tolist() == []
