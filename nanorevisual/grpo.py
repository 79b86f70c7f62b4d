"""The paper's math: group advantages (eq. 3), PAD (§4.1.1, Algorithm 1), the clipped policy loss
with the released clip-higher, dual clip and k3 KL, and the two schedules (PAD's τ, the entropy
coefficient). Pure tensor functions. docs/paper_notes.md: equations §3-§4, deviations §8.

Shapes, for the whole package: P prompts, G group size, N = P*G sequences, B sequences of a
micro-batch, T completion positions, V vocabulary, H hidden size, k sequences PAD selects.
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
    """(r - group mean) / (group std + eps), rewards (N,) -> (N,), groups contiguous (G at a time).
    Unbiased std, as released; scale_by_std=False keeps r - mean (Dr. GRPO). A tied group, and any
    group of 1, gets exact zeros."""
    assert rewards.dim() == 1, f"rewards must be (N,), got {tuple(rewards.shape)}"
    assert group_size > 0 and rewards.numel() % group_size == 0, \
        f"N={rewards.numel()} rewards is not a multiple of group_size={group_size}"
    if not rewards.is_floating_point():
        rewards = rewards.float()  # (N,)
    grouped = rewards.view(-1, group_size)  # (P, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # (P, G)
    if scale_by_std and group_size > 1:
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)  # (P, G) eq. 3
    # the mean of equal floats can be off by an ulp; force exact zeros for tied groups
    tied = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (P, 1) bool
    return torch.where(tied, torch.zeros_like(centered), centered).view(-1)  # (N,)


# -----------------------------------------------------------------------------
# PAD: Prioritized Advantage Distillation (ReVisual-R1 §4.1.1, Appendix A.2 Algorithm 1)

PAD_WEIGHTINGS = ("softmax", "power", "uniform", "all")

# `--pad` presets = keyword arguments of `pad_select` (the last four: Table 4 rows); `paper`'s tau
# is its step-0 value, train_grpo.py passes pad_tau(step, total_steps)
PAD_PRESETS: dict[str, dict] = {
    # GRPO baseline: no PAD, train on every rollout
    "none": dict(weighting="all", t_low=float("-inf"), t_high=float("inf"), ratio=1.0),
    # §4.1.1: softmax(|A|/τ), τ 1.0 → 0.3; thresholds and ρ are our reading (Deviation 1)
    "paper": dict(weighting="softmax", tau=1.0, t_low=0.03, t_high=float("inf"), ratio=0.5,
                  replacement=False),
    # the released examples/config.yaml: α 1.5, thresholds 0.03 / 0.97, ρ 1.5, with replacement
    "code": dict(weighting="power", alpha=1.5, t_low=0.03, t_high=0.97, ratio=1.5,
                 replacement=True),
    # Table 4 "GRPO-Filter": the effective-set filter only, no prioritized sampling
    "filter": dict(weighting="all", t_low=0.03, t_high=float("inf"), ratio=1.0),
    # Table 4 "Random-Sampling": no effective-set filter, uniform sampling at the paper preset's ρ
    "random": dict(weighting="uniform", t_low=float("-inf"), t_high=float("inf"), ratio=0.5,
                   replacement=False),
}


# what --pad-set may override (train_grpo.py), with kinds; tau_start/end and empty are the script's
PAD_KNOBS = {"t_low": float, "t_high": float, "ratio": float, "alpha": float, "replacement": bool,
             "weighting": PAD_WEIGHTINGS, "tau_start": float, "tau_end": float,
             "empty": ("skip", "full")}


def pad_tau(step: int, total_steps: int, tau_start: float = 1.0, tau_end: float = 0.3) -> float:
    """PAD's softmax τ at `step` (from 0), linear from tau_start to tau_end at the last step
    (§4.1.1: "typically decayed linearly from 1.0 to 0.3")."""
    progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    return tau_start + (tau_end - tau_start) * progress


def entropy_coef(updates: int, coef: float, warmup: int, decay: float = 0.985,
                 minimum: float = 0.0) -> float:
    """Entropy coefficient of update `updates` (from 0): 0 up to `warmup`, then coef, coef x decay,
    ..., at least `minimum` (the released `_anneal_entropy_coef`; Deviation 7)."""
    if coef == 0 or updates <= warmup:
        return 0.0
    return max(minimum, coef * decay ** (updates - warmup - 1))


def pad_distribution(advantages: torch.Tensor, *, t_low: float, t_high: float, ratio: float,
                     weighting: str, tau: float = 1.0, alpha: float = 1.0,
                     replacement: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """What PAD draws from: (effective indices (|E|,) ascending, weights (|E|,) fp64 or None for
    "all", number of draws k). Arguments as pad_select, which validates them."""
    # compared in the advantages' dtype, as released; selection math on CPU, it is (N,)-sized
    abs_adv = advantages.detach().abs().cpu()  # (N,)
    effective = (abs_adv > t_low) & (abs_adv < t_high)  # (N,) §4.1.1, strict (Deviation 2)
    effective_idx = effective.nonzero().squeeze(1)  # (|E|,) long, ascending
    if weighting == "all":
        return effective_idx, None, effective_idx.numel()

    num_select = math.ceil(ratio * advantages.numel() - 1e-9)  # Alg. 1: k = ceil(ρN) (Deviation 2)
    if not replacement:
        num_select = min(num_select, effective_idx.numel())  # k' = min(k, |E|)
    scores = abs_adv[effective_idx].double()  # (|E|,) fp64: exp underflows only below e^-745
    if scores.numel() == 0:
        return effective_idx, scores, 0
    if weighting == "softmax":
        weights = torch.exp((scores - scores.max()) / tau)  # (|E|,) eq. 4, max subtracted: max is 1
    elif weighting == "power":
        weights = (scores + 1e-8) ** alpha  # (|E|,) released code: p_i ∝ (|A_i| + 1e-8)^α
    else:
        weights = torch.ones_like(scores)  # (|E|,) uniform
    if not replacement:  # fp64 underflow (|A| spread > ~700 τ) leaves fewer nonzero weights
        num_select = min(num_select, int((weights > 0).sum()))
    return effective_idx, weights, num_select


def pad_select(advantages: torch.Tensor, *, t_low: float, t_high: float, ratio: float,
               weighting: str, tau: float = 1.0, alpha: float = 1.0, replacement: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """PAD (§4.1.1, Algorithm 1): advantages (N,) -> indices (k,) into them. E = {t_low < |A| <
    t_high}; weights over E: softmax exp(|A|/tau) (paper), power (|A| + 1e-8)^alpha (released),
    uniform, or "all" = E itself; k = ceil(ratio N), at most |E| without replacement; k draws of
    torch.multinomial with `generator` (CPU; seeded alike on every rank). E empty -> (0,)."""
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
    effective_idx, weights, num_select = pad_distribution(
        advantages, t_low=t_low, t_high=t_high, ratio=ratio, weighting=weighting, tau=tau,
        alpha=alpha, replacement=replacement)
    if weights is None:  # "all": the effective set itself
        return effective_idx.to(advantages.device)  # (|E|,)
    if num_select == 0:
        return torch.empty(0, dtype=torch.long, device=advantages.device)  # (0,)
    picks = torch.multinomial(weights, num_select, replacement, generator=generator)  # (k,) into E
    return effective_idx[picks].to(advantages.device)  # (k,) into the original advantages


# -----------------------------------------------------------------------------
# Policy loss


def loss_tokens(agg: str, mask: torch.Tensor, step_tokens: int, n_micro: int):
    """policy_loss's num_tokens. "step": the optimizer step's token count on all ranks, one token
    mean per step (Deviation 4); "microbatch": this micro-batch's tokens x the step's micro-batch
    count, the released token mean per micro-batch / the accumulation count."""
    return step_tokens if agg == "step" else mask.sum() * n_micro


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float = 0.25,
                dual_clip: float | None = 3.0, ref_logps: torch.Tensor | None = None,
                kl_coef: float = 0.0, entropy_coef: float = 0.0,
                num_tokens=None) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate + k3 KL - entropy over masked tokens / num_tokens (default: mask sum);
    (B, T) inputs, advantages (B,) -> (loss, stats: masked means, tokens). Padding gives nothing."""
    assert logps.shape == old_logps.shape == mask.shape, "logps, old_logps, mask must be (B, T)"
    assert advantages.shape == logps.shape[:1], f"advantages must be (B,): {advantages.shape}"
    mask, zero = mask.bool(), torch.zeros((), dtype=logps.dtype, device=logps.device)  # (B, T), ()
    # torch.where, not a product: 0 * inf = NaN would leak from padding into loss and gradient
    logps, old_logps = torch.where(mask, logps, zero), torch.where(mask, old_logps, zero)  # (B, T)
    adv = advantages.to(logps.dtype)[:, None]  # (B, 1)
    # one update per rollout batch: old_logps = logps.detach(), r == 1, its gradient ∇logp
    ratio = torch.exp((logps - old_logps).clamp(LOG_RATIO_MIN, LOG_RATIO_MAX))  # (B, T) Deviation 5
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # (B, T) DAPO clip-higher
    token_loss = torch.maximum(-adv * ratio, -adv * clipped_ratio)  # (B, T) PPO eq. 7, as a loss
    dual_active = torch.zeros_like(mask)  # (B, T)
    if dual_clip is not None:  # dual-clip PPO (1912.09729): at most -A c per token when A < 0
        assert dual_clip > 1.0 + clip_high, "dual_clip must exceed 1 + clip_high (None disables it)"
        dual_active = (adv < 0) & (token_loss > -adv * dual_clip)  # (B, T)
        token_loss = torch.where(adv < 0, torch.minimum(token_loss, -adv * dual_clip), token_loss)
    kl = torch.zeros_like(logps)  # (B, T)
    if ref_logps is not None:  # Schulman's k3 (verl low_var_kl); ±20 only avoids exp overflow
        assert ref_logps.shape == logps.shape, "ref_logps must be (B, T)"
        log_ref_ratio = (torch.where(mask, ref_logps, zero) - logps).clamp(-20.0, 20.0)  # (B, T)
        kl = (torch.exp(log_ref_ratio) - log_ref_ratio - 1.0).clamp(max=KL_MAX)  # (B, T)
        token_loss = token_loss + kl_coef * kl  # (B, T)
    token_loss = token_loss - entropy_coef * (-logps)  # (B, T) entropy ≈ -logp (Deviation 5)
    num_tokens = mask.sum() if num_tokens is None else num_tokens  # see loss_tokens
    num_tokens = num_tokens.clamp(min=1) if torch.is_tensor(num_tokens) else max(num_tokens, 1)
    loss = torch.where(mask, token_loss, zero).sum() / num_tokens  # ()
    with torch.no_grad():
        tokens = mask.sum()  # ()
        means = {"clip_frac_low": (adv < 0) & (ratio < 1.0 - clip_low),  # clipped branch, A < 0
                 "clip_frac_high": (adv > 0) & (ratio > 1.0 + clip_high),  # clipped branch, A > 0
                 "dual_clip_frac": dual_active, "ratio_mean": ratio, "kl": kl, "entropy": -logps}
        stats = {k: torch.where(mask, x.to(logps.dtype), zero).sum()
                 / tokens.clamp(min=1).to(logps.dtype) for k, x in means.items()}
    return loss, {**stats, "tokens": tokens}
