"""PAD explorer: what a PAD setting does to one rollout batch, drawn as one PNG (matplotlib, imported lazily).

    python -m studies.pad_explorer --synthetic 16 8 0.17 --pad code --out pad_code.png
    python -m studies.pad_explorer --dump runs/mrl/rollouts/step_000025.jsonl --pad paper --pad-tau 0.65
    python -m studies.pad_explorer --synthetic 16 8 0.17 --pad code --pad-t-high inf   # any --pad-* override

The batch is a rollout dump of train_grpo.py (OUT_DIR/rollouts/step_XXXXXX.jsonl: its advantages, and correct =
reward_accuracy) or a synthetic one: P prompts x G samples, each correct with probability p (binary reward, seeded),
advantages from the project's `group_advantages`. The PAD setting is a preset of train_grpo.py with the same
--pad-* overrides; softmax weighting takes one τ (--pad-tau; train_grpo decays it 1.0 -> 0.3 over the run).

Four panels:
  1. the |A| histogram of the batch, the effective band t_low < |A| < t_high, and where the lone correct answer of
     a group (1 of G right) sits: |A| = 2.47 at G = 8, above the released t_high = 0.97;
  2. expected picks per sample as a function of |A|, for each weighting (softmax at τ, power at α, uniform, all)
     with this setting's thresholds, ratio and replacement; the chosen one is drawn bold;
  3. the expected picks of a group's correct and wrong samples, by the number of correct answers in the group;
  4. the advantage mass the update receives from such a group, Σ E[picks] · A over its correct (> 0) and wrong
     (< 0) samples: plain GRPO trains every sample once, so the two always cancel; PAD's choices tilt them.

Expected picks are computed exactly from `grpo.pad_distribution` (what `pad_select` draws from), not by sampling:
with replacement E[picks_i] = k w_i / Σw; without replacement (torch.multinomial draws one at a time, each time in
proportion to the remaining weights) the probability that i is among the k draws is the exponential-race integral
    P_i = ∫_0^∞ w_i e^{-w_i t} · P(fewer than k of the other samples have arrived by t) dt,
each sample arriving at an Exp(w_j) time; the count of arrivals is a sum of Bernoullis (an exact recursion) and the
integral is a trapezoid rule in log t (error below 1e-6; sum P_i = k is reported). Batches with more than 64
distinct weights, which a binary reward never gives, fall back to 4000 seeded pad_select draws, and the PNG says so.
"""

import argparse
import json
import math
import os

import numpy as np
import torch

from nanorevisual.common import UserError, one_line_errors
from nanorevisual.grpo import PAD_PRESETS, PAD_WEIGHTINGS, group_advantages, pad_distribution, pad_select

MAX_EXACT_CLASSES = 64
MONTE_CARLO_DRAWS = 4000

# -----------------------------------------------------------------------------
# The batch


def synthetic_batch(prompts, group_size, accuracy, seed=0):
    """(correct (N,) bool, advantages (N,) fp32): P x G independent samples, each right with probability p."""
    g = torch.Generator().manual_seed(seed)
    correct = torch.rand(prompts * group_size, generator=g) < accuracy  # (N,) bool
    return correct, group_advantages(correct.float(), group_size)  # (N,), (N,)


