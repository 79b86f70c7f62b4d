"""Paper Tables 3 and 4 in miniature, on the toy: the PAD ablation, a threshold map, a one-knob sweep, the stage order.

    python -m studies.pad_study --mode ablation      # 6 PAD variants x 5 seeds, 500 held-out images (Table 4)
    python -m studies.pad_study --mode map           # t_low x t_high, power (released) and softmax (paper)
    python -m studies.pad_study --mode stage-order   # CS->MRL->TRL, CS->TRL->MRL, one stage; 3 seeds (Table 3)
    python -m studies.pad_study --mode sweep --sweep pad-t-low=0,0.03,0.3 --base paper
    python -m studies.pad_study --mode ablation --task colour-shape    # the harder image task (toy.py)
    python -m studies.pad_study --mode map --plan 1                    # list the runs and exit

Every run is the real `train_grpo.py` from one cold start per task (`--init`, default runs/cold_start_<task>/final,
trained once with train_sft.py and shared by every mode), with the same steps and seeds for every variant. The data
is the toy set with --heldout-size held-out images (data/toy_<task>_val<size>/; its first 200 are data/toy's) and
the 20 held-out arithmetic pairs. OUT_DIR gets results.json (the configuration and every per-seed number with its
seed), report.md and the PNG plots.

Definitions (results.json repeats them):
- accuracy at the end: the greedy held-out accuracy of the run's last eval (after the last step);
- training seconds / trained tokens: train_grpo.py's running sums at each eval, time/train_s_cum (the step times:
  rollouts, PAD, updates; evals, dumps, saves and start-up excluded, so eval cost, identical for every variant,
  does not blur the comparison; time/eval_s_cum has it) and train/tokens_cum (completion tokens through the
  policy-gradient update, repeats and PPO epochs counted);
- accuracy at equal time (tokens): every run's eval curve read at the budget B = the smallest final training
  seconds (tokens) over all runs of the study, by linear interpolation between the two evals around B (the first
  eval at or past B where the curve is flat), so no run is extrapolated;
- intervals: mean ± Student-t 95% interval over seeds, mean ± t(0.975, n-1) · sd / sqrt(n);
- stagnation onset: the first step from which the 10-step running mean of the zero-advantage fraction stays at or
  above 0.8 until the end (None: never).

Differences from the paper's Tables 3 and 4 (by design of a CPU toy): a ~1M-parameter model, a binary accuracy
reward (no heuristic terms, so whole groups tie and |A| takes only 2(G-1) values), one held-out toy task instead of
six benchmarks, and a few hundred steps of 16 prompts x 8. The presets' thresholds and ratios are grpo.PAD_PRESETS
(the paper gives none); the map keeps each preset's ratio and replacement and changes only t_low and t_high.

Runs go --jobs at a time with one thread each, the same for every variant (results.json records it); wall-clock
numbers are comparable only within one study. A study stopped midway resumes: runs whose final/meta.json exists are
kept, a half-finished run folder is deleted and run again.
"""

import argparse
import glob
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from nanorevisual.common import UserError, one_line_errors
from studies.runs import run_script, t_quantile
from studies.plots import (load_metrics, plot_adv_hist, plot_adv_values, plot_eval_curves, plot_heatmap, plot_series,
                                plot_stage_order)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATION = ["none", "paper", "code", "code:pad-t-high=inf", "filter", "random"]
STAGNANT = 0.8  # zero-advantage fraction that counts as stagnation
MODE_DEFAULTS = {  # steps (mrl), seeds
    "ablation": (300, [0, 1, 2, 3, 4]), "map": (200, [0, 1, 2]), "sweep": (200, [0, 1, 2]),
    "stage-order": (150, [0, 1, 2])}

# -----------------------------------------------------------------------------
# Statistics


def mean_ci(values, level=0.95):
    """{"mean", "std", "ci95": [low, high], "n"} over seeds; the interval is None for a single value."""
    n = len(values)
    mean = statistics.mean(values)
    if n < 2:
        return {"mean": mean, "std": 0.0, "ci95": None, "n": n}
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "std": sd, "ci95": [mean - half, mean + half], "n": n}


