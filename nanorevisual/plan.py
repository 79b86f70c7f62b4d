"""The update planner: which PAD-selected sequences go into which optimizer step, rank and
micro-batch. The plan is the same on every rank: FSDP runs collectives in every forward, so every
rank runs as many micro-batches as the busiest one, topped up with empty fillers.
"""


def plan_update(selected: list[int], lengths: list[tuple[int, int]], *, world_size: int,
                seqs_per_rank: int, optim_batch_seqs: int, micro_batch_size: int,
                micro_batch_tokens: int = 0) -> list[list[list[list[int]]]]:
    """plan[step][rank] = that rank's micro-batches of optimizer step `step`, lists of LOCAL indices
    ([] is a filler). selected: PAD's global indices in draw order, repeats allowed; rank r holds
    [r * seqs_per_rank, (r + 1) * seqs_per_rank). lengths[i] = (prompt, completion) tokens.
    Optimizer steps take `optim_batch_seqs` selected sequences in order (0: all), as released;
    micro-batches follow group_micro_batches; then every rank gets the same count."""
    if optim_batch_seqs < 0 or micro_batch_size < 0 or micro_batch_tokens < 0:
        raise ValueError("optim_batch_seqs, micro_batch_size and micro_batch_tokens must be >= 0")
    if micro_batch_tokens == 0 and micro_batch_size == 0:
        raise ValueError("give micro_batch_size or micro_batch_tokens")
    step_size = optim_batch_seqs or max(len(selected), 1)
    plan = []
    for start in range(0, len(selected), step_size):  # a global split: the same at any world size
        chunk = selected[start:start + step_size]
        per_rank = [[i - r * seqs_per_rank for i in chunk if i // seqs_per_rank == r]
                    for r in range(world_size)]
        micro = [group_micro_batches(own, [lengths[r * seqs_per_rank + i] for i in own],
                                     micro_batch_size, micro_batch_tokens)
                 for r, own in enumerate(per_rank)]
        n_micro = max(len(m) for m in micro)
        plan.append([m + [[] for _ in range(n_micro - len(m))] for m in micro])
    return plan


def plan_token_counts(plan, lengths: list[tuple[int, int]], seqs_per_rank: int) -> tuple[int, int]:
    """(real, padded) tokens of the plan's micro-batches, each collated to B x (longest prompt +
    longest completion) positions (logprobs.collate_rollouts)."""
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
    """`indices` in micro-batches: with max_tokens > 0 by a padded-token budget, longest first, so
    B x (longest prompt + longest completion) stays within it (a longer sequence goes alone);
    otherwise max_seqs at a time in order. At most max_seqs sequences either way (0: no cap)."""
    if max_tokens == 0:
        return [indices[i:i + max_seqs] for i in range(0, len(indices), max_seqs)]
    order = sorted(range(len(indices)), key=lambda j: -sum(lengths[j]))  # longest first, stable
    batches, current, longest_prompt, longest_completion = [], [], 0, 0
    for j in order:
        prompt, completion = lengths[j]
        grown = (len(current) + 1) * (max(longest_prompt, prompt)
                                      + max(longest_completion, completion))
        if current and (grown > max_tokens or len(current) == max_seqs > 0):
            batches.append(current)
            current, longest_prompt, longest_completion = [], 0, 0
        current.append(indices[j])
        longest_prompt = max(longest_prompt, prompt)
        longest_completion = max(longest_completion, completion)
    return batches + [current] if current else batches
