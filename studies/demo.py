"""The whole ReVisual-R1 recipe in miniature, on CPU, in a few minutes: the README's first command.

    python -m studies.demo                 # tiny model, toy data, nothing downloaded
    python -m studies.demo --out-dir runs/demo --seed 1

It only chains the real scripts with real flags (no training code of its own); OUT_DIR is replaced on each run:
    1. train_sft.py                   cold start on text (arithmetic + colour sentences)
    2. train_grpo.py --stage mrl      GRPO + PAD on the image task (what colour is the shape?)
    3. train_grpo.py --stage trl      GRPO + PAD on arithmetic, vision tower frozen, k3 KL
    4. eval.py after each stage       greedy accuracy on the held-out image and arithmetic sets
and prints one table (accuracy per held-out set after each stage, and the run time), which it also writes with
the training curves to OUT_DIR/report.md.
"""

import argparse
import json
import os
import shutil
import time

from studies.runs import run_script as run
from nanorevisual.toy import ensure_toy_data


def main():
    parser = argparse.ArgumentParser(description="Run cold start -> MRL -> TRL with an eval after each stage")
    parser.add_argument("--out-dir", default="runs/demo", help="where every stage writes")
    parser.add_argument("--seed", type=int, default=0, help="seed passed to every stage")
    parser.add_argument("--mrl-steps", type=int, default=150, help="steps of the multimodal RL stage")
    parser.add_argument("--trl-steps", type=int, default=60, help="steps of the text RL stage")
    parser.add_argument("--sft-epochs", type=float, default=6, help="cold-start epochs over the toy set")
    args = parser.parse_args()

    toy = ensure_toy_data()
    val = [os.path.join(toy, "mm_val.jsonl"), os.path.join(toy, "text_val.jsonl")]
    out = args.out_dir
    t_start = time.perf_counter()
    times, results = {}, {}

    def evaluate(stage, model):
        eval_dir = os.path.join(out, f"eval_{stage}")
        shutil.rmtree(eval_dir, ignore_errors=True)  # a rerun evaluates the new checkpoint, never old predictions
        times[f"eval {stage}"] = run("eval.py", "--model", model, "--data", *val, "--out-dir", eval_dir)
        with open(os.path.join(eval_dir, "results.json")) as f:
            results[stage] = json.load(f)

    times["sft"] = run("train_sft.py", "--out-dir", f"{out}/sft", "--seed", args.seed, "--epochs", args.sft_epochs,
                       "--log-every", 25, "--overwrite", 1)
    evaluate("sft", f"{out}/sft/final")
    times["mrl"] = run("train_grpo.py", "--stage", "mrl", "--model", f"{out}/sft/final", "--out-dir", f"{out}/mrl",
                       "--seed", args.seed, "--max-steps", args.mrl_steps, "--overwrite", 1)
    evaluate("mrl", f"{out}/mrl/final")
    times["trl"] = run("train_grpo.py", "--stage", "trl", "--model", f"{out}/mrl/final", "--out-dir", f"{out}/trl",
                       "--seed", args.seed, "--max-steps", args.trl_steps, "--overwrite", 1)
    evaluate("trl", f"{out}/trl/final")
    total = time.perf_counter() - t_start

    sets = [k for k in results["sft"] if k != "average"]
    lines = ["| stage | " + " | ".join(f"{s} acc %" for s in sets) + " | stage time (s) |",
             "|---|" + "---:|" * (len(sets) + 1)]
    for stage, label in (("sft", "cold start (SFT)"), ("mrl", "+ MRL (GRPO+PAD, images)"),
                         ("trl", "+ TRL (GRPO+PAD, text, vision frozen)")):
        accs = " | ".join(f"{results[stage][s]['accuracy']:.1f}" for s in sets)
        lines.append(f"| {label} | {accs} | {times[stage] + times['eval ' + stage]:.0f} |")
    table = "\n".join(lines) + f"\n\ntotal wall time: {total:.0f} s ({total / 60:.1f} min) on {os.cpu_count()} CPU cores"
    print("\n" + table)

    report = ["# nanorevisual demo", "", f"Seed {args.seed}, tiny Qwen2.5-VL (~1M parameters), toy data, CPU.",
              "Greedy accuracy on the held-out sets (mm_val: colour of the shape in a 56x56 image, 200 images, chance "
              "~17%; text_val: the 20 arithmetic pairs held out of the cold start).", "", table, ""]
    try:
        from studies.plots import plot_run
        for stage in ("mrl", "trl"):
            png = plot_run(os.path.join(out, stage), os.path.join(out, f"{stage}_curves.png"), title=f"{stage} stage")
            report += [f"![{stage} curves]({os.path.basename(png)})", ""]
    except ImportError as e:
        report += [f"(plots skipped: {e})", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(report))
    print(f"report: {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
    main()
