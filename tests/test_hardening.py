"""Nothing lost when runs collide, no silent wrong training, inputs checked first.

    python -m pytest -q tests/test_hardening.py -m "not slow"  # rule table, lock, paths (seconds)
    python -m pytest -q tests/test_hardening.py                # + real runs (~1 min)

The six data-loss cases of the issue, and where each is shown fixed:
1. two runs into one --out-dir: test_two_runs_started_together_into_one_folder, the lock tests
2. SFT on a non-finite gradient: test_sft_diverging_stops_in_one_line_without_final
3. --max-steps below the checkpoint: test_resume_refuses_max_steps_below_the_checkpoint, and the
   end of test_two_runs_started_together_into_one_folder
4. image paths tried against the working directory:
   test_image_paths_resolve_from_the_data_folder_only
5. two --val-data files keyed alike: test_held_out_sets_get_unique_labels
6. --clip-grad -1: test_flag_rules_table, and the matrix of tests/user_errors.py
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from nanorevisual import checkpoint, common
from nanorevisual.benchmarks import load_benchmark
from nanorevisual.common import FLAG_RULES, UserError, check_flags, in_range, nonfinite_streak
from nanorevisual.data import load_rl_rows, unique_labels
from nanorevisual.files import DataError, load_image, read_records
from nanorevisual.model import check_model_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEAD_PID = 4194305  # above Linux's largest pid_max: never a live process
INF, NAN = float("inf"), float("nan")


# ------------------------------------------------------------------------------------------------
# flags: one table of rules


def refused(**flags):
    """The one-line message check_flags gives for these flag values, or None."""
    try:
        check_flags(argparse.Namespace(**flags))
    except UserError as e:
        return str(e)
    return None


def test_flag_rules_table():
    assert in_range(0.5, "(0, 1]") and in_range(1, "(0, 1]") and not in_range(0, "(0, 1]")
    assert not any(in_range(v, "(0, inf)") for v in (NAN, INF, -INF, 0.0))
    assert in_range(INF, "(-inf, inf]") and in_range(-INF, "[-inf, inf)")
    assert not in_range(NAN, "[-inf, inf)")
    assert refused(clip_grad=-1.0) == "--clip-grad must be > 0 (finite), got -1.0"  # issue case 6
    assert refused(lr=INF) == "--lr must be > 0 (finite), got inf"
    assert refused(top_p=0.0) == "--top-p must be in (0, 1], got 0.0"
    assert refused(adam_beta2=1.0) == "--adam-beta2 must be in [0, 1), got 1.0"
    assert refused(max_steps=0) == "--max-steps must be >= 1, got 0"
    assert refused(resume=2) == "--resume must be in [0, 1], got 2"
    assert refused(temperature=0.0) and refused(epochs=INF) and refused(pad_t_low=NAN)
    assert refused(min_pixels=5000, max_pixels=4000) == \
        "--min-pixels must be <= --max-pixels, got 5000 and 4000"
    assert "1 + --clip-high" in refused(dual_clip=1.2, clip_high=0.25)
    assert refused(pad_t_high=INF, pad_t_low=-INF, lr=1e-6, max_steps=None) is None  # no upper cut
    check_flags(argparse.Namespace(temperature=0.0), temperature="[0, inf)")  # eval: 0 is greedy


@pytest.mark.parametrize("script", ["train_sft.py", "train_grpo.py", "eval.py"])
def test_every_numeric_flag_has_a_rule(script):
    source = open(os.path.join(ROOT, script)).read()
    numeric = re.findall(r'(?:add_argument|add)\("--([\w-]+)"[^)]*type=(?:int|float)', source)
    assert len(numeric) >= 8
    assert [f for f in numeric if f.replace("-", "_") not in FLAG_RULES] == []


def test_nonfinite_streak_stops_a_diverged_run():
    streak = 0
    for norm in (1.0, NAN, 2.0, INF, NAN):  # a lone bad step is skipped, not fatal
        streak = nonfinite_streak(norm, streak)
    assert streak == 2
    with pytest.raises(UserError, match="non-finite gradient norm"):
        nonfinite_streak(NAN, streak)


# ------------------------------------------------------------------------------------------------
# output folders: lock, temp folders, resume


def test_lock_refuses_a_held_folder_takes_over_a_stale_one_and_releases(tmp_path, capsys):
    out = str(tmp_path)
    release = checkpoint.lock_out_dir(out)
    held = json.load(open(tmp_path / ".lock"))
    assert held == {"pid": os.getpid(), "host": socket.gethostname()}
    with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} on "):
        checkpoint.lock_out_dir(out)  # a second open file description: the flock is taken
    release()
    assert not os.path.exists(tmp_path / ".lock")
    # a killed run leaves its file, but the kernel dropped its flock: taken over, with a note
    (tmp_path / ".lock").write_text(json.dumps({"pid": DEAD_PID, "host": "gone"}))
    release = checkpoint.lock_out_dir(out)
    assert f"taking over the lock of pid {DEAD_PID}" in capsys.readouterr().out
    assert json.load(open(tmp_path / ".lock"))["pid"] == os.getpid()
    release()
    release()  # idempotent: atexit and the one-line error exit both call it


def test_claim_out_dir_refuses_unwritable_folders(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    for bad, why in ((tmp_path / "afile", "a file of that name exists"),
                     (tmp_path / "afile" / "run", "Not a directory")):
        with pytest.raises(UserError, match=f"--out-dir {bad}: cannot create or write to it"
                                            f" \\({why}"):
            checkpoint.claim_out_dir(str(bad))
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(UserError, match="cannot create or write"):
            checkpoint.claim_out_dir(str(tmp_path / "ro"))
    monkeypatch.setenv("RANK", "1")  # under torchrun only global rank 0 creates and locks it
    assert checkpoint.claim_out_dir(str(tmp_path / "other")) is None
    assert not (tmp_path / "other").exists()


def test_temp_folders_are_per_process_and_only_dead_ones_are_removed(tmp_path):
    tmp = checkpoint.temp_dir_for(str(tmp_path / "step_000002"))
    assert tmp == str(tmp_path / f".tmp-step_000002-{os.getpid()}")
    dead = tmp_path / f".tmp-step_000002-{DEAD_PID}"
    live = tmp_path / f".tmp-step_000004-{os.getppid()}"  # another live process's save under way
    dead.mkdir(), live.mkdir()
    checkpoint.claim_out_dir(str(tmp_path))()
    assert not dead.exists() and live.exists()


def test_resume_refuses_max_steps_below_the_checkpoint(tmp_path):
    (tmp_path / "step_000007").mkdir()
    meta = {"step": 7, "user_config": {"lr": 1.0}}
    (tmp_path / "step_000007" / "meta.json").write_text(json.dumps(meta))

    def prepare(total_steps):
        return checkpoint.prepare_out_dir(str(tmp_path), resume=1, overwrite=0,
                                          user_config={"lr": 1.0}, total_steps=total_steps)

    with pytest.raises(UserError, match="--max-steps 2 is below the checkpoint's step 7"):
        prepare(2)
    assert prepare(7).endswith("step_000007")


def test_held_out_sets_get_unique_labels():
    assert unique_labels(["a/val.jsonl", "b/val.jsonl"]) == ["a-val", "b-val"]  # none dropped
    assert unique_labels(["d/mm_val.jsonl", "d/text_val.jsonl"]) == ["mm_val", "text_val"]
    assert unique_labels(["x/a/v.jsonl", "y/a/v.jsonl", "t.json"]) == ["x-a-v", "y-a-v", "t"]
    with pytest.raises(DataError, match="cannot be told apart"):
        unique_labels(["a/val.jsonl", "./a/val.jsonl"])


# ------------------------------------------------------------------------------------------------
# files: image paths, full decoding, encoding and nesting errors by line


def test_image_paths_resolve_from_the_data_folder_only(tmp_path, monkeypatch):
    work, data_dir = tmp_path / "work", tmp_path / "data"
    work.mkdir(), data_dir.mkdir()
    Image.new("RGB", (40, 40), "red").save(work / "pic.png")  # same name in the working directory
    monkeypatch.chdir(work)
    row = {"problem": "<image>colour?", "answer": "red", "images": ["pic.png"]}
    data = str(data_dir / "rl.jsonl")
    (data_dir / "rl.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="rl.jsonl:1: field 'images': image not found: pic.png"):
        load_rl_rows(data)
    with pytest.raises(ValueError, match="image not found: pic.png"):
        load_benchmark("jsonl", data)
    Image.new("RGB", (20, 20), "blue").save(data_dir / "pic.png")
    ours = [str(data_dir / "pic.png")]  # the data file's image, not the working directory's
    assert load_rl_rows(data)[0]["images"] == ours
    assert load_benchmark("jsonl", data)[0]["images"] == ours
    assert load_image(str(work / "pic.png"), str(data_dir)) == str(work / "pic.png")  # absolute


def test_truncated_jpeg_is_refused_at_validation(tmp_path):
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:1500])
    with Image.open(tmp_path / "cut.jpg") as image:
        image.verify()  # what validation used to do: passes
    with pytest.raises(ValueError, match="undecodable image cut.jpg"):
        load_image("cut.jpg", str(tmp_path))


def test_readers_name_the_file_and_line_of_bad_bytes_and_deep_nesting(tmp_path):
    ok = json.dumps({"problem": "1+1?", "answer": "2"}).encode() + b"\n"
    cases = {"latin1.jsonl": (ok * 2 + b'{"problem": "caf\xe9"}\n', ":3: not UTF-8 text"),
             "nested.jsonl": (ok + b"[" * 100000 + b"\n", ":2: JSON nested too deeply"),
             "nested.json": (ok + b"[" * 100000 + b"\n", ":2: JSON nested too deeply"),
             "latin1.csv": (b"problem,answer\n1+1?,2\ncaf\xe9,3\n", ":3: not UTF-8 text")}
    for name, (raw, message) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / name}{message}")):
            read_records(str(tmp_path / name))
    path = tmp_path / "mathvista.json"
    path.write_bytes(b'[{"pid": "1", "question": "caf\xe9?", "answer": "1"}]')
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: not UTF-8")):
        load_benchmark("mathvista", str(path))


# ------------------------------------------------------------------------------------------------
# models


def test_model_folders_are_checked_and_hub_ids_pass(tmp_path, tiny_dir, qwen_dir, monkeypatch):
    assert check_model_path(tiny_dir) == tiny_dir
    assert check_model_path(qwen_dir) == qwen_dir  # bf16 shards + index
    config = json.load(open(os.path.join(tiny_dir, "config.json")))
    for name, cfg, weights, message in (("noweights", config, False, "no weight files"),
                                        ("llama", {"model_type": "llama"}, True, "'llama'"),
                                        ("broken", "{not json", True, "unreadable config.json")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
        if weights:
            (folder / "model.safetensors").write_bytes(b"x")
        with pytest.raises(UserError, match=re.escape(message)):
            check_model_path(str(folder))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub_id = "Qwen/Qwen2.5-VL-7B-Instruct"
    assert check_model_path(hub_id) == hub_id  # passed through to from_pretrained
    with pytest.raises(UserError, match="not a hub id"):  # the scripts resolve 'tiny' themselves
        check_model_path("tiny")


# ------------------------------------------------------------------------------------------------
# real runs


def start(script, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def sft_args(tiny_dir, toy_dir):
    return ["--model", tiny_dir, "--data", os.path.join(toy_dir, "sft_train.jsonl"),
            "--batch-size", "8", "--max-length", "96", "--eval-every", "0"]


def metric_steps(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if "train/loss" in line]


def final_step(out_dir):
    return json.load(open(os.path.join(out_dir, "final", "meta.json")))["step"]


@pytest.mark.slow
def test_two_runs_started_together_into_one_folder(tmp_path, sft_args):
    out = str(tmp_path / "run")
    args = [*sft_args, "--out-dir", out, "--max-steps", 6, "--save-every", 2]
    (rc_a, _, err_a), (rc_b, _, err_b) = map(finish, [start("train_sft.py", *args) for _ in "ab"])
    assert sorted([rc_a, rc_b]) == [0, 2], (err_a[-2000:], err_b[-2000:])
    refused_run = (err_a if rc_a else err_b).strip().splitlines()
    assert len(refused_run) == 1
    assert re.match(rf"error: {out}: in use by another run \(pid \d+ on ", refused_run[0])
    assert metric_steps(out) == [1, 2, 3, 4, 5, 6]  # one run's rows, none interleaved
    assert sorted(os.listdir(out)) == ["final", "metrics.jsonl", "step_000002", "step_000004"]
    assert final_step(out) == 6  # and no lock or temp folder left
    # issue case 3: --max-steps before the checkpoint's step is refused, nothing written
    rc, _, err = finish(start("train_sft.py", *sft_args, "--out-dir", out, "--resume", 1,
                              "--max-steps", 2))
    assert rc == 2 and "--max-steps 2 is below the checkpoint's step 4" in err
    assert "Traceback" not in err and final_step(out) == 6


@pytest.mark.slow
def test_killed_run_leaves_a_lock_the_next_run_takes_over(tmp_path, sft_args):
    out = str(tmp_path / "run")
    proc = start("train_sft.py", *sft_args, "--out-dir", out, "--max-steps", 400)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(out, "metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)  # the lock comes before the model loads, metrics after: the run holds it
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert json.load(open(os.path.join(out, ".lock")))["pid"] == proc.pid
    rc, stdout, err = finish(start("train_sft.py", *sft_args, "--out-dir", out, "--max-steps", 2,
                                   "--overwrite", 1))
    assert rc == 0 and f"taking over the lock of pid {proc.pid}" in stdout, err[-2000:]
    assert not os.path.exists(os.path.join(out, ".lock")) and metric_steps(out) == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_grpo.py", "eval.py"])
def test_a_held_folder_is_refused_before_the_model_loads(tmp_path, tiny_dir, toy_dir, script):
    out = str(tmp_path / "run")
    os.makedirs(out)
    release = checkpoint.lock_out_dir(out)  # this test process holds it
    data = os.path.join(toy_dir, "mm_val.jsonl")
    extra = ["--val-data"] if script == "train_grpo.py" else []
    rc, _, err = finish(start(script, "--model", tiny_dir, "--data", data, *extra,
                              "--out-dir", out))
    release()
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    assert rc == 2 and err.strip() == (f"error: {out}: in use by another run ({holder}); wait for "
                                       "it to end, or pass another --out-dir")
    assert os.listdir(out) == []


@pytest.mark.slow
def test_sft_diverging_stops_in_one_line_without_final(tmp_path, sft_args):
    out = str(tmp_path / "run")
    # lr 1e30 overflows the weights in one step; every later gradient is NaN: skipped, then a stop
    rc, _, err = finish(start("train_sft.py", *sft_args, "--out-dir", out, "--max-steps", 20,
                              "--lr", 1e30))
    last = err.strip().splitlines()[-1]  # after the model's loading bar, one error line
    assert rc == 2 and err.count("error:") == 1 and "Traceback" not in err, err[-2000:]
    steps = common.MAX_NONFINITE_STEPS
    assert last.startswith(f"error: the last {steps} optimizer steps had a non-finite")
    assert not os.path.exists(os.path.join(out, "final")) and metric_steps(out) == [1, 2, 3]


@pytest.mark.slow
def test_torchrun_rank0_alone_locks_and_refuses_before_the_model_loads(tmp_path, sft_args):
    out = str(tmp_path / "run")
    os.makedirs(out)
    release = checkpoint.lock_out_dir(out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               os.path.join(ROOT, "train_sft.py"), *sft_args, "--out-dir", out, "--max-steps", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    release()
    log = done.stdout + done.stderr
    assert done.returncode != 0 and "in use by another run" in log
    assert log.count("error:") == 1  # rank 0 alone takes (and reports) the lock
    assert "Loading weights" not in log and os.listdir(out) == []