def value_at_budget(xs, ys, budget):
    """The curve (xs nondecreasing, ys) read at x = budget: linear between the two points around it; the first point
    at or past the budget where xs is flat there. Asserts the budget lies within the curve (no extrapolation)."""
    assert xs[0] <= budget <= xs[-1] + 1e-9, f"budget {budget} outside the curve [{xs[0]}, {xs[-1]}]"
    for j, x in enumerate(xs):
        if x >= budget:
            if j == 0 or x == budget or x == xs[j - 1]:
                return ys[j]
            frac = (budget - xs[j - 1]) / (x - xs[j - 1])
            return ys[j - 1] + frac * (ys[j] - ys[j - 1])
    return ys[-1]


def stagnation_onset(zero_adv, threshold=STAGNANT, window=10):
    """First step (1-based) from which the `window`-step running mean of the zero-advantage fraction stays at or
    above `threshold` to the end; None if the last running mean is below it."""
    running = [statistics.mean(zero_adv[max(0, i - window + 1):i + 1]) for i in range(len(zero_adv))]
    onset = None
    for i in range(len(running) - 1, -1, -1):
        if running[i] < threshold:
            break
        onset = i + 1
    return onset


def fmt_ci(stats, digits=3):
    if stats["ci95"] is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} [{stats['ci95'][0]:.{digits}f}, {stats['ci95'][1]:.{digits}f}]"


# -----------------------------------------------------------------------------
# Running the project's scripts


def finished(run_dir):
    return os.path.exists(os.path.join(run_dir, "final", "meta.json"))


def run_all(jobs, n_parallel):
    """jobs: [(run_dir, train_grpo.py args)]. Skips finished runs, deletes half-finished ones, runs the rest
    n_parallel at a time (one thread each) and raises the first failure after the others finished."""
    todo = [(d, a) for d, a in jobs if not finished(d)]
    for run_dir, _ in todo:
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)  # interrupted earlier: start it again
    print(f"{len(todo)} runs to do ({len(jobs) - len(todo)} of {len(jobs)} already finished), "
          f"{n_parallel} at a time", flush=True)
    with ThreadPoolExecutor(n_parallel) as pool:
        futures = [pool.submit(run_script, "train_grpo.py", "--out-dir", d, *a, log=d + ".log", threads=1)
                   for d, a in todo]
        errors = [f.exception() for f in futures]
    if any(errors):
        raise next(e for e in errors if e)


# -----------------------------------------------------------------------------
# Per-run numbers


