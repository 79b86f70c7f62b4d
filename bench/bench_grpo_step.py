"""GRPO step time against TRL's GRPOTrainer on the same step, measured side by side in one run.

    python bench/bench_grpo_step.py                                   # this project only: phase split, median step
    python bench/bench_grpo_step.py --trl-python VENV/bin/python      # and the ratio to TRL

The step (TRL's benchmark configuration): the project's tiny model from a fresh `nanorevisual.toy --model-out` build, 8 prompts
per step x G 4 = 32 completions of at most 32 new tokens, temperature 1, lr 1e-5, no KL, no PAD (`--pad none`: every
completion is generated and trained on), one optimizer step per rollout step, 2 torch threads. Every step holds 4
image prompts (a 56x56 grey image with a 32x32 square of one colour, "What colour is the square? Put the answer in
\\boxed{}.") and 4 text prompts ("What is A + B? Put the answer in \\boxed{}."), as TRL's dataset does; the problems
are used as written (`--instruction 0`), since TRL appends no instruction.

TRL is not a dependency of this project: install it in a separate virtual environment (see the docstring of
bench/trl_grpo_step.py: torch 2.13 CPU, trl 1.16, never torchvision) and point --trl-python at it. --trl-script
(default bench/trl_grpo_step.py) gets the model folder (--load-dir), the same rl.jsonl ours trains on (--data),
--steps and --threads, and prints "median of steps 2..N: X s". Runs alternate (ours, TRL, ours, TRL, ...) and each
reports the median step time of steps 2..N; the ratio printed last is median(ours) / median(TRL).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


def write_prompts(folder):
    """4 image + 4 text prompts in the project's RL format (every step trains on all 8, in a new order)."""
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    rows = []
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        img = Image.new("RGB", (56, 56), (128, 128, 128))
        ImageDraw.Draw(img).rectangle([12, 12, 43, 43], fill=rgb)  # a 32x32 square
        img.save(os.path.join(folder, "img", f"{i}.png"))
        rows.append({"id": f"img-{i}", "problem": "<image>What colour is the square? Put the answer in \\boxed{}.",
                     "answer": colour, "images": [f"img/{i}.png"]})
        a, b = 2 * i + 1, 9 - i
        rows.append({"id": f"sum-{i}", "problem": f"What is {a} + {b}? Put the answer in \\boxed{{}}.",
                     "answer": str(a + b)})
    path = os.path.join(folder, "rl.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def run(cmd, env):
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def ours(model, data, out_dir, steps, env, extra):
    """One train_grpo.py run; returns the medians of steps 2..N of time/step and of each phase."""
    run([sys.executable, os.path.join(ROOT, "train_grpo.py"), "--stage", "mrl", "--model", model, "--data", data,
         "--val-data", "--instruction", "0", "--prompts-per-step", "8", "--group-size", "4", "--max-new-tokens", "32",
         "--pad", "none", "--lr", "1e-5", "--max-steps", str(steps), "--eval-every", "0",
         "--micro-batch-size", "32", "--out-dir", out_dir, "--overwrite", "1", *extra], env)
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "time/step" in r][1:]  # steps 2..N
    keys = ("time/step", "time/generate", "time/logprobs", "time/update")
    return {k: statistics.median(r.get(k, 0.0) for r in records) for k in keys}


def main():
    parser = argparse.ArgumentParser(description="GRPO step time vs TRL GRPOTrainer")
    parser.add_argument("--steps", type=int, default=20, help="steps per run; the median is over steps 2..N")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both")
    parser.add_argument("--trl-python", default=None, help="python of a venv with trl 1.16 (not this project's)")
    parser.add_argument("--trl-script", default=os.path.join(ROOT, "bench", "trl_grpo_step.py"),
                        help="TRL timing script (prints 'median of steps 2..N: X s')")
    parser.add_argument("--extra", default="", help="extra train_grpo.py flags, space separated (e.g. --micro-batch-size 8)")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    tmp = tempfile.mkdtemp(prefix="bench_grpo_")
    model = os.path.join(tmp, "tiny")
    run([sys.executable, "-m", "nanorevisual.toy", "--model-out", model], env)
    data = write_prompts(os.path.join(tmp, "data"))
    mine, theirs = [], []
    for i in range(args.repeats):
        mine.append(ours(model, data, os.path.join(tmp, f"run{i}"), args.steps, env, args.extra.split()))
        print(f"ours run {i}: " + " | ".join(f"{k} {v:.3f}" for k, v in mine[-1].items()), flush=True)
        if args.trl_python:
            out = run([args.trl_python, args.trl_script, "--load-dir", model, "--data", data,
                       "--steps", str(args.steps), "--threads", str(args.threads)], dict(env, PYTHONPATH=""))
            theirs.append(float(re.search(r"median of steps 2\.\.\d+: ([\d.]+) s", out).group(1)))
            print(f"TRL  run {i}: time/step {theirs[-1]:.3f}", flush=True)
    split = {k: statistics.median(m[k] for m in mine) for k in mine[0]}
    print("\nours, median over runs: " + " | ".join(f"{k} {v:.3f} s" for k, v in split.items()))
    if theirs:
        print(f"TRL, median over runs: time/step {statistics.median(theirs):.3f} s")
        print(f"ratio of the medians, ours / TRL: {split['time/step'] / statistics.median(theirs):.2f}")
        # each run of ours is paired with the TRL run right after it: the VM's speed drifts between sittings, and a
        # pair shares the sitting, so the median of the paired ratios is the steadier number
        paired = [m["time/step"] / t for m, t in zip(mine, theirs)]
        print("paired ratios: " + ", ".join(f"{r:.2f}" for r in paired))
        print(f"ratio ours / TRL (median of the paired ratios): {statistics.median(paired):.2f}")


if __name__ == "__main__":
    main()
