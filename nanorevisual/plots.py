"""Plots from any run's metrics.jsonl and rollout dumps (matplotlib, imported lazily: pip install matplotlib).

    python -m nanorevisual.plots runs/mrl --out runs/mrl/curves.png            # one run: four panels
    python -m nanorevisual.plots runs/pad/none runs/pad/paper --out cmp.png     # several runs: reward curves

`plot_run` draws reward, zero-advantage fraction, PAD selection and held-out accuracy over steps; `plot_variants`
draws one line per variant with the seed spread shaded; `plot_adv_hist` draws |advantage| before and after PAD
selection from one rollout dump (OUT_DIR/rollouts/step_XXXXXX.jsonl).
"""

import argparse
import json
import os


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def load_metrics(run_dir):
    """(training records, eval records) of OUT_DIR/metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
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
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
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
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
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
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
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
