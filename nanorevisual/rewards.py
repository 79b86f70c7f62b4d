"""The rewards of ReVisual-R1 GRPO (paper §2.1, §4.1.2): strings and token counts in, floats out.

    completion = "<think>3+4=7</think> \\boxed{7}"       # gold "7", 20 tokens, budget 1024
    accuracy_reward(completion, "7")  -> 1.0   the last \\boxed{} grades equal to "7" (grader.py)
    format_reward(completion)         -> 1.0   one non-empty think block, then a non-empty box
    length_reward(20, budget=1024)    -> 1.0   clip(0.005 * (1024 - 20) + 0.5, 0, 1)

train_grpo.py's --rewards NAME=WEIGHT picks the weighted sum (docs/paper_notes.md §8, Deviation 8).
"""

from nanorevisual.grader import extract_boxed, grade

COMPONENTS = ("accuracy", "format", "length")


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
    # ReVisual-R1 eq. 5-6: R_len = clip(α·(L_budget − L_y) + δ, 0, 1)
    return min(1.0, max(0.0, alpha * (budget - num_tokens) + delta))


def compute_rewards(completions: list[str], golds: list[str], num_tokens: list[int], *,
                    weights: dict[str, float],
                    length_budget: int) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, every component's scores, also those at weight 0)."""
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
    totals = [sum(w * components[k][i] for k, w in weights.items())
              for i in range(len(completions))]
    return totals, components