def read_dump(path, group_size=None):
    """(correct (N,) bool, advantages (N,) fp32, G) of a train_grpo.py rollout dump. Groups are contiguous rows with
    one prompt_id; G is the length of the first such run unless given."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such dump file")
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno}: not a JSON object") from None
            for field in ("prompt_id", "advantage", "reward_accuracy"):
                if field not in row:
                    raise UserError(f"{path}:{lineno}: field '{field}': missing (not a train_grpo.py rollout dump?)")
            if not isinstance(row["advantage"], (int, float)):
                raise UserError(f"{path}:{lineno}: field 'advantage': expected a number, got {row['advantage']!r}")
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: empty dump")
    if group_size is None:
        group_size = next((i for i, r in enumerate(rows) if r["prompt_id"] != rows[0]["prompt_id"]), len(rows))
    if len(rows) % group_size:
        raise UserError(f"{path}: {len(rows)} rows do not split into groups of {group_size} (pass --group-size)")
    for start in range(0, len(rows), group_size):
        if len({r["prompt_id"] for r in rows[start:start + group_size]}) != 1:
            raise UserError(f"{path}:{start + 1}: rows {start + 1}..{start + group_size} are not one prompt's group "
                            f"of {group_size} (pass --group-size)")
    correct = torch.tensor([float(r["reward_accuracy"]) > 0.5 for r in rows])  # (N,) bool
    advantages = torch.tensor([float(r["advantage"]) for r in rows], dtype=torch.float32)  # (N,)
    return correct, advantages, group_size


# -----------------------------------------------------------------------------
# Expected picks


def inclusion_probabilities(weights, k, grid=1500):
    """P(item i is among k successive draws without replacement, each in proportion to the remaining weights).
    weights (n,) >= 0 -> (n,) fp64, summing to min(k, #positive). Exact up to the quadrature (see file docstring)."""
    w = np.asarray(weights, dtype=np.float64)  # (n,)
    positive = w > 0
    if k <= 0:
        return np.zeros_like(w)
    if k >= positive.sum():
        return positive.astype(np.float64)
    w = w / w.max()
    values, inverse, counts = np.unique(w, return_inverse=True, return_counts=True)  # (C,), (n,), (C,)
    t = np.exp(np.linspace(math.log(1e-10), math.log(60.0 / values[values > 0].min()), grid))  # (U,) arrival times
    arrived = -np.expm1(-values[:, None] * t[None, :])  # (C, U) P(an item of class c has arrived by t)
    per_class = np.zeros(len(values))  # (C,)
    for c in range(len(values)):
        if values[c] == 0:
            continue
        # distribution of how many of the OTHER items have arrived by t, counts 0..k-1 (k or more: lost, not needed)
        dist = np.zeros((len(t), k))  # (U, k)
        dist[:, 0] = 1.0
        for d in range(len(values)):
            for _ in range(counts[d] - (d == c)):
                q = arrived[d][:, None]  # (U, 1)
                dist[:, 1:] = dist[:, 1:] * (1 - q) + dist[:, :-1] * q  # (U, k-1) one more Bernoulli
                dist[:, 0] *= 1 - q[:, 0]
        density = values[c] * np.exp(-values[c] * t)  # (U,) this item arrives at t
        per_class[c] = np.trapezoid(density * dist.sum(axis=1) * t, np.log(t))  # dt = t d(log t)
    return per_class[inverse]  # (n,)


def expected_picks(advantages, *, t_low, t_high, ratio, weighting, tau=1.0, alpha=1.0, replacement=False):
    """(N,) fp64 expected number of times PAD (`pad_select` with these arguments) picks each sample, and how it was
    computed ("exact", or "N seeded pad_select draws" beyond MAX_EXACT_CLASSES distinct weights)."""
    kw = dict(t_low=t_low, t_high=t_high, ratio=ratio, weighting=weighting, tau=tau, alpha=alpha,
              replacement=replacement)
    effective_idx, weights, k = pad_distribution(advantages, **kw)
    out = np.zeros(advantages.numel())  # (N,)
    if weights is None:  # "all": the effective set once each
        out[effective_idx.numpy()] = 1.0
        return out, "exact"
    if k == 0:
        return out, "exact"
    w = weights.numpy()  # (|E|,)
    if replacement:
        out[effective_idx.numpy()] = k * w / w.sum()  # k independent draws
        return out, "exact"
    if len(np.unique(w)) <= MAX_EXACT_CLASSES:
        out[effective_idx.numpy()] = inclusion_probabilities(w, k)
        return out, "exact"
    for draw in range(MONTE_CARLO_DRAWS):
        picks = pad_select(advantages, **kw, generator=torch.Generator().manual_seed(draw))  # (k,)
        np.add.at(out, picks.numpy(), 1.0)
    return out / MONTE_CARLO_DRAWS, f"{MONTE_CARLO_DRAWS} seeded pad_select draws"


def by_correct_count(correct, advantages, picks, group_size):
    """Per number of correct answers c in a group: {c: {groups, picks_correct, picks_wrong, mass_correct,
    mass_wrong}}, each a mean over the batch's groups with c correct (picks summed over the group's samples)."""
    grouped = {}
    for start in range(0, len(picks), group_size):
        sl = slice(start, start + group_size)
        ok, adv, p = correct[sl].numpy(), advantages[sl].double().numpy(), picks[sl]
        c = int(ok.sum())
        row = grouped.setdefault(c, {"groups": 0, "picks_correct": 0.0, "picks_wrong": 0.0, "mass_correct": 0.0,
                                     "mass_wrong": 0.0})
        row["groups"] += 1
        row["picks_correct"] += float(p[ok].sum())
        row["picks_wrong"] += float(p[~ok].sum())
        row["mass_correct"] += float((p * adv)[ok].sum())
        row["mass_wrong"] += float((p * adv)[~ok].sum())
    for row in grouped.values():
        for key in ("picks_correct", "picks_wrong", "mass_correct", "mass_wrong"):
            row[key] /= row["groups"]
    return dict(sorted(grouped.items()))


def describe(cfg, num_seqs):
    """One line for a PAD setting: weighting, band, ratio and k."""
    band = f"{cfg['t_low']:g} < |A| < {cfg['t_high']:g}"
    w = cfg["weighting"]
    if w == "all":
        return f"all of {band} (no sampling)"
    how = {"softmax": f"softmax(|A|/τ), τ={cfg.get('tau', 1.0):g}", "power": f"|A|^α, α={cfg.get('alpha', 1.0):g}",
           "uniform": "uniform"}[w]
    k = math.ceil(cfg["ratio"] * num_seqs - 1e-9)
    repl = "with" if cfg.get("replacement") else "without"
    return f"{how}, {band}, ρ={cfg['ratio']:g} (k={k}), {repl} replacement"


# -----------------------------------------------------------------------------
# The figure


def draw(correct, advantages, group_size, cfg, out_png, source):
    """The four-panel PNG (see the file docstring); returns the expected picks (N,) of the chosen setting."""
    from studies.plots import pyplot
    plt = pyplot()
    abs_adv = advantages.abs().double().numpy()  # (N,)
    picks, method = expected_picks(advantages, **cfg)
    G, n = group_size, advantages.numel()
    lone = float(group_advantages(torch.tensor([1.0] + [0.0] * (G - 1)), G)[0]) if G > 1 else 0.0
    lone_in = cfg["t_low"] < lone < cfg["t_high"]
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.6))

    ax = axes[0]  # 1. histogram + band
    top = max(float(abs_adv.max()), lone) + 0.2
    ax.hist(abs_adv, bins=np.arange(0, top + 0.05, 0.05), color="tab:gray")
    ax.axvspan(max(cfg["t_low"], 0.0), min(cfg["t_high"], top), color="tab:green", alpha=0.15,
               label=f"effective band {cfg['t_low']:g} < |A| < {cfg['t_high']:g}")
    ax.axvline(lone, color="tab:red", ls="--", label=f"lone correct answer (1 of {G}): |A|={lone:.2f}, "
               + ("inside" if lone_in else "OUTSIDE") + " the band")
    ax.set_title(f"|A| of the batch ({int((abs_adv == 0).sum())} of {n} exactly 0)")
    ax.set_xlabel("|advantage|")
    ax.set_ylabel("samples")
    ax.set_xlim(0, top)
    ax.legend(fontsize=7, loc="upper right")

    ax = axes[1]  # 2. expected picks per sample vs |A|, per weighting
    values = np.unique(abs_adv)  # (V,)
    first = {v: int(np.argmax(abs_adv == v)) for v in values}
    for weighting in PAD_WEIGHTINGS:
        other = dict(cfg, weighting=weighting)
        p, _ = expected_picks(advantages, **other) if weighting != cfg["weighting"] else (picks, method)
        bold = weighting == cfg["weighting"]
        label = {"softmax": f"softmax τ={cfg.get('tau', 1.0):g}", "power": f"power α={cfg.get('alpha', 1.0):g}",
                 "uniform": "uniform", "all": "all (filter)"}[weighting]
        ax.plot(values, [p[first[v]] for v in values], marker="o", lw=3 if bold else 1, ms=5 if bold else 3,
                label=label + (" (chosen)" if bold else ""), zorder=3 if bold else 2)
    ax.axvspan(max(cfg["t_low"], 0.0), min(cfg["t_high"], top), color="tab:green", alpha=0.1)
    ax.axvline(lone, color="tab:red", ls="--")
    ax.set_title("expected picks per sample, by |A|")
    ax.set_xlabel("|advantage|")
    ax.set_xlim(0, top)
    ax.legend(fontsize=7)

    rows = by_correct_count(correct, advantages, picks, G)
    cs = list(rows)
    ax = axes[2]  # 3. expected picks per group, by #correct
    ax.bar(cs, [rows[c]["picks_correct"] for c in cs], color="tab:green", label="correct samples")
    ax.bar(cs, [rows[c]["picks_wrong"] for c in cs], bottom=[rows[c]["picks_correct"] for c in cs],
           color="tab:red", alpha=0.7, label="wrong samples")
    ax.plot(cs, [G if 0 < c < G else 0 for c in cs], "k_", ms=14, mew=2, label="plain GRPO (non-zero A, once each)")
    for c in cs:
        ax.text(c, rows[c]["picks_correct"] + rows[c]["picks_wrong"], f"{rows[c]['groups']}g", ha="center",
                va="bottom", fontsize=7)
    if 1 in rows and G > 2:  # the case the released t_high = 0.97 gets wrong under a binary reward
        lone_picks = rows[1]["picks_correct"]
        ax.annotate(f"lone correct answer: E[picks] = {lone_picks:.2f}\n(each wrong one: "
                    f"{rows[1]['picks_wrong'] / (G - 1):.2f})", xy=(1, lone_picks), xytext=(0.45, 0.55),
                    textcoords="axes fraction", fontsize=8, bbox=dict(fc="white", ec="tab:red"),
                    arrowprops=dict(arrowstyle="->", color="tab:red"))
    ax.set_title("expected picks per group (Ng = groups in the batch)")
    ax.set_xlabel(f"correct answers in the group (of {G})")
    ax.set_xticks(range(G + 1))
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[3]  # 4. advantage mass per group
    ax.bar(cs, [rows[c]["mass_correct"] for c in cs], color="tab:green", label="Σ E[picks]·A, correct (pushed up)")
    ax.bar(cs, [rows[c]["mass_wrong"] for c in cs], color="tab:red", alpha=0.7,
           label="Σ E[picks]·A, wrong (pushed down)")
    ax.plot(cs, [rows[c]["mass_correct"] + rows[c]["mass_wrong"] for c in cs], "ko", label="net (plain GRPO: 0)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title("advantage mass the update gets, per group")
    ax.set_xlabel(f"correct answers in the group (of {G})")
    ax.set_xticks(range(G + 1))
    ax.legend(fontsize=7)

    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"PAD explorer | {source} | {describe(cfg, n)} | expected picks: {method}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return picks, method, rows


def main():
    parser = argparse.ArgumentParser(description="Draw what a PAD setting selects from one rollout batch")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dump", help="a train_grpo.py rollout dump, OUT_DIR/rollouts/step_XXXXXX.jsonl")
    source.add_argument("--synthetic", nargs=3, metavar=("P", "G", "p"),
                        help="P prompts x G samples, each correct with probability p (binary reward)")
    parser.add_argument("--group-size", type=int, default=None, help="G of a dump (default: its first group's size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic batch")
    parser.add_argument("--pad", choices=list(PAD_PRESETS), default="code", help="PAD preset of train_grpo.py")
    parser.add_argument("--pad-t-low", type=float, default=None, help="T_low: drop |A| <= this")
    parser.add_argument("--pad-t-high", type=float, default=None, help="T_high: drop |A| >= this (inf: no cut)")
    parser.add_argument("--pad-ratio", type=float, default=None, help="ρ: select ceil(ρ N) sequences")
    parser.add_argument("--pad-weighting", default=None, choices=list(PAD_WEIGHTINGS), help="priority")
    parser.add_argument("--pad-alpha", type=float, default=None, help="α of the power weighting")
    parser.add_argument("--pad-replacement", type=int, default=None, choices=[0, 1], help="1: sample with replacement")
    parser.add_argument("--pad-tau", type=float, default=1.0, help="τ of the softmax weighting (train_grpo decays "
                        "it 1.0 -> 0.3 over a run)")
    parser.add_argument("--out", default="pad_explorer.png", help="PNG path")
    one_line_errors(parser)
    args = parser.parse_args()

    cfg = dict(PAD_PRESETS[args.pad], tau=args.pad_tau)
    for flag, key in (("pad_t_low", "t_low"), ("pad_t_high", "t_high"), ("pad_ratio", "ratio"),
                      ("pad_weighting", "weighting"), ("pad_alpha", "alpha"), ("pad_replacement", "replacement")):
        if getattr(args, flag) is not None:
            cfg[key] = bool(getattr(args, flag)) if key == "replacement" else getattr(args, flag)
    cfg.setdefault("alpha", 1.0)
    cfg.setdefault("replacement", False)
    if not cfg["t_low"] < cfg["t_high"]:
        raise UserError(f"--pad-t-low {cfg['t_low']} must be below --pad-t-high {cfg['t_high']}")
    if not cfg["ratio"] > 0 or not cfg["tau"] > 0:
        raise UserError(f"--pad-ratio and --pad-tau must be > 0, got {cfg['ratio']} and {cfg['tau']}")
    if args.group_size is not None and args.group_size < 2:
        raise UserError(f"--group-size must be >= 2, got {args.group_size}")

    if args.synthetic:
        try:
            prompts, G, p = int(args.synthetic[0]), int(args.synthetic[1]), float(args.synthetic[2])
        except ValueError:
            raise UserError(f"--synthetic P G p: P and G integers, p a number; got {' '.join(args.synthetic)}") from None
        if prompts < 1 or G < 2 or not 0.0 <= p <= 1.0:
            raise UserError(f"--synthetic P G p: need P >= 1, G >= 2 and 0 <= p <= 1, got {prompts} {G} {p}")
        correct, advantages = synthetic_batch(prompts, G, p, args.seed)
        source = f"synthetic {prompts} prompts x G {G}, accuracy {p:g} (seed {args.seed})"
    else:
        correct, advantages, G = read_dump(args.dump, args.group_size)
        source = f"{args.dump} ({len(advantages) // G} prompts x G {G}, accuracy {float(correct.float().mean()):.2f})"

    picks, method, rows = draw(correct, advantages, G, cfg, args.out, source)
    print(f"{source}\nPAD {args.pad}: {describe(cfg, advantages.numel())}; expected picks: {method} "
          f"(total {picks.sum():.3f})")
    print("correct/G | groups | E[picks] correct | E[picks] wrong | Σ E[picks]·A correct | wrong")
    for c, r in rows.items():
        print(f"{c:>5}/{G:<3} | {r['groups']:>6} | {r['picks_correct']:>16.3f} | {r['picks_wrong']:>14.3f} | "
              f"{r['mass_correct']:>20.3f} | {r['mass_wrong']:.3f}")
    if G > 1:
        lone = float(group_advantages(torch.tensor([1.0] + [0.0] * (G - 1)), G)[0])
        inside = cfg["t_low"] < lone < cfg["t_high"]
        print(f"lone correct answer (1 of {G}): |A| = {lone:.2f}, {'inside' if inside else 'outside'} the band"
              + (f"; E[picks] in this batch {rows[1]['picks_correct']:.3f}" if 1 in rows else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