def summarize_run(run_dir, seed, mm_key, text_key):
    """Every number one run contributes, from its metrics.jsonl (eval curve and per-step series included)."""
    train, evals = load_metrics(run_dir)
    curve = [{"step": r["step"], "train_s": r["time/train_s_cum"], "tokens": r["train/tokens_cum"],
              "acc": r[mm_key], "text_acc": r.get(text_key)} for r in evals if mm_key in r]
    zero = [r["grpo/zero_adv_frac"] for r in train]
    last_third = train[len(train) - max(1, len(train) // 3):]
    best = max(curve, key=lambda p: p["acc"])  # the first eval at the run's best accuracy
    return {"seed": seed, "run_dir": run_dir, "final_acc": curve[-1]["acc"], "final_text_acc": curve[-1]["text_acc"],
            "best_acc": best["acc"], "best_step": best["step"],
            "zero_adv": statistics.mean(zero),
            "zero_adv_last_third": statistics.mean(r["grpo/zero_adv_frac"] for r in last_third),
            "stagnation_onset": stagnation_onset(zero),
            "trained_per_step": statistics.mean(r["pad/selected"] for r in train),
            "unique_per_step": statistics.mean(r["pad/unique"] for r in train),
            "skipped_steps": sum(1 for r in train if r["train/updates"] == 0),
            "seconds_per_step": statistics.mean(r["time/step"] for r in train),
            "train_seconds": train[-1]["time/train_s_cum"], "trained_tokens": train[-1]["train/tokens_cum"],
            "eval_seconds": evals[-1].get("time/eval_s_cum"),
            "curve": curve, "zero_adv_by_step": zero, "selected_by_step": [r["pad/selected"] for r in train]}


def add_equal_budget(variants):
    """Reads every run at the smallest final training seconds and trained tokens of the study; returns them."""
    runs = [r for v in variants.values() for r in v["runs"]]
    budgets = {"train_seconds": min(r["curve"][-1]["train_s"] for r in runs),
               "trained_tokens": min(r["curve"][-1]["tokens"] for r in runs)}
    for r in runs:
        c = r["curve"]
        r["acc_at_equal_time"] = value_at_budget([p["train_s"] for p in c], [p["acc"] for p in c],
                                                 budgets["train_seconds"])
        r["acc_at_equal_tokens"] = value_at_budget([p["tokens"] for p in c], [p["acc"] for p in c],
                                                   budgets["trained_tokens"])
    return budgets


SUMMARY_KEYS = ("final_acc", "best_acc", "final_text_acc", "acc_at_equal_time", "acc_at_equal_tokens", "zero_adv",
                "zero_adv_last_third", "trained_per_step", "unique_per_step", "skipped_steps", "seconds_per_step",
                "train_seconds", "trained_tokens")


def summarize_variant(runs):
    return {k: mean_ci([r[k] for r in runs]) for k in SUMMARY_KEYS if all(r.get(k) is not None for r in runs)}


# -----------------------------------------------------------------------------
# Variants


def variant_flags(spec):
    """'code:pad-t-high=inf' -> ['--pad', 'code', '--pad-set', 't_high=inf']: a preset, then
    train_grpo.py flags; pad-KEY=VALUE knobs become --pad-set KEY=VALUE."""
    preset, *knobs = spec.split(":")
    flags, pad_set = ["--pad", preset], []
    for knob in knobs:
        name, sep, value = knob.partition("=")
        if not sep or not name:
            raise UserError(f"--variants {spec}: expected PRESET[:FLAG=VALUE]..., e.g. code:pad-t-high=inf")
        if name.startswith("pad-"):
            pad_set.append(f"{name[4:].replace('-', '_')}={value}")
        else:
            flags += [f"--{name}", value]
    return flags + (["--pad-set", *pad_set] if pad_set else [])


def folder_name(spec):
    return spec.replace(":", "_").replace("=", "_")


TOY_GROUP_SIZE = 8  # train_grpo.py's toy preset
REWARD_FLAGS = ("--rewards", "--scale-by-std")


def binary_reward_band(t_low, t_high, group_size):
    """The |A| values a binary reward can give in a group of G (0 for tied groups) that fall inside
    t_low < |A| < t_high, compared as pad_select compares them (fp32 advantages)."""
    import torch
    from nanorevisual.grpo import group_advantages
    values = [torch.zeros(1)] + [group_advantages(torch.tensor([1.0] * c + [0.0] * (group_size - c)), group_size).abs()
                                 for c in range(1, group_size)]
    values = torch.cat(values).unique()  # (V,) fp32
    return tuple(values[(values > t_low) & (values < t_high)].tolist())


def group_size_of(extra):
    """G of every run of a study: --group-size in --extra, else the toy preset's."""
    words = extra.split()
    return int(words[words.index("--group-size") + 1]) if "--group-size" in words else TOY_GROUP_SIZE


def map_cell_groups(presets, t_lows, t_highs, extra):
    """{(preset, t_low, t_high): the cell whose runs it shares}. Under the toy's binary reward two threshold pairs
    whose bands hold the same possible |A| values select identically, so with the same seed their runs are the same
    run: it is run once. Only when --extra leaves the reward and G alone (else every cell is its own)."""
    words = extra.split()
    binary = not any(flag in words for flag in REWARD_FLAGS)
    group_size = group_size_of(extra)
    owner, first = {}, {}
    for preset in presets:
        for t_low in t_lows:
            for t_high in t_highs:
                key = (preset, binary_reward_band(t_low, t_high, group_size)) if binary else (preset, t_low, t_high)
                owner[(preset, t_low, t_high)] = first.setdefault(key, (preset, t_low, t_high))
    return owner


# -----------------------------------------------------------------------------
# Studies


def variant_study(args, ctx, specs):
    """The ablation and the sweep: {variant: flags} x seeds, all mrl from the cold start."""
    jobs, dirs = [], {name: [] for name in specs}
    for seed in args.seeds:  # seed-major: each variant shares the machine with every other, and a stopped study
        for name, flags in specs.items():  # has whole seeds done
            run_dir = os.path.join(args.out_dir, folder_name(name), f"seed{seed}")
            dirs[name].append((seed, run_dir))
            jobs.append((run_dir, ctx["grpo"]("mrl", ctx["init"]) + ["--seed", seed, "--max-steps", args.steps, *flags]))
    if args.plan:
        return print_plan(jobs, args)
    run_all(jobs, args.jobs)
    variants = {name: {"flags": specs[name], "runs": [summarize_run(d, s, ctx["mm_key"], ctx["text_key"])
                                                      for s, d in ds]} for name, ds in dirs.items()}
    budgets = add_equal_budget(variants)
    for v in variants.values():
        v["summary"] = summarize_variant(v["runs"])
    out = args.out_dir
    plots = [plot_eval_curves({n: v["runs"] for n, v in variants.items()}, os.path.join(out, "heldout_acc.png"),
                              f"held-out image accuracy ({args.task} task), mean and 95% interval over seeds"),
             plot_series({n: [r["zero_adv_by_step"] for r in v["runs"]] for n, v in variants.items()},
                         os.path.join(out, "zero_adv.png"), "zero-advantage fraction (10-step mean over seeds)",
                         hline=STAGNANT)]
    first = next(iter(dirs))
    dump = os.path.join(dirs[first][0][1], "rollouts", f"step_{args.hist_step:06d}.jsonl")
    if os.path.exists(dump):
        plots.append(plot_adv_hist(dump, os.path.join(out, "adv_hist.png"),
                                   f"|A| at step {args.hist_step}, {first}, seed {args.seeds[0]}"))
        # what the released preset would pick from this real batch (the batch as trained by the first variant)
        run_script("studies.pad_explorer", "--dump", dump, "--pad", "code", "--out",
            os.path.join(out, "pad_explorer_code.png"), log=os.path.join(out, "pad_explorer_code.log"), threads=0)
        plots.append(os.path.join(out, "pad_explorer_code.png"))
    dumps = sorted(glob.glob(os.path.join(out, "*", "seed*", "rollouts", "step_*.jsonl")))
    adv_values = plot_adv_values(dumps, os.path.join(out, "adv_values.png"),
                                 binary_reward_band(0, float("inf"), group_size_of(args.extra)),
                                 f"|A| over every rollout dump of the study ({len(dumps)} dumps)")
    plots.append(os.path.join(out, "adv_values.png"))
    results = {"study": args.mode, "config": ctx["config"], "definitions": DEFINITIONS, "budgets": budgets,
               "variants": variants, "adv_values": adv_values}
    write_outputs(args, results, variant_report(args, ctx, variants, budgets) + [
        "", f"|A| over every rollout dump (adv_values.png): {adv_values}"], plots)


def map_study(args, ctx):
    """t_low x t_high for each --map-presets preset; one mrl run per distinct cell and seed."""
    owner = map_cell_groups(args.map_presets, args.map_t_low, args.map_t_high, args.extra)
    jobs, cells = [], {}
    for seed in args.seeds:  # seed-major, as in variant_study
        for cell, (preset, t_low, t_high) in owner.items():
            run_dir = os.path.join(args.out_dir, preset, f"tl{t_low}_th{t_high}", f"seed{seed}")
            cells.setdefault(cell, []).append((seed, run_dir))
            if cell == owner[cell]:
                jobs.append((run_dir, ctx["grpo"]("mrl", ctx["init"]) + [
                    "--seed", seed, "--max-steps", args.steps, "--pad", preset, "--pad-set", f"t_low={t_low}",
                    f"t_high={t_high}"]))
    if args.plan:
        return print_plan(jobs, args)
    run_all(jobs, args.jobs)
    maps, plots = {}, []
    for preset in args.map_presets:
        grid = []
        for t_low in args.map_t_low:
            for t_high in args.map_t_high:
                runs = [summarize_run(d, s, ctx["mm_key"], ctx["text_key"])
                        for s, d in cells[owner[(preset, t_low, t_high)]]]
                for r in runs:  # curves and series stay in the run folders: 3 x 12 x 2 runs would bloat the file
                    for key in ("curve", "zero_adv_by_step", "selected_by_step"):
                        r.pop(key)
                same = owner[(preset, t_low, t_high)]
                grid.append({"t_low": t_low, "t_high": t_high, "runs": runs, "summary": summarize_variant(runs),
                             "same_runs_as": None if same == (preset, t_low, t_high) else
                             {"t_low": same[1], "t_high": same[2]}})
        maps[preset] = grid
        plots.append(plot_heatmap(grid, args.map_t_low, args.map_t_high, os.path.join(args.out_dir, f"map_{preset}.png"),
                                  f"--pad {preset}: held-out accuracy at step {args.steps}\n({args.task} task, "
                                  f"{len(args.seeds)} seeds; cells: mean, 95% CI, s/step)"))
    results = {"study": "map", "config": ctx["config"], "definitions": DEFINITIONS, "maps": maps}
    write_outputs(args, results, map_report(args, ctx, maps), plots)


def stage_order_study(args, ctx):
    """Per seed: MRL and TRL from the cold start, then each followed by the other (paper Table 3)."""
    first, second, dirs = [], [], {}
    steps = {"mrl": args.steps, "trl": args.trl_steps}

    def stage(name, model, seed):
        return ctx["grpo"](name, model) + ["--seed", seed, "--max-steps", steps[name]]

    for seed in args.seeds:
        d = {k: os.path.join(args.out_dir, f"seed{seed}", k) for k in ("mrl", "trl", "mrl_trl", "trl_mrl")}
        dirs[seed] = d
        first += [(d["mrl"], stage("mrl", ctx["init"], seed)), (d["trl"], stage("trl", ctx["init"], seed))]
        second += [(d["mrl_trl"], stage("trl", os.path.join(d["mrl"], "final"), seed)),
                   (d["trl_mrl"], stage("mrl", os.path.join(d["trl"], "final"), seed))]
    if args.plan:
        return print_plan(first + second, args)
    run_all(first, args.jobs)
    run_all(second, args.jobs)
    chains = {"CS only": None, "CS + MRL": "mrl", "CS + TRL": "trl", "CS + MRL + TRL": "mrl_trl",
              "CS + TRL + MRL": "trl_mrl"}
    rows = {}
    for label, key in chains.items():
        runs = []
        for seed, d in dirs.items():
            evals = load_metrics(d["mrl"] if key is None else d[key])[1]
            ev = evals[0] if key is None else evals[-1]  # the cold start = the first eval of the mrl run
            mm, text = ev[ctx["mm_key"]], ev[ctx["text_key"]]
            runs.append({"seed": seed, "mm_acc": mm, "text_acc": text, "avg": (mm + text) / 2,
                         "run_dir": None if key is None else d[key]})
        rows[label] = {"runs": runs, "summary": {k: mean_ci([r[k] for r in runs]) for k in ("mm_acc", "text_acc", "avg")}}
    results = {"study": "stage-order", "config": ctx["config"], "definitions": DEFINITIONS, "chains": rows}
    plot = plot_stage_order(rows, os.path.join(args.out_dir, "stage_order.png"),
                            f"Stage order ({args.task} task, {len(args.seeds)} seeds): mean, 95% interval, seeds as dots")
    write_outputs(args, results, stage_report(args, ctx, rows), [plot])


# -----------------------------------------------------------------------------
# Reports

DEFINITIONS = {
    "final_acc": "greedy held-out image accuracy at the run's last eval (after the last step)",
    "best_acc": "the highest held-out image accuracy over the run's evals (best_step: the first eval reaching it)",
    "final_text_acc": "greedy accuracy on the 20 held-out arithmetic pairs at the last eval (retention)",
    "train_seconds": "sum of the step times (rollouts, PAD, updates); evals, dumps, saves and start-up excluded",
    "trained_tokens": "completion tokens through the policy-gradient update, repeats and PPO epochs counted",
    "acc_at_equal_time": "eval curve interpolated at budgets.train_seconds = min over all runs of the final training"
                         " seconds",
    "acc_at_equal_tokens": "eval curve interpolated at budgets.trained_tokens = min over all runs of the final "
                           "trained tokens",
    "zero_adv": "mean over steps of the fraction of rollouts with advantage exactly 0",
    "zero_adv_last_third": "the same over the last third of the steps",
    "stagnation_onset": f"first step from which the 10-step running mean of zero_adv stays >= {STAGNANT} (None: never)",
    "trained_per_step": "sequences PAD selected per step, repeats counted (pad/selected)",
    "seconds_per_step": "mean step time (time/step)",
    "ci95": "Student-t 95% interval of the mean over seeds",
}


def print_plan(jobs, args):
    todo = sum(not finished(d) for d, _ in jobs)
    steps = sum(int(a[a.index("--max-steps") + 1]) for d, a in jobs if not finished(d))
    print(f"{args.mode}: {len(jobs)} runs ({todo} to do, {steps} training steps), {args.jobs} at a time, "
          f"task {args.task}, {len(args.seeds)} seeds, held-out {args.heldout_size} images")
    for d, a in jobs:
        print(("done  " if finished(d) else "todo  ") + d + "  " + " ".join(map(str, a[a.index("--seed"):])))


def header(args, ctx, title):
    c = ctx["config"]
    return [f"# {title}", "", f"Task `{args.task}` ({ctx['task_note']}); cold start `{c['init']}`; "
            f"{c['steps']} mrl steps{', ' + str(c['trl_steps']) + ' trl steps' if args.mode == 'stage-order' else ''}; "
            f"seeds {c['seeds']}; held-out: {c['heldout_size']} images and {c['text_heldout_size']} arithmetic pairs, "
            f"greedy, every {c['eval_every']} steps. {c['jobs']} runs in parallel, one thread each, on "
            f"{c['cpu_count']} cores. Intervals: Student-t 95% over seeds. Command: `{c['command']}`.", ""]


def variant_report(args, ctx, variants, budgets):
    lines = header(args, ctx, f"PAD {'sweep' if args.mode == 'sweep' else 'ablation'} (paper Table 4 in miniature)")
    lines += [f"Equal-budget columns read every run's eval curve at {budgets['train_seconds']:.0f} training seconds "
              f"and at {budgets['trained_tokens']:.0f} trained tokens (the smallest final budgets of the study).", "",
              "| variant | acc at end [95% CI] | sd | best acc | acc at equal time | acc at equal tokens | text acc at end | "
              "zero-adv (all / last third) | trained seqs / step | s / step | skipped steps |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in variants.items():
        s = v["summary"]
        text = fmt_ci(s["final_text_acc"]) if "final_text_acc" in s else "-"
        lines.append(f"| {name} | {fmt_ci(s['final_acc'])} | {s['final_acc']['std']:.3f} | "
                     f"{fmt_ci(s['best_acc'])} | {fmt_ci(s['acc_at_equal_time'])} | {fmt_ci(s['acc_at_equal_tokens'])} | {text} | "
                     f"{s['zero_adv']['mean']:.2f} / {s['zero_adv_last_third']['mean']:.2f} | "
                     f"{s['trained_per_step']['mean']:.0f} | {s['seconds_per_step']['mean']:.2f} | "
                     f"{s['skipped_steps']['mean']:.1f} |")
    lines += ["", "Stagnation onset per seed (first step from which the 10-step mean zero-advantage fraction stays "
              f">= {STAGNANT}; - = never):", ""]
    lines += [f"- {name}: " + ", ".join(f"seed {r['seed']}: {r['stagnation_onset'] or '-'}" for r in v["runs"])
              for name, v in variants.items()]
    lines += ["", "Per seed (accuracy at end / best (its step) / at equal time / at equal tokens):", ""]
    lines += [f"- {name}: " + "; ".join(f"seed {r['seed']}: {r['final_acc']:.3f} / {r['best_acc']:.3f} "
                                        f"({r['best_step']}) / {r['acc_at_equal_time']:.3f} / "
                                        f"{r['acc_at_equal_tokens']:.3f}" for r in v["runs"])
              for name, v in variants.items()]
    return lines


def map_report(args, ctx, maps):
    lines = header(args, ctx, "PAD threshold map: t_low x t_high")
    lines += ["Each cell: held-out image accuracy at the end, mean [95% CI] over seeds, and seconds per step. "
              "The two maps keep their presets' other settings: power = released (α 1.5, ρ 1.5, with replacement), "
              "softmax = paper (τ 1.0 -> 0.3, ρ 0.5, without replacement).", ""]
    shared = [(p, c) for p, grid in maps.items() for c in grid if c["same_runs_as"]]
    if shared:
        G = group_size_of(args.extra)
        values = ", ".join(f"{v:.2f}" for v in binary_reward_band(0, float("inf"), G))
        lines += [f"With a binary reward and G = {G} the nonzero |A| take only the values {values}, "
                  "so threshold pairs that keep the same of these values select "
                  "the same samples and, seed for seed, are the same run; each was run once and its numbers fill "
                  "every such cell (marked `=` below): " + "; ".join(
                      f"{p} ({c['t_low']}, {c['t_high']}) = ({c['same_runs_as']['t_low']}, "
                      f"{c['same_runs_as']['t_high']})" for p, c in shared) + ".", ""]
    for preset, grid in maps.items():
        lines += [f"## --pad {preset}", "", "| t_low \\ t_high | " + " | ".join(str(t) for t in args.map_t_high) + " |",
                  "|---|" + "---:|" * len(args.map_t_high)]
        for t_low in args.map_t_low:
            cells = [c for c in grid if c["t_low"] == t_low]
            lines.append(f"| {t_low} | " + " | ".join(
                ("= " if c["same_runs_as"] else "") + f"{fmt_ci(c['summary']['final_acc'])}, "
                f"{c['summary']['seconds_per_step']['mean']:.2f} s" for c in cells) + " |")
        ranked = sorted((c for c in grid if not c["same_runs_as"]), key=lambda c: c["summary"]["final_acc"]["mean"])
        for label, c in (("best", ranked[-1]), ("worst", ranked[0])):
            lines.append(f"\n{label}: t_low {c['t_low']}, t_high {c['t_high']}: {fmt_ci(c['summary']['final_acc'])}")
        lines.append("")
    return lines


def stage_report(args, ctx, rows):
    lines = header(args, ctx, "Stage order (paper Table 3 in miniature)")
    lines += ["| stages | images (mm_val) | arithmetic (text_val) | avg |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {fmt_ci(r['summary']['mm_acc'])} | {fmt_ci(r['summary']['text_acc'])} | "
              f"{fmt_ci(r['summary']['avg'])} |" for label, r in rows.items()]
    lines += ["", "Per seed (images / arithmetic):", ""]
    lines += [f"- {label}: " + "; ".join(f"seed {r['seed']}: {r['mm_acc']:.3f} / {r['text_acc']:.3f}"
                                         for r in row["runs"]) for label, row in rows.items()]
    return lines


def write_outputs(args, results, report_lines, plots):
    results["config"]["wall_minutes"] = (time.perf_counter() - T0) / 60
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report_lines += ["", f"Study wall time (this invocation, finished runs skipped): "
                         f"{results['config']['wall_minutes']:.1f} min", ""]
    report_lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    with open(os.path.join(args.out_dir, "report.md"), "w") as f:
        f.write("\n".join(report_lines) + "\n")
    print("\n".join(report_lines[2:]) + f"\nreport: {os.path.join(args.out_dir, 'report.md')}")


# -----------------------------------------------------------------------------


T0 = time.perf_counter()
TASK_NOTES = {"colour": "name the colour of one shape, 6 answers, chance ≈ 0.17",
              "colour-shape": "name colour and shape, 18 answers, chance ≈ 0.06"}


def main():
    from nanorevisual.toy import TASKS
    parser = argparse.ArgumentParser(description="PAD ablation / threshold map / sweep / stage order on the toy tasks")
    parser.add_argument("--mode", choices=list(MODE_DEFAULTS), default="ablation", help="which study")
    parser.add_argument("--task", choices=TASKS, default="colour", help="toy image task (toy.py)")
    parser.add_argument("--out-dir", default=None, help="runs, results.json, report.md, plots (default "
                        "runs/pad_<mode>_<task>)")
    parser.add_argument("--init", default=None, help="cold-start checkpoint (default runs/cold_start_<task>/final, "
                        "trained if missing)")
    parser.add_argument("--variants", nargs="+", default=ABLATION, help="ablation: PRESET[:FLAG=VALUE]... per variant")
    parser.add_argument("--sweep", default=None, help="sweep: KNOB=V1,V2,... one train_grpo.py flag over values")
    parser.add_argument("--base", default="paper", help="sweep: the PAD preset the sweep starts from")
    parser.add_argument("--map-presets", nargs="+", default=["code", "paper"], help="map: one map per preset")
    parser.add_argument("--map-t-low", nargs="+", type=float, default=[0.0, 0.03, 0.1, 0.3, 0.5, 0.8],
                        help="map: t_low rows (at G = 8, 0 to 0.3 keep the same |A| values; 0.5 and 0.8 cut)")
    parser.add_argument("--map-t-high", nargs="+", type=float, default=[0.97, 1.5, float("inf")],
                        help="map: t_high columns")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 5 for the ablation, 3 "
                        "otherwise)")
    parser.add_argument("--steps", type=int, default=None, help="mrl steps per run (default: ablation 300, map and "
                        "sweep 200, stage order 150)")
    parser.add_argument("--trl-steps", type=int, default=60, help="stage order: trl steps")
    parser.add_argument("--heldout-size", type=int, default=500, help="held-out images")
    parser.add_argument("--data-dir", default=None, help="toy data folder, built if missing (default "
                        "data/toy_<task>_val<heldout-size>)")
    parser.add_argument("--eval-every", type=int, default=25, help="held-out eval (and rollout dump) interval")
    parser.add_argument("--hist-step", type=int, default=25, help="step whose rollout dump gives the |A| plots")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--extra", default="", help="extra train_grpo.py flags for every run, space separated")
    parser.add_argument("--plan", type=int, default=0, choices=[0, 1], help="1: list the runs and exit")
    one_line_errors(parser)
    args = parser.parse_args()

    steps, seeds = MODE_DEFAULTS[args.mode]
    args.steps = args.steps or steps
    args.seeds = args.seeds if args.seeds is not None else seeds
    args.out_dir = args.out_dir or f"runs/pad_{args.mode.replace('-', '_')}_{args.task}"
    for name in ("steps", "trl_steps", "heldout_size", "eval_every", "jobs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds must differ, got {args.seeds}")
    if args.mode == "sweep":
        if not args.sweep or "=" not in args.sweep:
            raise UserError("--mode sweep needs --sweep KNOB=V1,V2,..., e.g. --sweep pad-t-low=0,0.03,0.3")
        knob, values = args.sweep.split("=", 1)
        specs = {f"{args.base}:{knob}={v}": variant_flags(f"{args.base}:{knob}={v}") for v in values.split(",")}
    else:
        specs = {v: variant_flags(v) for v in args.variants}
    if args.mode == "map" and any(lo >= hi for lo in args.map_t_low for hi in args.map_t_high):
        raise UserError(f"--map-t-low {args.map_t_low} must all lie below --map-t-high {args.map_t_high}")

    from nanorevisual.checkpoint import git_commit
    from nanorevisual.toy import ensure_toy_data
    data_dir = ensure_toy_data(args.data_dir or f"data/toy_{args.task}_val{args.heldout_size}", task=args.task,
                               num_mm_val=args.heldout_size)
    init = args.init or f"runs/cold_start_{args.task}/final"
    if not args.plan and not os.path.exists(os.path.join(init, "config.json")):
        if args.init:
            raise UserError(f"--init {args.init}: no checkpoint there (config.json missing)")
        print(f"cold start: train_sft.py -> {init}", flush=True)
        run_script("train_sft.py", "--data", os.path.join(data_dir, "sft_train.jsonl"), "--val-data",
            os.path.join(data_dir, "sft_val.jsonl"), "--out-dir", os.path.dirname(init), "--overwrite", 1,
            log=os.path.dirname(init) + ".log", threads=0)
    os.makedirs(args.out_dir, exist_ok=True)
    val = [os.path.join(data_dir, "mm_val.jsonl"), os.path.join(data_dir, "text_val.jsonl")]
    common = ["--val-data", *val, "--eval-every", args.eval_every, *args.extra.split()]
    train_file = {"mrl": os.path.join(data_dir, "mm_train.jsonl"), "trl": os.path.join(data_dir, "text_train.jsonl")}

    def grpo(stage, model):  # train_grpo.py flags of one stage from one checkpoint
        return ["--stage", stage, "--model", model, "--data", train_file[stage], *common]

    ctx = {"grpo": grpo, "init": init, "mm_key": "eval/mm_val/accuracy", "text_key": "eval/text_val/accuracy",
           "task_note": TASK_NOTES[args.task]}
    mm_size, text_size = (sum(1 for line in open(path) if line.strip()) for path in val)  # what is really there
    ctx["config"] = {"mode": args.mode, "task": args.task, "steps": args.steps, "trl_steps": args.trl_steps,
                     "seeds": args.seeds, "heldout_size": mm_size, "text_heldout_size": text_size,
                     "eval_every": args.eval_every, "jobs": args.jobs, "threads_per_job": 1,
                     "cpu_count": os.cpu_count(), "machine": platform.platform(), "init": init, "data": data_dir,
                     "extra": args.extra, "git_commit": git_commit(),
                     "command": "python -m studies.pad_study " + shlex.join(sys.argv[1:])}
    if args.mode == "map":
        ctx["config"].update(map_presets=args.map_presets, map_t_low=args.map_t_low, map_t_high=args.map_t_high)
        return map_study(args, ctx)
    if args.mode == "stage-order":
        return stage_order_study(args, ctx)
    ctx["config"]["variants"] = {name: flags for name, flags in specs.items()}
    return variant_study(args, ctx, specs)


if __name__ == "__main__":
    main()
