"""GRPO math for ReVisual-R1: group advantages (eq. 3), PAD selection (§4.1.1, Algorithm 1), the update plan, and the
clipped policy loss with the released clip-higher, dual clip and k3 KL. Pure tensor functions; the training script
owns the model, the optimizer and the distributed plumbing. docs/paper_notes.md §3-§4 states every equation.

Shape legend (shared by every file of the package): P prompts, G group size, N = P*G sequences of a rollout batch,
B sequences in a micro-batch, T padded completion length, V vocabulary, H hidden size, k sequences PAD selects,
C rows in one chunk of the chunked LM head (logprobs.py).

PAD runs over the GLOBAL rollout batch, as the released code does: every rank gathers all (N,) advantages, seeds
its generator identically and computes the same selection, then trains on the selected sequences it generated.

Deviations (from the paper, the released code, or choices where neither says):
    1. Priority: the paper's softmax(|A|/τ) with τ 1.0 → 0.3 and the released power law (|A| + 1e-8)^α are both
       implemented (`weighting`); the `paper` and `code` presets pick one each.
    2. The `paper` preset's values (t_low 0.03, no upper cut, ρ 0.5 without replacement) are our reading: v1 gives
       no numbers (docs/paper_notes.md §4 says why these).
    3. Thresholds are strict, t_low < |A| < t_high, as released (the paper writes ≤). k = ceil(ρN) as in the paper
       (released: int(ρN); equal for ρ = 1.5 and even N).
    4. An empty effective set returns no indices (Algorithm 1); the script skips the update (--pad-empty skip) or
       trains on the whole batch, the released fallback (--pad-empty full).
    5. Loss: masked token SUM / the token count of the whole optimizer step over all micro-batches and ranks (a
       global token mean); released: a token mean per micro-batch divided by the accumulation count.
    6. As released: the log-ratio is clamped to [ln 1e-3, ln 1e3] and k3 to at most 10; the entropy bonus uses
       -log p of the sampled token; log-probs are of the temperature-scaled, suppress-masked distribution, not the
       top-p truncated one (as in verl and TRL).
"""

import math

import torch

# ReVisual-R1 code (core_algos.compute_policy_loss): ratio = exp(clamp(log_ratio, ln 1e-3, ln 1e3))
LOG_RATIO_MIN = math.log(1e-3)
LOG_RATIO_MAX = math.log(1e3)
KL_MAX = 10.0  # verl low_var_kl: clamp(k3, -10, 10)

# -----------------------------------------------------------------------------
# Group advantages


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """
    GRPO outcome advantages (DeepSeekMath §4.1.2): (r - group mean) / (group std + eps). rewards (N,) -> (N,).

    Groups are contiguous: rewards[g*G:(g+1)*G] are the G samples of prompt g. The std is unbiased (torch.std,
    as the released code). `scale_by_std=False` keeps only r - mean (Dr. GRPO, arXiv 2503.20783: dividing by
    the std up-weights near-tied groups, e.g. almost-all-correct prompts, and biases the update towards them).
    A group whose rewards are all equal gets exact zeros (not NaN, not eps-noise), also for group_size 1.
    """
    assert rewards.dim() == 1, f"rewards must be (N,), got {tuple(rewards.shape)}"
    assert group_size > 0 and rewards.numel() % group_size == 0, \
        f"N={rewards.numel()} rewards is not a multiple of group_size={group_size}"
    if not rewards.is_floating_point():
        rewards = rewards.float()  # (N,)
    grouped = rewards.view(-1, group_size)  # (P, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # (P, G)
    if scale_by_std and group_size > 1:
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)  # (P, G) unbiased std, as torch.std
    # the mean of equal floats can be off by an ulp; force exact zeros for tied groups
    tied = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (P, 1) bool
    return torch.where(tied, torch.zeros_like(centered), centered).view(-1)  # (N,)


# -----------------------------------------------------------------------------
# PAD: Prioritized Advantage Distillation (ReVisual-R1 §4.1.1, Appendix A.2 Algorithm 1)

PAD_WEIGHTINGS = ("softmax", "power", "uniform", "all")

