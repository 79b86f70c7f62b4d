"""Paper Tables 3 and 4 in miniature: the PAD ablation, a one-knob PAD sweep, and the stage-order study, on CPU.

    python -m nanorevisual.pad_study                                   # 5 PAD variants x 3 seeds (paper Table 4)
    python -m nanorevisual.pad_study --sweep pad-t-low=0,0.03,0.3,0.6  # one PAD knob over a list of values
    python -m nanorevisual.pad_study --stage-order                     # CS->MRL->TRL vs CS->TRL->MRL vs CS->MRL

Every run is the real `train_grpo.py --stage mrl` from one shared cold-start checkpoint (`--init`, or a fresh
`train_sft.py` run in OUT_DIR/sft), with the same steps and seeds for every variant; `--jobs` runs go in parallel
with one thread each. OUT_DIR/report.md gets, per variant: held-out accuracy at the end (mean ± std over seeds of
the mean of the last two evals), the accuracy-reward curve, the zero-advantage fraction, the samples each update
trained on, and time per step; plus PNG plots (reward with the seed spread shaded, zero-advantage fraction,
|advantage| before and after PAD at one step).
"""

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from nanorevisual.common import run_script
from nanorevisual.plots import load_metrics, plot_adv_hist, plot_variants




def run_all(jobs, n_parallel):
    """jobs: [(script, args, log)]; runs them n_parallel at a time, raising the first failure."""
    with ThreadPoolExecutor(n_parallel) as pool:
        for future in [pool.submit(run_script, script, *args, "--resume", 1, log=log, threads=1)
                       for script, args, log in jobs]:  # --resume 1: an interrupted run starts over cleanly
            future.result()


def final_accuracy(run_dir, key):
    """Mean of the last two held-out evaluations of a run (one evaluation swings by ±0.1 on this toy)."""
    evals = [r[key] for r in load_metrics(run_dir)[1] if key in r]
    return statistics.mean(evals[-2:])


def summarize(run_dir, eval_key):
    train, _ = load_metrics(run_dir)
    return {"final_acc": final_accuracy(run_dir, eval_key),
            "train_acc": statistics.mean(r["reward/accuracy"] for r in train),
            "zero_adv": statistics.mean(r["grpo/zero_adv_frac"] for r in train),
            "trained_per_update": statistics.mean(r["pad/selected"] for r in train),
            "skipped_steps": sum(1 for r in train if r["train/updates"] == 0),
            "time_per_step": statistics.mean(r["time/step"] for r in train)}


def mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def variant_table(results, header):
    lines = [f"| {header} | held-out acc (end) | train acc reward | zero-adv fraction | trained / step | "
             "skipped steps | s / step |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, runs in results.items():
        acc, acc_sd = mean_std([r["final_acc"] for r in runs])
        cols = [f"{statistics.mean(r[k] for r in runs):.2f}" for k in ("train_acc", "zero_adv")]
        cols += [f"{statistics.mean(r['trained_per_update'] for r in runs):.0f}",
                 f"{statistics.mean(r['skipped_steps'] for r in runs):.1f}",
                 f"{statistics.mean(r['time_per_step'] for r in runs):.2f}"]
        lines.append(f"| {name} | {acc:.3f} ± {acc_sd:.3f} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description="PAD ablation / sweep / stage order on the toy tasks")
    parser.add_argument("--out-dir", default="runs/pad_study", help="where runs, report.md and plots go")
    parser.add_argument("--init", default=None, help="cold-start checkpoint (default: train one in OUT_DIR/sft)")
    parser.add_argument("--variants", nargs="+", default=["none", "paper", "code", "filter", "random"],
                        help="--pad presets to compare (paper Table 4)")
    parser.add_argument("--sweep", default=None, help="KNOB=V1,V2,...: sweep one train_grpo.py flag on --base")
    parser.add_argument("--base", default="paper", help="PAD preset the sweep starts from")
    parser.add_argument("--stage-order", action="store_true", help="run the stage-order study (paper Table 3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per variant")
    parser.add_argument("--steps", type=int, default=100, help="mrl steps per run (trl: --trl-steps)")
    parser.add_argument("--trl-steps", type=int, default=60, help="trl steps in the stage-order study")
    parser.add_argument("--eval-every", type=int, default=25, help="held-out eval interval")
    parser.add_argument("--hist-step", type=int, default=25, help="step whose rollout dump gives the |A| histogram")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--extra", default="", help="extra train_grpo.py flags for every run, space separated")
    args = parser.parse_args()

    out = args.out_dir
    os.makedirs(out, exist_ok=True)
    from nanorevisual.toy import ensure_toy_data
    toy = ensure_toy_data()
    mm_val, text_val = os.path.join(toy, "mm_val.jsonl"), os.path.join(toy, "text_val.jsonl")
    t0 = time.perf_counter()
    init = args.init
    if init is None:
        init = os.path.join(out, "sft", "final")
        if not os.path.exists(os.path.join(init, "config.json")):
            print("cold start: train_sft.py ->", init, flush=True)
            run_script("train_sft.py", "--out-dir", os.path.join(out, "sft"), "--overwrite", 1,
                       log=os.path.join(out, "sft.log"), threads=1)
    common = ["--eval-every", args.eval_every, "--log-every", 10, *args.extra.split()]

    if args.stage_order:
        return stage_order(args, out, init, common, mm_val, text_val, t0)

    # variants: the --pad presets, or one knob of the base preset swept over values
    if args.sweep:
        knob, values = args.sweep.split("=")
        variants = {f"{knob}={v}": ["--pad", args.base, f"--{knob}", v] for v in values.split(",")}
    else:
        variants = {v: ["--pad", v] for v in args.variants}
    jobs, dirs = [], {}
    for name, flags in variants.items():
        for seed in args.seeds:
            run_dir = os.path.join(out, name.replace("=", "_"), f"seed{seed}")
            dirs.setdefault(name, []).append(run_dir)
            if not os.path.exists(os.path.join(run_dir, "final", "meta.json")):  # finished runs are kept
                jobs.append(("train_grpo.py", ["--stage", "mrl", "--model", init, "--out-dir", run_dir, "--seed", seed,
                                               "--max-steps", args.steps, "--val-data", mm_val, *flags, *common],
                             run_dir + ".log"))
    print(f"{len(jobs)} runs to do ({sum(len(d) for d in dirs.values())} in all), {args.jobs} at a time", flush=True)
    run_all(jobs, args.jobs)
    results = {name: [summarize(d, "eval/mm_val/accuracy") for d in ds] for name, ds in dirs.items()}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plots = [plot_variants(dirs, os.path.join(out, "reward.png"), "reward/accuracy", "train accuracy reward"),
             plot_variants(dirs, os.path.join(out, "zero_adv.png"), "grpo/zero_adv_frac", "zero-advantage fraction")]
    hist_variant = next((v for v in dirs if v != "none"), list(dirs)[0])  # a variant where PAD selects
    dump = os.path.join(dirs[hist_variant][0], "rollouts", f"step_{args.hist_step:06d}.jsonl")
    if os.path.exists(dump):
        plots.append(plot_adv_hist(dump, os.path.join(out, "adv_hist.png"),
                                   f"|A| at step {args.hist_step}, {hist_variant}, seed {args.seeds[0]}"))
    table = variant_table(results, "variant")
    elapsed = time.perf_counter() - t0
    report = [f"# PAD {'sweep of ' + args.sweep.split('=')[0] if args.sweep else 'ablation'} (paper Table 4 in "
              "miniature)", "",
              f"mrl stage from `{init}`, {args.steps} steps, seeds {args.seeds}, held-out set: 200 toy images "
              "(chance ≈ 0.17). Held-out acc = mean over seeds (± std) of the mean of each run's last two evals.", "",
              table, "", f"wall time: {elapsed / 60:.1f} min with {args.jobs} parallel runs", ""]
    report += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(report) + "\n")
    print("\n" + table + f"\n\nreport: {os.path.join(out, 'report.md')}")


def stage_order(args, out, init, common, mm_val, text_val, t0):
    """CS->MRL->TRL, CS->TRL->MRL and CS->MRL from one cold start (paper Table 3 in miniature)."""
    seed = args.seeds[0]
    val = ["--val-data", mm_val, text_val]
    mrl = ["--stage", "mrl", "--max-steps", args.steps, *val, *common, "--seed", seed]
    trl = ["--stage", "trl", "--max-steps", args.trl_steps, *val, *common, "--seed", seed]
    d = {k: os.path.join(out, k) for k in ("mrl", "trl", "mrl_trl", "trl_mrl")}
    first = [("train_grpo.py", ["--model", init, "--out-dir", d["mrl"], *mrl], d["mrl"] + ".log"),
             ("train_grpo.py", ["--model", init, "--out-dir", d["trl"], *trl], d["trl"] + ".log")]
    run_all([j for j in first if not os.path.exists(os.path.join(j[1][3], "final", "meta.json"))], args.jobs)
    second = [("train_grpo.py", ["--model", os.path.join(d["mrl"], "final"), "--out-dir", d["mrl_trl"], *trl],
               d["mrl_trl"] + ".log"),
              ("train_grpo.py", ["--model", os.path.join(d["trl"], "final"), "--out-dir", d["trl_mrl"], *mrl],
               d["trl_mrl"] + ".log")]
    run_all([j for j in second if not os.path.exists(os.path.join(j[1][3], "final", "meta.json"))], args.jobs)
    rows = {}
    for label, folder in (("CS only", None), ("CS + MRL", d["mrl"]), ("CS + TRL", d["trl"]),
                          ("CS + MRL + TRL", d["mrl_trl"]), ("CS + TRL + MRL", d["trl_mrl"])):
        if folder is None:  # the cold start = step 0 eval of the first stage
            evals = load_metrics(d["mrl"])[1][0]
        else:
            evals = load_metrics(folder)[1][-1]
        rows[label] = (evals["eval/mm_val/accuracy"], evals["eval/text_val/accuracy"])
    lines = ["| stages | mm_val (images) | text_val (arithmetic) | avg |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {a:.3f} | {b:.3f} | {(a + b) / 2:.3f} |" for k, (a, b) in rows.items()]
    table = "\n".join(lines)
    report = ["# Stage order (paper Table 3 in miniature)", "",
              f"From `{init}`, seed {seed}: MRL {args.steps} steps, TRL {args.trl_steps} steps; greedy accuracy at "
              "the end of each chain (200 held-out images; 20 held-out arithmetic pairs).", "", table, "",
              f"wall time: {(time.perf_counter() - t0) / 60:.1f} min"]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(report) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n" + table + f"\n\nreport: {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
    main()
