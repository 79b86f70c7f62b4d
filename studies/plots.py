"""Plots from any run's metrics.jsonl and rollout dumps (matplotlib, imported lazily: pip install matplotlib).

    python -m studies.plots runs/mrl --out runs/mrl/curves.png            # one run: four panels
    python -m studies.plots runs/pad/none runs/pad/paper --out cmp.png     # several runs: reward curves

`plot_run` draws reward, zero-advantage fraction, PAD selection and held-out accuracy over steps; `plot_variants`
draws one line per variant with the seed spread shaded; `plot_adv_hist` draws |advantage| before and after PAD
selection from one rollout dump (OUT_DIR/rollouts/step_XXXXXX.jsonl). For studies/pad_study.py:
`plot_eval_curves` (held-out accuracy against step, training seconds and trained tokens, mean and 95% interval over
seeds), `plot_series` (a per-step metric, mean over seeds), `plot_heatmap` (a t_low x t_high map) and `plot_stage_order`
(accuracy per stage chain, one dot per seed).
"""

import argparse
import json
import math
import os

from nanorevisual.common import read_jsonl_records
from studies.runs import t_quantile


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(plt, fig, out_png, dpi=80):
    fig.tight_layout()
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)


def load_metrics(run_dir):
    """(training records, eval records) of OUT_DIR/metrics.jsonl."""
    records = read_jsonl_records(os.path.join(run_dir, "metrics.jsonl"))
    return [r for r in records if "reward/total" in r], [r for r in records if any(k.startswith("eval/") for k in r)]


def smooth(values, window):
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot_run(run_dir, out_png, title=None, window=10):
    plt = pyplot()
    train, evals = load_metrics(run_dir)
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    axes[0].plot(steps, smooth([r["reward/accuracy"] for r in train], window))
    axes[0].set_title(f"train accuracy reward ({window}-step mean)")
    axes[1].plot(steps, smooth([r["grpo/zero_adv_frac"] for r in train], window), color="tab:red")
    axes[1].set_title("zero-advantage fraction")
    axes[2].plot(steps, [r["pad/selected"] for r in train], label="selected by PAD")
    axes[2].plot(steps, [r["pad/effective"] for r in train], label="effective |E|")
    axes[2].legend(fontsize=7)
    axes[2].set_title("samples per step")
    for key in sorted({k for r in evals for k in r if k.startswith("eval/")}):
        pts = [(r["step"], r[key]) for r in evals if key in r]
        axes[3].plot(*zip(*pts), marker="o", label=key.split("/")[1])
    axes[3].legend(fontsize=7)
    axes[3].set_title("held-out accuracy")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    save(plt, fig, out_png)
    return out_png