# `--pad` presets = keyword arguments of `pad_select`; the last four reproduce the paper's Table 4 rows.
# For `paper`, tau=1.0 is the step-0 value: the script passes tau=pad_tau(step, total_steps) every step.
PAD_PRESETS: dict[str, dict] = {
    # GRPO baseline: no PAD, train on every rollout
    "none": dict(weighting="all", t_low=float("-inf"), t_high=float("inf"), ratio=1.0),
    # paper §4.1.1: softmax(|A|/τ), τ 1.0 → 0.3; thresholds and ρ are our reading (Deviations 2)
    "paper": dict(weighting="softmax", tau=1.0, t_low=0.03, t_high=float("inf"), ratio=0.5, replacement=False),
    # released code, examples/config.yaml: pad_alpha 1.5, thresholds 0.03 / 0.97, ratio 1.5, with replacement
    "code": dict(weighting="power", alpha=1.5, t_low=0.03, t_high=0.97, ratio=1.5, replacement=True),
    # Table 4 "GRPO-Filter": the effective-set filter only, no prioritized sampling
    "filter": dict(weighting="all", t_low=0.03, t_high=float("inf"), ratio=1.0),
    # Table 4 "Random-Sampling": no effective-set filter, uniform sampling at the paper preset's ρ
    "random": dict(weighting="uniform", t_low=float("-inf"), t_high=float("inf"), ratio=0.5, replacement=False),
}


# the keys --pad-set may override (train_grpo.py), with their kinds; tau_* and empty are the script's
PAD_KNOBS = {"t_low": float, "t_high": float, "ratio": float, "alpha": float, "replacement": bool,
             "weighting": PAD_WEIGHTINGS, "tau_start": float, "tau_end": float, "empty": ("skip", "full")}


def pad_tau(step: int, total_steps: int, tau_start: float = 1.0, tau_end: float = 0.3) -> float:
    """PAD softmax temperature, decayed linearly (ReVisual-R1 §4.1.1: "typically ... from 1.0 to 0.3").
    Steps count from 0: step 0 -> tau_start, step total_steps-1 (and later) -> tau_end."""
    progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    return tau_start + (tau_end - tau_start) * progress


def entropy_coef(updates: int, coef: float, warmup: int, decay: float = 0.985, minimum: float = 0.0) -> float:
    """The entropy-bonus coefficient of optimizer update `updates` (from 0), as the released
    `_anneal_entropy_coef`: 0 for updates 0..warmup, then coef, coef x decay, ..., floored at minimum."""
    if coef == 0 or updates <= warmup:
        return 0.0
    return max(minimum, coef * decay ** (updates - warmup - 1))


