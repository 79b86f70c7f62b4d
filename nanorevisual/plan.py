"""The update planner: which PAD-selected sequences go into which optimizer step, rank and micro-batch.

The plan is the same on every rank (FSDP runs collectives in every forward, so every rank runs as many
micro-batches as the busiest one, padded with empty fillers). Shape legend: see nanorevisual/grpo.py.
"""


def plan_update(selected: list[int], lengths: list[tuple[int, int]], *, world_size: int, seqs_per_rank: int,
                optim_batch_seqs: int, micro_batch_size: int, micro_batch_tokens: int = 0) -> list[list[list[list[int]]]]:
    """
    The update schedule for one rollout step, identical on every rank: plan[step][rank] = that rank's micro-batches
    for optimizer step `step`, each a list of its LOCAL sequence indices; an empty micro-batch is a zero-weight filler.

    selected: PAD's global indices in sampled order (repeats allowed); rank r generated the global indices
    [r * seqs_per_rank, (r + 1) * seqs_per_rank) and trains on the selected ones among them.
    lengths[i] = (prompt tokens, completion tokens) of global sequence i.
    1. The selection splits, in order, into optimizer steps of `optim_batch_seqs` sequences (0: one step for all),
       the released code's fixed global batch: the number of optimizer steps follows how many sequences PAD chose.
       The split is global, so which sequences share an optimizer step does not depend on the world size.
    2. Each rank groups its sequences of a step into micro-batches: with `micro_batch_tokens` > 0 by a token
       budget, longest first, so that B x (longest prompt + longest completion) stays within the budget (a longer
       sequence gets a micro-batch of its own); otherwise `micro_batch_size` sequences at a time, in order. Either
       way at most `micro_batch_size` sequences (0: no cap with a token budget).
    3. Every rank gets the same number of micro-batches per step (FSDP runs collectives in every forward): ranks
       with fewer are topped up with empty fillers.
    """
    if optim_batch_seqs < 0 or micro_batch_size < 0 or micro_batch_tokens < 0:
        raise ValueError("optim_batch_seqs, micro_batch_size and micro_batch_tokens must be >= 0")
    if micro_batch_tokens == 0 and micro_batch_size == 0:
        raise ValueError("give micro_batch_size or micro_batch_tokens")
    step_size = optim_batch_seqs or max(len(selected), 1)
    plan = []
    for start in range(0, len(selected), step_size):
        chunk = selected[start:start + step_size]
        per_rank = [[i - r * seqs_per_rank for i in chunk if i // seqs_per_rank == r] for r in range(world_size)]
        micro = [group_micro_batches(own, [lengths[r * seqs_per_rank + i] for i in own], micro_batch_size,
                                     micro_batch_tokens) for r, own in enumerate(per_rank)]
        n_micro = max(len(m) for m in micro)
        plan.append([m + [[] for _ in range(n_micro - len(m))] for m in micro])
    return plan


def plan_token_counts(plan, lengths: list[tuple[int, int]], seqs_per_rank: int) -> tuple[int, int]:
    """(real tokens, padded tokens) over the plan's non-filler micro-batches: a micro-batch is collated to
    B x (longest prompt + longest completion) positions (logprobs.collate_rollouts)."""
    real = padded = 0
    for step_plan in plan:
        for rank, micro_batches in enumerate(step_plan):
            for mb in micro_batches:
                sizes = [lengths[rank * seqs_per_rank + i] for i in mb]
                if sizes:
                    real += sum(p + c for p, c in sizes)
                    padded += len(sizes) * (max(p for p, _ in sizes) + max(c for _, c in sizes))
    return real, padded


def group_micro_batches(indices: list[int], lengths: list[tuple[int, int]], max_seqs: int,
                        max_tokens: int) -> list[list[int]]:
    """Split `indices` (with their (prompt, completion) lengths) into micro-batches; see plan_update step 2."""
    if max_tokens == 0:
        return [indices[i:i + max_seqs] for i in range(0, len(indices), max_seqs)]
    order = sorted(range(len(indices)), key=lambda j: -sum(lengths[j]))  # longest first (stable for ties)
    batches, current, longest_prompt, longest_completion = [], [], 0, 0
    for j in order:
        prompt, completion = lengths[j]
        grown = (len(current) + 1) * (max(longest_prompt, prompt) + max(longest_completion, completion))
        if current and (grown > max_tokens or len(current) == max_seqs > 0):
            batches.append(current)
            current, longest_prompt, longest_completion = [], 0, 0
        current.append(indices[j])
        longest_prompt, longest_completion = max(longest_prompt, prompt), max(longest_completion, completion)
    return batches + [current] if current else batches