def plot_variants(runs, out_png, key="reward/accuracy", title=None, window=10):
    """runs: {variant: [run_dir per seed]}. One line per variant (mean over seeds), min-max over seeds shaded."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, dirs in runs.items():
        curves = [smooth([r[key] for r in load_metrics(d)[0]], window) for d in dirs]
        n = min(len(c) for c in curves)
        curves = [c[:n] for c in curves]
        mean = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
        steps = list(range(1, n + 1))
        ax.plot(steps, mean, label=f"{variant} ({len(dirs)} seeds)")
        ax.fill_between(steps, [min(c[i] for c in curves) for i in range(n)],
                        [max(c[i] for c in curves) for i in range(n)], alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{key} ({window}-step mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or key)
    save(plt, fig, out_png)
    return out_png


def plot_adv_hist(dump_path, out_png, title=None):
    """|advantage| of every rollout of one step, and of what PAD selected (counting repeats)."""
    plt = pyplot()
    with open(dump_path) as f:
        rows = [json.loads(line) for line in f]
    everything = [abs(r["advantage"]) for r in rows]
    selected = [abs(r["advantage"]) for r in rows for _ in range(r.get("times_selected", int(r["selected"])))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = [i * 0.1 for i in range(27)]
    ax.hist(everything, bins=bins, alpha=0.5, label=f"all rollouts ({len(everything)})")
    ax.hist(selected, bins=bins, alpha=0.5, label=f"selected by PAD ({len(selected)})")
    ax.set_xlabel("|advantage|")
    ax.legend(fontsize=8)
    ax.set_title(title or os.path.basename(dump_path))
    save(plt, fig, out_png)
    return out_png


def plot_adv_values(dump_paths, out_png, binary_values, title):
    """|A| > 0 over many rollout dumps on fine bins, against the values a binary reward can give; returns the
    counts a reader needs: how much of |A| falls off those values, and how many accuracy-tied groups (all right
    or all wrong) carry any |A| at all, or hold G copies of one string."""
    plt = pyplot()
    values, stats = [], dict.fromkeys(["groups", "acc_tied", "acc_tied_nonzero", "acc_tied_one_text"], 0)
    for path in dump_paths:
        groups = {}
        for r in read_jsonl_records(path):
            groups.setdefault(r["prompt_id"], []).append(r)
        for rows in groups.values():
            values += [abs(r["advantage"]) for r in rows if r["advantage"] != 0]
            tied = len({r["reward_accuracy"] for r in rows}) == 1
            stats["groups"] += 1
            stats["acc_tied"] += tied
            stats["acc_tied_nonzero"] += tied and any(r["advantage"] != 0 for r in rows)
            stats["acc_tied_one_text"] += tied and len({r["completion"] for r in rows}) == 1
    stats.update(nonzero=len(values), distinct=len({round(v, 4) for v in values}),
                 off_binary=sum(min(abs(v - b) for b in binary_values) > 1e-3 for v in values))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(values, bins=500, log=True, label=f"|A| > 0 ({len(values)} rollouts)")
    for b in binary_values:
        ax.axvline(b, color="tab:orange", lw=0.6, ls="--")
    ax.plot([], [], color="tab:orange", ls="--", label="the values a binary reward can give")
    ax.set_xlabel("|advantage|")
    ax.set_ylabel("rollouts (log)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    save(plt, fig, out_png, dpi=100)
    return stats


def interp(xs, ys, x):
    """Piecewise-linear y(x) for a nondecreasing xs (the first point where xs is flat)."""
    for j in range(len(xs)):
        if xs[j] >= x:
            if j == 0 or xs[j] == xs[j - 1]:
                return ys[j]
            return ys[j - 1] + (x - xs[j - 1]) / (xs[j] - xs[j - 1]) * (ys[j] - ys[j - 1])
    return ys[-1]


def mean_band(columns):
    """Per grid point: (mean, low, high) of the 95% t-interval over seeds (low = high = mean for one seed)."""
    out = []
    for col in columns:
        n, mean = len(col), sum(col) / len(col)
        half = 0.0
        if n > 1:
            sd = math.sqrt(sum((v - mean) ** 2 for v in col) / (n - 1))
            half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
        out.append((mean, mean - half, mean + half))
    return out


def plot_eval_curves(variants, out_png, title, key="acc"):
    """variants: {name: [run summaries with "curve": [{"step", "train_s", "tokens", key}]]} -> three panels, the
    curve against step, training seconds and trained tokens: mean over seeds, 95% interval shaded. Seeds are read
    on a common grid up to the shortest seed of the variant (linear between evals)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    for ax, x_key, label in zip(axes, ("step", "train_s", "tokens"),
                                ("step", "training seconds (evals excluded)", "trained tokens")):
        for name, runs in variants.items():
            curves = [([p[x_key] for p in r["curve"]], [p[key] for p in r["curve"]]) for r in runs]
            end = min(xs[-1] for xs, _ in curves)
            grid = curves[0][0] if x_key == "step" else [end * i / 60 for i in range(61)]
            grid = [x for x in grid if x <= end]
            band = mean_band([[interp(xs, ys, x) for xs, ys in curves] for x in grid])
            line, = ax.plot(grid, [b[0] for b in band], label=f"{name} ({len(runs)} seeds)")
            ax.fill_between(grid, [b[1] for b in band], [b[2] for b in band], color=line.get_color(), alpha=0.12)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    save(plt, fig, out_png)
    return out_png


