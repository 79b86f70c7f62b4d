"""Every class of bad input to the three scripts ends in one line on stderr, before any model loads; state that outlives
a run (reused folders, resumes, torn metrics, changed gold answers) never mislabels a result.

    python -m pytest -q tests/test_user_errors.py      # ~4 min: ~160 short runs of the real scripts
    python tests/user_errors.py                        # the same cases as a matrix per script
"""

import json
import os
import subprocess
import sys

import pytest

from user_errors import CLASSES, run_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_every_bad_input_is_one_line_before_any_model_loads(tmp_path, tiny_dir):
    results = run_all(str(tmp_path), tiny_dir)
    # "one line": one `error:` line naming what is wrong, exit code 2, no traceback, no weight read
    bad = [f"{script} / {name}: {outcome}: {stderr.strip()[-300:]}"
           for script, _, name, outcome, stderr in results if outcome != "one line"]
    assert len(results) >= 150 and not bad, "\n".join(bad)
    scripts = ("train_sft.py", "train_grpo.py", "eval.py")
    assert {(s, k) for s, k, *_ in results} == {(s, k) for s in scripts for k in CLASSES}


# ----------------------------------------------------------------------------------------------------------------
# state that outlives a run


def run(script, *args, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                         timeout=300, env=env, cwd=ROOT)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def metric_steps(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if line.strip() and "train/loss" in line]


@pytest.fixture
def sft_args(tiny_dir, toy_dir):
    return ["--model", tiny_dir, "--data", os.path.join(toy_dir, "sft_train.jsonl"), "--batch-size", "8",
            "--max-length", "96", "--epochs", "1", "--eval-every", "0"]


@pytest.mark.slow
def test_reused_folder_resume_and_torn_metrics(tmp_path, sft_args):
    out = str(tmp_path / "run")
    run("train_sft.py", *sft_args, "--out-dir", out, "--max-steps", "4", "--save-every", "2")
    # a fresh run into the folder of another run refuses in one line (a later --resume would mix the two runs)
    again = run("train_sft.py", *sft_args, "--out-dir", out, "--max-steps", "3", check=False)
    assert again.returncode != 0 and again.stderr.strip().startswith("error: ") and "already holds a run" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    # resume with other settings than the checkpoint's run: refused, naming what differs
    other = run("train_sft.py", *sft_args, "--out-dir", out, "--resume", "1", "--max-steps", "6", "--lr", "1e-3",
                check=False)
    assert other.returncode != 0 and "--lr" in other.stderr and "Traceback" not in other.stderr
    # a crash mid-write left a torn last line: resume drops it and continues (no JSONDecodeError, no duplicates)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"step": 3, "train/lo')
    resumed = run("train_sft.py", *sft_args, "--out-dir", out, "--resume", "1", "--max-steps", "6")
    assert "at step 2" in resumed.stdout
    assert metric_steps(out) == [1, 2, 3, 4, 5, 6]
    # --overwrite 1 replaces the old run
    run("train_sft.py", *sft_args, "--out-dir", out, "--max-steps", "2", "--overwrite", "1")
    assert metric_steps(out) == [1, 2] and not any(d.startswith("step_") for d in os.listdir(out))


@pytest.mark.slow
def test_resume_with_nothing_to_resume(tmp_path, sft_args):
    out = str(tmp_path / "killed")
    os.makedirs(out)
    # killed during the first save: rows logged, no checkpoint. Resume says so and starts over without duplicates
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "train/loss": 9.0}\n{"step": 2, "train/loss": 8.0}\n')
    fresh = run("train_sft.py", *sft_args, "--out-dir", out, "--resume", "1", "--max-steps", "2")
    assert "no checkpoint in" in fresh.stdout and "starting from step 0" in fresh.stdout
    assert metric_steps(out) == [1, 2]
    # a finished run with no step folder: nothing to resume, refused in one line
    done = run("train_sft.py", *sft_args, "--out-dir", out, "--resume", "1", "--max-steps", "2", check=False)
    assert done.returncode != 0 and "finished" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_eval_resume_regrades_a_changed_gold_answer(tmp_path, tiny_dir):
    data = tmp_path / "items.jsonl"
    rows = [{"id": f"s{a}", "problem": f"What is {a}+{a}?", "answer": str(2 * a)} for a in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "eval")
    run("eval.py", "--model", tiny_dir, "--data", str(data), "--out-dir", out, "--max-new-tokens", "4")
    preds = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
    # make the stored completion right for item s0 under a new gold answer, then change the gold answer
    preds[0]["completion"] = "\\boxed{41}"
    with open(os.path.join(out, "predictions.jsonl"), "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in preds)
    rows[0]["answer"] = "41"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = run("eval.py", "--model", tiny_dir, "--data", str(data), "--out-dir", out, "--max-new-tokens", "4")
    assert "generating 0" in again.stdout and "changed" in again.stdout
    stored = {p["id"]: p for p in map(json.loads, open(os.path.join(out, "predictions.jsonl")))}
    assert stored["s0"]["correct"] is True and stored["s0"]["answer"] == "41"
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["items"]["accuracy"] >= 100 / 3 - 1e-9  # s0 now counts as right
