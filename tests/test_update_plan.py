"""The update planner (plan.plan_update) and the loss normalisation it relies on.

    python -m pytest -q tests/test_update_plan.py

Checks: every PAD-selected occurrence is trained exactly once per epoch, on the rank that generated it, in the optimizer
step its position in the selection gives; every rank runs the same number of micro-batches; token budgets hold; and
two different groupings of the same sequences into micro-batches give the same gradient (the loss is a token sum over
the step's global token count).
"""

import random

import pytest
import torch

from parity import SUM_RTOL, rel_norm, within
from nanorevisual.grpo import policy_loss
from nanorevisual.plan import group_micro_batches, plan_token_counts, plan_update
from nanorevisual.processor import vision_token_ids
from nanorevisual.logprobs import collate_rollouts, completion_logps
from nanorevisual.rollout import generate_rollouts


def reference_steps(selected, optim_batch_seqs):
    """Slow reference: optimizer step s holds the selection's positions [s * size, (s + 1) * size)."""
    size = optim_batch_seqs or len(selected)
    steps = []
    for pos, idx in enumerate(selected):
        if pos % size == 0:
            steps.append([])
        steps[-1].append(idx)
    return steps


@pytest.mark.parametrize("world_size,optim_batch_seqs,micro,budget", [
    (1, 0, 4, 0), (2, 5, 3, 0), (3, 7, 0, 40), (2, 4, 2, 60), (4, 0, 3, 25)])
def test_plan_covers_the_selection_once(world_size, optim_batch_seqs, micro, budget):
    rng = random.Random(world_size * 100 + optim_batch_seqs)
    per_rank = 6
    n = per_rank * world_size
    lengths = [(rng.randint(3, 9), rng.randint(1, 12)) for _ in range(n)]
    selected = [rng.randrange(n) for _ in range(17)]  # with repeats, as PAD with replacement
    plan = plan_update(selected, lengths, world_size=world_size, seqs_per_rank=per_rank,
                       optim_batch_seqs=optim_batch_seqs, micro_batch_size=micro, micro_batch_tokens=budget)
    ref = reference_steps(selected, optim_batch_seqs)
    assert len(plan) == len(ref)
    for step_plan, ref_step in zip(plan, ref):
        assert len(step_plan) == world_size
        assert len({len(m) for m in step_plan}) == 1  # the same number of micro-batches on every rank
        got = sorted(r * per_rank + i for r, mbs in enumerate(step_plan) for mb in mbs for i in mb)
        assert got == sorted(ref_step)  # each occurrence once, on its owner rank (local index + rank offset)
        for r, mbs in enumerate(step_plan):
            for mb in mbs:
                assert all(0 <= i < per_rank for i in mb)
                if micro:
                    assert len(mb) <= micro
                if budget and len(mb) > 1:
                    sizes = [lengths[r * per_rank + i] for i in mb]
                    assert len(mb) * (max(p for p, _ in sizes) + max(c for _, c in sizes)) <= budget
    real, padded = plan_token_counts(plan, lengths, per_rank)
    assert real == sum(sum(lengths[i]) for i in selected) and padded >= real


def test_token_budget_sorts_by_length_and_bounds_padding():
    lengths = [(5, 1), (5, 30), (5, 2), (5, 29), (5, 3), (5, 31)]
    by_count = group_micro_batches(list(range(6)), lengths, max_seqs=2, max_tokens=0)
    by_tokens = group_micro_batches(list(range(6)), lengths, max_seqs=0, max_tokens=72)
    assert by_count == [[0, 1], [2, 3], [4, 5]]
    assert by_tokens == [[5, 1], [3, 4], [2, 0]]  # longest first; (5 + 31) * 2 = 72 fits, a third would not

    def padded(groups):
        return sum(len(g) * (5 + max(lengths[i][1] for i in g)) for g in groups)
    assert padded(by_tokens) < padded(by_count)
    with pytest.raises(ValueError):
        plan_update([0], [(1, 1)], world_size=1, seqs_per_rank=1, optim_batch_seqs=0, micro_batch_size=0)


def test_gradient_does_not_depend_on_the_grouping(tiny_stack):
    """Sum over micro-batches of token-sum / global token count == one token mean over the step, however grouped."""
    model, processor = tiny_stack
    from nanorevisual.prompts import build_messages
    suppress = vision_token_ids(processor)
    msgs = [build_messages("What is 3+4?", []), build_messages("What is 12+9? Think.", [])]
    model.eval()
    seqs = generate_rollouts(model, processor, msgs, group_size=4, max_new_tokens=10, temperature=1.0,
                             micro_batch_size=8, suppress_ids=suppress, seed=1)
    model.train()
    advantages = torch.linspace(-1.5, 1.5, len(seqs))  # (N,)
    lengths = [(s["prompt_ids"].numel(), s["num_tokens"]) for s in seqs]
    total_tokens = sum(s["num_tokens"] for s in seqs)

    def gradient(micro_batches):
        model.zero_grad(set_to_none=True)
        for mb in micro_batches:
            batch = collate_rollouts([seqs[i] for i in mb], processor.tokenizer.pad_token_id)
            logps = completion_logps(model, batch, temperature=1.0, suppress_ids=suppress)  # (B, T)
            loss, _ = policy_loss(logps, logps.detach(), advantages[mb], batch["completion_mask"],
                                  num_tokens=total_tokens, entropy_coef=0.01)
            loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    one = plan_update(list(range(8)), lengths, world_size=1, seqs_per_rank=8, optim_batch_seqs=0,
                      micro_batch_size=1)[0][0]
    budget = plan_update(list(range(8)), lengths, world_size=1, seqs_per_rank=8, optim_batch_seqs=0,
                         micro_batch_size=0, micro_batch_tokens=3 * max(p + c for p, c in lengths))[0][0]
    assert len(one) == 8 and 1 < len(budget) < 8
    g1, g2 = gradient(one), gradient(budget)
    within("update plan/gradient, one vs token-budget grouping", rel_norm([g1], [g2]), SUM_RTOL)  # sum reordered
    model.zero_grad(set_to_none=True)