def plot_series(series, out_png, title, window=10, hline=None):
    """series: {name: [per-step values of each seed]} -> mean over seeds, `window`-step running mean."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, per_seed in series.items():
        n = min(len(v) for v in per_seed)
        mean = [sum(v[i] for v in per_seed) / len(per_seed) for i in range(n)]
        ax.plot(range(1, n + 1), smooth(mean, window), label=f"{name} ({len(per_seed)} seeds)")
    if hline is not None:
        ax.axhline(hline, color="k", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    save(plt, fig, out_png)
    return out_png


def plot_heatmap(cells, rows, cols, out_png, title):
    """cells: [{"t_low", "t_high", "summary": {"final_acc": {"mean", "ci95"}, "seconds_per_step": {"mean"}}}] ->
    a rows (t_low) x cols (t_high) map coloured by mean accuracy (0..1), numbers in every cell."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(cols) + 2), 1.3 * len(rows) + 1.5))
    acc = [[None] * len(cols) for _ in rows]
    for c in cells:
        acc[rows.index(c["t_low"])][cols.index(c["t_high"])] = c
    image = ax.imshow([[c["summary"]["final_acc"]["mean"] for c in r] for r in acc], cmap="viridis", vmin=0, vmax=1)
    for i, r in enumerate(acc):
        for j, c in enumerate(r):
            s = c["summary"]
            ci = s["final_acc"]["ci95"]
            text = f"{s['final_acc']['mean']:.3f}\n" + (f"[{ci[0]:.2f}, {ci[1]:.2f}]\n" if ci else "")
            text += f"{s['seconds_per_step']['mean']:.2f} s/step"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if s["final_acc"]["mean"] > 0.6 else "white")
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols])
    ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
    ax.set_xlabel("t_high")
    ax.set_ylabel("t_low")
    fig.colorbar(image, ax=ax, label="held-out accuracy (mean over seeds)")
    ax.set_title(title, fontsize=9)
    save(plt, fig, out_png)
    return out_png


def plot_stage_order(chains, out_png, title):
    """chains: {label: {"runs": [{"seed", "mm_acc", "text_acc", "avg"}], "summary": {key: {"mean", "ci95"}}}} -> bars
    of the mean per chain for images, arithmetic and their average, the 95% interval as error bars, seeds as dots."""
    plt = pyplot()
    keys = (("mm_acc", "images"), ("text_acc", "arithmetic"), ("avg", "average"))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        xs = [i + (j - 1) * width for i in range(len(chains))]
        means = [c["summary"][key]["mean"] for c in chains.values()]
        intervals = [c["summary"][key]["ci95"] or (m, m) for m, c in zip(means, chains.values())]  # None: one seed
        errs = [[m - lo for m, (lo, _) in zip(means, intervals)], [hi - m for m, (_, hi) in zip(means, intervals)]]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=label, alpha=0.8)
        for x, c in zip(xs, chains.values()):
            ax.plot([x] * len(c["runs"]), [r[key] for r in c["runs"]], "k.", ms=4)
    ax.set_xticks(range(len(chains)), list(chains), fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    save(plt, fig, out_png)
    return out_png


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Plot training curves from metrics.jsonl")
    parser.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("--key", default="reward/accuracy", help="metric for multi-run plots")
    args = parser.parse_args()
    if len(args.runs) == 1:
        plot_run(args.runs[0], args.out)
    else:
        plot_variants({os.path.basename(os.path.normpath(r)): [r] for r in args.runs}, args.out, key=args.key)
    print(f"wrote {args.out}")