def pad_distribution(advantages: torch.Tensor, *, t_low: float, t_high: float, ratio: float, weighting: str,
                     tau: float = 1.0, alpha: float = 1.0,
                     replacement: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """
    What PAD samples from, before the draw: (effective indices (|E|,) long ascending, weights (|E|,) fp64 or None
    for "all", number of draws k). `pad_select` draws from it; studies/pad_explorer.py computes the expected
    picks of every sample from it. Arguments as `pad_select`; they are validated there.
    """
    # compare in the advantages' own dtype, as the released code does (a threshold is rounded to that dtype, so
    # an fp32 advantage that prints as the threshold is excluded); selection math on CPU, it is (N,)-sized
    abs_adv = advantages.detach().abs().cpu()  # (N,)
    effective = (abs_adv > t_low) & (abs_adv < t_high)  # (N,) bool; ReVisual-R1 §4.1.1: T_low < |A| < T_high
    effective_idx = effective.nonzero().squeeze(1)  # (|E|,) long, ascending
    if weighting == "all":
        return effective_idx, None, effective_idx.numel()

    num_select = math.ceil(ratio * advantages.numel() - 1e-9)  # ReVisual-R1 Alg. 1: k = ceil(ρ·N); guard 0.3*10
    if not replacement:
        num_select = min(num_select, effective_idx.numel())  # k' = min(k, |E|)
    scores = abs_adv[effective_idx].double()  # (|E|,) fp64: softmax weights underflow only below e^-745
    if scores.numel() == 0:
        return effective_idx, scores, 0
    if weighting == "softmax":
        # ReVisual-R1 §4.1.1: P(i) = exp(|A_i|/τ) / Σ_j∈E exp(|A_j|/τ); subtract the max for stability
        weights = torch.exp((scores - scores.max()) / tau)  # (|E|,) max entry is exactly 1
    elif weighting == "power":
        weights = (scores + 1e-8) ** alpha  # (|E|,) released code: p_i ∝ (|A_i| + 1e-8)^α
    else:
        weights = torch.ones_like(scores)  # (|E|,) uniform
    if not replacement:  # fp64 underflow (|A| spread > ~700 τ) would leave too few nonzero weights
        num_select = min(num_select, int((weights > 0).sum()))
    return effective_idx, weights, num_select


def pad_select(advantages: torch.Tensor, *, t_low: float, t_high: float, ratio: float, weighting: str,
               tau: float = 1.0, alpha: float = 1.0, replacement: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """
    PAD selection (ReVisual-R1 §4.1.1, Algorithm 1): advantages (N,) -> indices (k,) long into `advantages`.

    1. effective set E = { i : t_low < |A_i| < t_high } (strict, as the released code; t_high may be inf);
    2. weights over E: "softmax" exp(|A_i|/tau) (paper), "power" (|A_i| + 1e-8)^alpha (released code),
       "uniform", or "all" = return E itself, in order (the Table 4 filter ablation; ratio etc. ignored);
    3. k = ceil(ratio * N), and k = min(k, |E|) without replacement;
    4. k draws by torch.multinomial(weights, k, replacement, generator).
    E empty or k == 0 -> empty index tensor. `generator` is a CPU torch.Generator (selection runs on CPU; the
    indices are returned on `advantages.device`); seed it identically on every rank (see the file docstring).
    """
    if weighting not in PAD_WEIGHTINGS:
        raise ValueError(f"unknown PAD weighting {weighting!r}, expected one of {PAD_WEIGHTINGS}")
    if not ratio > 0:
        raise ValueError(f"PAD ratio must be > 0, got {ratio}")
    if not tau > 0:
        raise ValueError(f"PAD tau must be > 0, got {tau}")
    if not t_low < t_high:
        raise ValueError(f"PAD needs t_low < t_high, got {t_low} and {t_high}")
    if advantages.dim() != 1:
        raise ValueError(f"advantages must be (N,), got {tuple(advantages.shape)}")
    effective_idx, weights, num_select = pad_distribution(advantages, t_low=t_low, t_high=t_high, ratio=ratio,
                                                          weighting=weighting, tau=tau, alpha=alpha,
                                                          replacement=replacement)
    if weights is None:  # "all": the effective set itself
        return effective_idx.to(advantages.device)  # (|E|,)
    if num_select == 0:
        return torch.empty(0, dtype=torch.long, device=advantages.device)  # (0,)
    picks = torch.multinomial(weights, num_select, replacement=replacement, generator=generator)  # (k,) into E
    return effective_idx[picks].to(advantages.device)  # (k,) into the original advantages


# -----------------------------------------------------------------------------
# Policy loss


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                clip_low: float = 0.2, clip_high: float = 0.25, dual_clip: float | None = 3.0,
                ref_logps: torch.Tensor | None = None, kl_coef: float = 0.0, entropy_coef: float = 0.0,
                num_tokens=None) -> tuple[torch.Tensor, dict]:
    """
    Clipped GRPO surrogate + k3 KL - sampled-token entropy, summed over masked tokens / num_tokens.

    logps, old_logps, ref_logps, mask (B, T); advantages (B,) -> (loss scalar, stats dict).
    Per token, with r = exp(logp - old_logp):
        pg  = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))      PPO / DAPO clip-higher
        pg  = min(pg, -A dual_clip)                  if A < 0           dual clip (ReVisual-R1 code)
        tok = pg + kl_coef * k3(ref, logp) - entropy_coef * (-logp)
    loss = Σ_masked tok / num_tokens, num_tokens defaulting to mask.sum(). Positions with mask 0 contribute
    exactly nothing, to the loss and to the gradient, even if they hold inf/NaN.
    stats (detached, masked means over this micro-batch's tokens): clip_frac_low (A < 0 and r < 1 - clip_low),
    clip_frac_high (A > 0 and r > 1 + clip_high): the fractions of tokens where the clipped branch is active
    (zero gradient) on each side; dual_clip_frac (A < 0 and the dual clip active); ratio_mean; kl (k3 mean);
    entropy (mean -logp); tokens (this micro-batch's token count, for (sum, count) reductions across ranks).
    """
    assert logps.shape == old_logps.shape == mask.shape, "logps, old_logps and mask must all be (B, T)"
    assert advantages.shape == logps.shape[:1], f"advantages must be (B,), got {tuple(advantages.shape)}"
    mask = mask.bool()  # (B, T)
    zero = torch.zeros((), dtype=logps.dtype, device=logps.device)  # ()
    # torch.where, not multiplication: 0 * inf = NaN would leak from padding into the loss and the gradient
    logps = torch.where(mask, logps, zero)  # (B, T)
    old_logps = torch.where(mask, old_logps, zero)  # (B, T)
    adv = advantages.to(logps.dtype)[:, None]  # (B, 1)

    # ratio of the current to the sampling policy; with one update per rollout batch old_logps == logps.detach()
    # and r == 1 in value, but its gradient is still ∇logp (simple_GRPO's exp(logp - logp.detach()) identity)
    log_ratio = (logps - old_logps).clamp(LOG_RATIO_MIN, LOG_RATIO_MAX)  # (B, T) released-code clamp
    ratio = torch.exp(log_ratio)  # (B, T)
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # (B, T) DAPO clip-higher: ε_low < ε_high
    pg_loss = torch.maximum(-adv * ratio, -adv * clipped_ratio)  # (B, T) PPO Eq. (7), as a loss
    if dual_clip is not None:
        assert dual_clip > 1.0 + clip_high, "dual_clip must exceed 1 + clip_high (None disables it)"
        dual_cap = -adv * dual_clip  # (B, 1) positive where A < 0
        dual_active = (adv < 0) & (pg_loss > dual_cap)  # (B, T) Dual-clip PPO, arXiv 1912.09729 Eq. (4)
        pg_loss = torch.where(adv < 0, torch.minimum(pg_loss, dual_cap), pg_loss)  # (B, T)
    else:
        dual_active = torch.zeros_like(mask)  # (B, T)
    token_loss = pg_loss  # (B, T)

    kl = torch.zeros_like(logps)  # (B, T)
    if ref_logps is not None:
        assert ref_logps.shape == logps.shape, "ref_logps must be (B, T)"
        ref_logps = torch.where(mask, ref_logps, zero)  # (B, T)
        # k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, unbiased for KL(π || π_ref) under samples from π
        # (Schulman's k3; verl "low_var_kl"). The pre-clamp at ±20 only avoids exp overflow: k3 > KL_MAX there.
        log_ref_ratio = (ref_logps - logps).clamp(-20.0, 20.0)  # (B, T)
        kl = (torch.exp(log_ref_ratio) - log_ref_ratio - 1.0).clamp(max=KL_MAX)  # (B, T)
        token_loss = token_loss + kl_coef * kl  # (B, T)
    # released code's entropy bonus: entropy ≈ -logp of the sampled token; the loss subtracts coef * entropy
    token_loss = token_loss - entropy_coef * (-logps)  # (B, T)

    # NOTE: masked SUM / num_tokens, where num_tokens counts the tokens of the whole optimizer step (all
    # micro-batches, all ranks). Summing the micro-batch losses then gives one token mean over the step, however
    # the tokens are spread across micro-batches and ranks (DAPO token mean; Deviation 5).
    if num_tokens is None:
        num_tokens = mask.sum()  # ()
    if isinstance(num_tokens, torch.Tensor):
        num_tokens = num_tokens.clamp(min=1)  # () an all-padding batch gives 0, not NaN
    else:
        num_tokens = max(num_tokens, 1)
    loss = torch.where(mask, token_loss, zero).sum() / num_tokens  # ()

    with torch.no_grad():
        local_tokens = mask.sum()  # ()
        denom = local_tokens.clamp(min=1).to(logps.dtype)  # ()

        def masked_mean(x: torch.Tensor) -> torch.Tensor:  # (B, T) -> ()
            return torch.where(mask, x.to(logps.dtype), zero).sum() / denom

        stats = {
            "clip_frac_low": masked_mean((adv < 0) & (ratio < 1.0 - clip_low)),  # clipped branch active, A < 0
            "clip_frac_high": masked_mean((adv > 0) & (ratio > 1.0 + clip_high)),  # clipped branch active, A > 0
            "dual_clip_frac": masked_mean(dual_active),
            "ratio_mean": masked_mean(ratio),
            "kl": masked_mean(kl),
            "entropy": masked_mean(-logps),
            "tokens": local_tokens,
        }
    return loss, stats
