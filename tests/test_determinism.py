"""Same seed, same weights: two GRPO runs are bit-identical at 1 and 2 threads, and a run killed anywhere (mid-step,
mid-save, at start-up) and resumed ends bit-identical to one that never stopped.

    python -m pytest -q tests/test_determinism.py      # ~5 min: ~40 short runs of the real scripts
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow
# graded reward (efficient length) so that a random tiny model still trains; prompt-once and shared prefill on
GRPO = ["--stage", "mrl", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "8",
        "--rewards", "accuracy=1", "length=1", "--length-budget", "6", "--lr", "1e-3", "--eval-every", "0", "--seed", "3"]


def start(script, *args, threads=2):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def outcome(out_dir):
    """(final weights, training records without timings): what two equal runs must share bit for bit."""
    weights = load_file(os.path.join(out_dir, "final", "model.safetensors"))
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in f]
    return weights, records


def assert_identical(a, b):
    (wa, ra), (wb, rb) = outcome(a), outcome(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not (wa[k] == wb[k]).all()]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}"
    assert ra == rb


@pytest.mark.parametrize("threads,deterministic", [(2, 0), (1, 1)])
def test_same_seed_grpo_runs_are_bit_identical(tmp_path, tiny_dir, toy_dir, threads, deterministic):
    args = [*GRPO, "--model", tiny_dir, "--data", os.path.join(toy_dir, "mm_train.jsonl"), "--val-data",
            "--max-steps", "3", "--deterministic", str(deterministic)]
    runs = [str(tmp_path / name) for name in ("a", "b")]
    for out in runs:
        finish(start("train_grpo.py", *args, "--out-dir", out, threads=threads))
    assert_identical(*runs)
    assert any(r.get("train/updates") for r in outcome(runs[0])[1])  # the runs did train


def new_temp_folders(out_dir, since):
    """Checkpoint temp folders created after `since`: a save is under way."""
    try:
        names = [d for d in os.listdir(out_dir) if d.startswith(".tmp-")]
        return [d for d in names if os.stat(os.path.join(out_dir, d)).st_mtime >= since]
    except FileNotFoundError:  # the folder, or a temp folder just renamed into place
        return []


def logged_steps(out_dir):
    try:
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            return sum(1 for _ in f)  # one record per step: these runs have no held-out set
    except FileNotFoundError:
        return 0


def kill_and_resume(script, args, out_dir, rng, kills, steps):
    """Start the run with --resume 1 until it finishes, SIGKILLing it `kills` times, alternately in the middle of a
    save (as soon as a checkpoint temp folder of this process appears; final/ has one too) and at a random step
    (once the metrics of a step drawn from those left are written, plus up to 0.1 s; a step already logged kills
    it during start-up). Moments follow the run's progress, not the clock, so a slow or loaded machine kills as
    often as a fast one."""
    moments = []
    for k in range(kills):
        born = time.time()
        target, delay = rng.randint(min(logged_steps(out_dir), steps - 1), steps - 1), rng.uniform(0, 0.1)
        proc, due = start(script, *args, "--out-dir", out_dir, "--resume", "1"), None
        while proc.poll() is None:
            if k % 2 == 0 and due is None and logged_steps(out_dir) >= target:
                due = time.monotonic() + delay
            if k % 2 == 1 and new_temp_folders(out_dir, born):
                moment = "save"
            elif due is not None and time.monotonic() > due:
                moment = f"step {target} + {delay:.2f} s"
            else:
                time.sleep(0.002)
                continue
            proc.send_signal(signal.SIGKILL)
            moments.append(moment)
            break
        proc.wait()
        if os.path.exists(os.path.join(out_dir, "final", "meta.json")) and proc.returncode == 0:
            return moments  # finished before this kill
    finish(start(script, *args, "--out-dir", out_dir, "--resume", "1"))
    return moments


def test_kill_anywhere_resumes_bit_identically(tmp_path, tiny_dir, toy_dir):
    rng = random.Random(0)
    cases = {"train_sft.py": ["--model", tiny_dir, "--data", os.path.join(toy_dir, "sft_train.jsonl"),
                              "--max-steps", "16", "--save-every", "2", "--seed", "3", "--eval-every", "0",
                              "--batch-size", "16", "--max-length", "128"],
             "train_grpo.py": [*GRPO, "--model", tiny_dir, "--data", os.path.join(toy_dir, "mm_train.jsonl"),
                               "--val-data", "--max-steps", "6", "--save-every", "2"]}
    moments = []
    for script, args in cases.items():
        straight = str(tmp_path / f"{script}-straight")
        finish(start(script, *args, "--out-dir", straight))
        steps = int(args[args.index("--max-steps") + 1])
        for trial in range(4):
            out = str(tmp_path / f"{script}-{trial}")
            moments += kill_and_resume(script, args, out, rng, 3, steps)
            assert_identical(straight, out)
    assert len(moments) >= 20 and moments.count("save") >= 6, moments



def test_resume_under_other_kernels_says_so(tmp_path, tiny_dir, toy_dir):
    """The one resume that cannot be bit-identical: other float kernels (here ATen's scalar ones instead of this
    CPU's vector ones, as on a machine with another CPU). The run continues and prints one note; the same kernels
    print none."""
    import shutil
    import torch
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU runs ATen's scalar kernels already: there are no other kernels to resume under")
    args = ["--model", tiny_dir, "--data", os.path.join(toy_dir, "sft_train.jsonl"), "--max-steps", "4",
            "--save-every", "2", "--eval-every", "0", "--batch-size", "16", "--max-length", "128"]
    straight = str(tmp_path / "straight")
    finish(start("train_sft.py", *args, "--out-dir", straight))
    printed = {}
    for name, kernels in {"same": {}, "other": {"ATEN_CPU_CAPABILITY": "default"}}.items():
        out = str(tmp_path / name)
        shutil.copytree(straight, out, ignore=shutil.ignore_patterns("final", ".lock"))  # as if killed at step 3
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="2", **kernels)
        run = subprocess.run([sys.executable, os.path.join(ROOT, "train_sft.py"), *args, "--out-dir", out,
                              "--resume", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and "resumed from" in run.stdout, run.stderr[-3000:]
        printed[name] = [line for line in run.stdout.splitlines() if "not bit-identically" in line]
    assert printed["same"] == []
    assert len(printed["other"]) == 1 and "CPU DEFAULT" in printed["other"][0], printed
