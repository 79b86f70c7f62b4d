"""
Tests for nanorevisual/grpo.py: group advantages, PAD selection and the policy loss, each against a slow,
independently written per-element Python reference (log-prob tests live in test_logprobs.py).
Hermetic and CPU-only; runs in a few seconds:

    python -m pytest -q tests/test_grpo.py
"""

import math
import statistics

import pytest
import torch

from nanorevisual.grpo import (LOG_RATIO_MAX, LOG_RATIO_MIN, PAD_PRESETS, entropy_coef,
                               group_advantages, loss_tokens, pad_select, pad_tau, policy_loss)

INF = float("inf")

# -----------------------------------------------------------------------------
# group_advantages


def reference_advantages(rewards, group_size, scale_by_std, eps=1e-6):
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        mean = sum(group) / len(group)
        std = statistics.stdev(group) if len(group) > 1 else 0.0
        for r in group:
            if all(x == group[0] for x in group):
                out.append(0.0)
            else:
                out.append((r - mean) / (std + eps) if scale_by_std else r - mean)
    return out


@pytest.mark.parametrize("group_size", [2, 3, 8])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_matches_loop(group_size, scale_by_std):
    g = torch.Generator().manual_seed(group_size)
    rewards = torch.rand(5 * group_size, generator=g, dtype=torch.float64)  # (N,)
    rewards[:group_size] = 0.7  # one tied group
    got = group_advantages(rewards, group_size, scale_by_std=scale_by_std)  # (N,)
    want = torch.tensor(reference_advantages(rewards.tolist(), group_size, scale_by_std), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.all(got[:group_size] == 0)


def test_group_advantages_tied_groups_are_exact_zeros():
    rewards = torch.tensor([0.1] * 8 + [1.0] * 8 + [0.0, 1.0] * 4)  # (24,) fp32
    adv = group_advantages(rewards, 8)  # (24,)
    assert torch.isfinite(adv).all()
    assert torch.all(adv[:16] == 0)
    assert adv[16:].abs().min() > 0.5
    single = group_advantages(torch.tensor([0.3, 1.0, -2.0]), 1)  # group_size 1: every group is tied
    assert torch.equal(single, torch.zeros(3))
    assert group_advantages(torch.tensor([1, 0, 1, 1]), 2).dtype == torch.float32  # int rewards upcast
    with pytest.raises(AssertionError, match="multiple of group_size"):
        group_advantages(torch.zeros(7), 2)


# -----------------------------------------------------------------------------
# policy_loss


def reference_policy_loss(logps, old_logps, advantages, mask, ref_logps, clip_low, clip_high, dual_clip, kl_coef,
                          entropy_coef, num_tokens):
    """Per-token loop with scalar torch ops (so autograd gives an independent gradient)."""
    total = torch.zeros((), dtype=logps.dtype)
    hits = {"low": 0, "high": 0, "dual": 0}
    B, T = logps.shape
    for b in range(B):
        A = advantages[b].item()
        for t in range(T):
            if not mask[b, t]:
                continue
            log_ratio = torch.clamp(logps[b, t] - old_logps[b, t], LOG_RATIO_MIN, LOG_RATIO_MAX)
            r = torch.exp(log_ratio)
            r_value = r.item()
            # PPO objective in its "min" form: min(r A, clip(r) A)
            if A >= 0:
                objective = A * (1 + clip_high) if r_value > 1 + clip_high else A * r
                hits["high"] += A > 0 and r_value > 1 + clip_high
            else:
                objective = A * (1 - clip_low) if r_value < 1 - clip_low else A * r
                hits["low"] += r_value < 1 - clip_low
            loss = -objective
            if A < 0 and float(torch.as_tensor(loss).detach()) > -A * dual_clip:
                loss = torch.tensor(-A * dual_clip, dtype=logps.dtype)
                hits["dual"] += 1
            d = ref_logps[b, t] - logps[b, t]
            k3 = torch.exp(d) - d - 1
            if k3.item() > 10.0:
                k3 = torch.tensor(10.0, dtype=logps.dtype)
            total = total + loss + kl_coef * k3 + entropy_coef * logps[b, t]
    return total / num_tokens, hits


def random_loss_inputs(B=4, T=12, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logps = -3 * torch.rand(B, T, generator=g, dtype=dtype)  # (B, T)
    old_logps = logps + (torch.rand(B, T, generator=g, dtype=dtype) * 3.0 - 1.5)  # (B, T) ratios in e^±1.5
    ref_logps = logps + torch.randn(B, T, generator=g, dtype=dtype)  # (B, T)
    advantages = torch.randn(B, generator=g, dtype=dtype)  # (B,)
    advantages[0], advantages[1] = 1.3, -0.8  # both signs for sure
    mask = torch.rand(B, T, generator=g) < 0.8  # (B, T)
    mask[:, 0] = True
    return logps, old_logps, ref_logps, advantages, mask


@pytest.mark.parametrize("seed", [0, 1])
def test_policy_loss_matches_loop(seed):
    logps, old_logps, ref_logps, advantages, mask = random_loss_inputs(seed=seed)
    kw = dict(clip_low=0.2, clip_high=0.25, dual_clip=3.0, kl_coef=0.05, entropy_coef=0.01)
    for num_tokens in (None, 100):
        x = logps.clone().requires_grad_()
        loss, stats = policy_loss(x, old_logps, advantages, mask, ref_logps=ref_logps, num_tokens=num_tokens, **kw)
        loss.backward()
        x_ref = logps.clone().requires_grad_()
        n = int(mask.sum()) if num_tokens is None else num_tokens
        want, hits = reference_policy_loss(x_ref, old_logps, advantages, mask, ref_logps, num_tokens=n, **kw)
        want.backward()
        torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
        assert hits["low"] > 0 and hits["high"] > 0 and hits["dual"] > 0, f"a branch was never hit: {hits}"
        tokens = int(mask.sum())
        assert stats["clip_frac_low"].item() == pytest.approx(hits["low"] / tokens)
        assert stats["clip_frac_high"].item() == pytest.approx(hits["high"] / tokens)
        assert stats["dual_clip_frac"].item() == pytest.approx(hits["dual"] / tokens)
        assert stats["entropy"].item() == pytest.approx(-logps[mask].mean().item())
        assert stats["tokens"].item() == tokens
        assert all(not v.requires_grad for v in stats.values())


def test_policy_loss_padding_columns_change_nothing():
    logps, old_logps, ref_logps, advantages, mask = random_loss_inputs(seed=2)
    kw = dict(ref_logps=ref_logps, kl_coef=0.1, entropy_coef=0.02)
    x = logps.clone().requires_grad_()
    loss, stats = policy_loss(x, old_logps, advantages, mask, **kw)
    loss.backward()

    garbage = torch.tensor([[INF, -INF, float("nan")]]).double().expand(4, 3)  # (B, 3)
    x_pad = torch.cat([logps, garbage], dim=1).requires_grad_()  # (B, T+3)
    old_pad = torch.cat([old_logps, garbage.flip(1)], dim=1)  # (B, T+3)
    kw["ref_logps"] = torch.cat([ref_logps, garbage], dim=1)  # (B, T+3)
    mask_pad = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)  # (B, T+3)
    loss_pad, stats_pad = policy_loss(x_pad, old_pad, advantages, mask_pad, **kw)
    loss_pad.backward()
    torch.testing.assert_close(loss_pad, loss, rtol=1e-14, atol=0)  # summation order may differ by an ulp
    assert torch.equal(x_pad.grad[:, :-3], x.grad)
    assert torch.equal(x_pad.grad[:, -3:], torch.zeros(4, 3, dtype=torch.float64))
    for key in stats:
        torch.testing.assert_close(stats_pad[key], stats[key], rtol=1e-14, atol=0, msg=key)


def test_k3_is_zero_when_logps_equal_ref():
    logps, old_logps, _, advantages, mask = random_loss_inputs(seed=3)
    loss_kl, stats = policy_loss(logps, old_logps, advantages, mask, ref_logps=logps.clone(), kl_coef=1.0)
    loss_plain, _ = policy_loss(logps, old_logps, advantages, mask)
    assert stats["kl"].item() == 0.0
    assert torch.equal(loss_kl, loss_plain)
    _, stats = policy_loss(logps, old_logps, advantages, mask, ref_logps=logps + 0.3, kl_coef=1.0)
    assert stats["kl"].item() > 0


def test_ratio_one_gives_reinforce_gradient():
    logps, _, _, advantages, mask = random_loss_inputs(seed=4)
    x = logps.clone().requires_grad_()
    num_tokens = 37
    loss, stats = policy_loss(x, x.detach(), advantages, mask, num_tokens=num_tokens)
    loss.backward()
    want = -advantages[:, None] * mask / num_tokens  # (B, T) REINFORCE: -A ∇logp / num_tokens
    torch.testing.assert_close(x.grad, want.double(), rtol=1e-12, atol=1e-15)
    assert stats["ratio_mean"].item() == 1.0 and stats["clip_frac_low"].item() == 0.0


def test_micro_batches_add_up_to_the_batch_loss():
    logps, old_logps, ref_logps, advantages, mask = random_loss_inputs(B=6, seed=5)
    kw = dict(ref_logps=None, kl_coef=0.0, entropy_coef=0.01)
    full, _ = policy_loss(logps, old_logps, advantages, mask, **kw)
    num_tokens = mask.sum()  # () global token count, computed before the micro-batch loop
    parts = [policy_loss(logps[s], old_logps[s], advantages[s], mask[s], num_tokens=num_tokens, **kw)[0]
             for s in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-12, atol=1e-14)


def test_microbatch_aggregation_matches_the_released_formula():
    # released dp_actor: per micro-batch (masked_mean(pg) + kl_coef masked_mean(k3) - ent_coef
    # masked_mean(-logp)) / gradient_accumulation, summed over the step's micro-batches
    logps, old_logps, ref_logps, advantages, mask = random_loss_inputs(B=6, seed=7)
    kw = dict(clip_low=0.2, clip_high=0.25, dual_clip=3.0, kl_coef=0.05, entropy_coef=0.01)
    parts = (slice(0, 2), slice(2, 3), slice(3, 6))  # uneven micro-batches: their weights differ
    ours, released = torch.zeros((), dtype=logps.dtype), torch.zeros((), dtype=logps.dtype)
    for s in parts:
        n = loss_tokens("microbatch", mask[s], step_tokens=0, n_micro=len(parts))
        ours = ours + policy_loss(logps[s], old_logps[s], advantages[s], mask[s],
                                  ref_logps=ref_logps[s], num_tokens=n, **kw)[0]
        tokens = int(mask[s].sum())
        pg, _ = reference_policy_loss(logps[s], old_logps[s], advantages[s], mask[s], ref_logps[s],
                                      0.2, 0.25, 3.0, 0.0, 0.0, tokens)
        d = (ref_logps[s] - logps[s])[mask[s]]
        kl = (torch.exp(d) - d - 1).clamp(max=10.0).mean()
        entropy = (-logps[s][mask[s]]).mean()
        released = released + (pg + 0.05 * kl - 0.01 * entropy) / len(parts)
    torch.testing.assert_close(ours, released, rtol=1e-12, atol=0)  # fp64: summation order only
    step = policy_loss(logps, old_logps, advantages, mask, ref_logps=ref_logps, **kw)[0]
    assert abs(float(step - ours)) > 1e-3  # the two aggregations weigh tokens differently


# -----------------------------------------------------------------------------
# PAD


def test_pad_select_thresholds_are_strict_and_counts():
    advantages = torch.tensor([0.03, -0.03, 0.5, -1.2, 0.97, -0.97, 0.02, 2.0, -0.6, 0.7])  # (10,) fp32
    effective = {2, 8, 9}  # 0.03 < |A| < 0.97: the values exactly at the thresholds are out
    g = torch.Generator().manual_seed(0)
    kw = dict(t_low=0.03, t_high=0.97, weighting="power", alpha=1.5, generator=g)
    with_repl = pad_select(advantages, ratio=1.5, replacement=True, **kw)
    assert with_repl.dtype == torch.long and with_repl.numel() == 15  # ceil(1.5 * 10)
    assert set(with_repl.tolist()) <= effective
    without = pad_select(advantages, ratio=0.5, replacement=False, **kw)
    assert without.numel() == 3 and set(without.tolist()) == effective  # min(ceil(5), |E| = 3), no duplicates
    assert pad_select(advantages, ratio=0.2, replacement=False, **kw).numel() == 2  # ceil(0.2 * 10)
    assert pad_select(advantages, ratio=0.25, replacement=True, **kw).numel() == 3  # ceil(2.5), not int(2.5)
    assert pad_select(torch.ones(10), ratio=0.3, replacement=True, t_low=0.0, t_high=INF,
                      weighting="uniform").numel() == 3  # 0.3 * 10 = 3.0000000000000004 must not round to 4
    for weighting in ("softmax", "power", "uniform", "all"):
        empty = pad_select(torch.full((8,), 0.01), t_low=0.03, t_high=INF, ratio=1.0, weighting=weighting,
                           replacement=True)
        assert empty.dtype == torch.long and empty.shape == (0,)
    # filter ablation: exactly E, in order
    assert pad_select(advantages, t_low=0.03, t_high=0.97, ratio=1.0, weighting="all").tolist() == [2, 8, 9]
    exact = torch.tensor([0.25, -0.25, 0.5, 0.75, -0.75], dtype=torch.float64)  # (5,) exactly representable
    assert pad_select(exact, t_low=0.25, t_high=0.75, ratio=1.0, weighting="all").tolist() == [2]


def test_pad_select_no_duplicates_and_determinism():
    advantages = torch.randn(64, generator=torch.Generator().manual_seed(1))  # (64,)
    kw = dict(t_low=0.1, t_high=INF, ratio=0.5, weighting="softmax", tau=0.5, replacement=False)
    a = pad_select(advantages, generator=torch.Generator().manual_seed(7), **kw)
    b = pad_select(advantages, generator=torch.Generator().manual_seed(7), **kw)
    c = pad_select(advantages, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.numel() == 32 and len(set(a.tolist())) == 32
    assert bool((advantages[a].abs() > 0.1).all())


def test_pad_select_rejects_bad_arguments():
    adv = torch.randn(8)
    with pytest.raises(ValueError):
        pad_select(adv, t_low=0.0, t_high=INF, ratio=1.0, weighting="softmaxx")
    with pytest.raises(ValueError):
        pad_select(adv, t_low=0.0, t_high=INF, ratio=0.0, weighting="power")
    with pytest.raises(ValueError):
        pad_select(adv, t_low=0.0, t_high=INF, ratio=1.0, weighting="softmax", tau=0.0)
    with pytest.raises(ValueError):
        pad_select(adv, t_low=1.0, t_high=0.5, ratio=1.0, weighting="power")


PAD_ADVANTAGES = [0.0, -0.05, 0.2, -0.5, 0.9, -1.3, 2.0, -2.5]  # 0.0 falls below t_low
PAD_TARGETS = {  # (weighting kwargs, unnormalised weight of |A|)
    "softmax_tau1": (dict(weighting="softmax", tau=1.0), lambda a: math.exp(a / 1.0)),
    "softmax_tau0.3": (dict(weighting="softmax", tau=0.3), lambda a: math.exp(a / 0.3)),
    "power_alpha1": (dict(weighting="power", alpha=1.0), lambda a: (a + 1e-8) ** 1.0),
    "power_alpha1.5": (dict(weighting="power", alpha=1.5), lambda a: (a + 1e-8) ** 1.5),
    "uniform": (dict(weighting="uniform"), lambda a: 1.0),
}
PAD_WRONG = {"softmax_tau1": "softmax_tau0.3", "softmax_tau0.3": "softmax_tau1", "power_alpha1": "power_alpha1.5",
             "power_alpha1.5": "uniform", "uniform": "power_alpha1"}


def target_probs(name):
    weight = PAD_TARGETS[name][1]
    w = [weight(abs(a)) if abs(a) > 0.03 else 0.0 for a in PAD_ADVANTAGES]
    return [x / sum(w) for x in w]


@pytest.mark.parametrize("name", list(PAD_TARGETS))
def test_pad_select_frequencies_match_target(name):
    draws = 200_000
    advantages = torch.tensor(PAD_ADVANTAGES)  # (8,)
    idx = pad_select(advantages, t_low=0.03, t_high=INF, ratio=draws / len(PAD_ADVANTAGES), replacement=True,
                     generator=torch.Generator().manual_seed(123), **PAD_TARGETS[name][0])
    assert idx.numel() == draws
    freq = (torch.bincount(idx, minlength=len(PAD_ADVANTAGES)).double() / draws).tolist()
    assert freq[0] == 0.0  # |A| = 0 is outside the effective set

    def max_z(probs):  # largest deviation in binomial standard errors of the TARGET distribution
        p_true = target_probs(name)
        return max(abs(f - p) / math.sqrt(max(q * (1 - q), 1e-12) / draws)
                   for f, p, q in zip(freq, probs, p_true))

    assert max_z(target_probs(name)) < 5.0
    assert max_z(target_probs(PAD_WRONG[name])) > 5.0  # the test has the power to tell the distributions apart


def test_pad_presets_and_tau():
    assert set(PAD_PRESETS) == {"none", "paper", "code", "filter", "random"}
    assert PAD_PRESETS["code"] == dict(weighting="power", alpha=1.5, t_low=0.03, t_high=0.97, ratio=1.5,
                                       replacement=True)
    assert PAD_PRESETS["paper"] == dict(weighting="softmax", tau=1.0, t_low=0.03, t_high=INF, ratio=0.5,
                                        replacement=False)
    assert PAD_PRESETS["filter"]["weighting"] == "all" and PAD_PRESETS["filter"]["t_low"] == 0.03
    assert PAD_PRESETS["random"]["weighting"] == "uniform" and PAD_PRESETS["random"]["ratio"] == 0.5
    advantages = torch.tensor([0.0, 0.01, 0.5, -0.99, 1.5, -3.0, 0.2, 0.0])  # (8,)
    g = torch.Generator().manual_seed(0)
    picks = {name: pad_select(advantages, generator=g, **preset) for name, preset in PAD_PRESETS.items()}
    assert picks["none"].tolist() == list(range(8))
    assert picks["filter"].tolist() == [2, 3, 4, 5, 6]
    assert picks["code"].numel() == 12 and set(picks["code"].tolist()) <= {2, 3, 6}
    assert picks["paper"].numel() == 4 and set(picks["paper"].tolist()) <= {2, 3, 4, 5, 6}
    assert picks["random"].numel() == 4 and len(set(picks["random"].tolist())) == 4
    assert pad_tau(0, 101, 1.0, 0.3) == 1.0
    assert pad_tau(50, 101, 1.0, 0.3) == pytest.approx(0.65)
    assert pad_tau(100, 101, 1.0, 0.3) == pytest.approx(0.3)
    assert pad_tau(500, 101) == pytest.approx(0.3)


def test_entropy_coef_matches_the_released_schedule_loop():
    coef, warmup, decay, floor = 0.02, 3, 0.9, 0.012
    value, want = 0.0, []
    for update in range(10):  # the released trainer: 0 until the warm-up is over, then decay once per update
        if update > warmup:
            value = coef if update == warmup + 1 else max(floor, value * decay)
        want.append(value)
    got = [entropy_coef(u, coef, warmup, decay, floor) for u in range(10)]
    assert got == pytest.approx(want, rel=1e-12)  # the same products in another order: a few ulps
    assert got[:warmup + 1] == [0.0] * (warmup + 1) and got[warmup + 1] == coef and got[-1] == floor
    assert entropy_coef(50, 0.0, 0) == 0.0
