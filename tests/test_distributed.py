"""torchrun + FSDP2 on CPU (gloo, 2 ranks): parity with one process, sharded checkpoints, resume, empty PAD ranks.

    python -m pytest -q tests/test_distributed.py     # ~2-3 min: each torchrun launch costs ~10 s of start-up

One rank means the plain `python script.py` run (no FSDP); two ranks mean `torchrun --nproc_per_node=2`. The same
global batch must give the same losses and the same updated weights (1e-5).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def launch(script, *args, ranks=2, timeout=240):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    if ranks == 1:
        cmd = [sys.executable, os.path.join(ROOT, script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               os.path.join(ROOT, script), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout


def max_weight_diff(a, b):
    wa, wb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def train_records(out_dir, key):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["step"]: r[key] for r in map(json.loads, f) if key in r}


def crash_after(src, dst, step):
    """Keep what a run had written when it 'crashed' right after saving step_<step>."""
    os.makedirs(dst)
    shutil.copytree(os.path.join(src, f"step_{step:06d}"), os.path.join(dst, f"step_{step:06d}"))
    with open(os.path.join(src, "metrics.jsonl")) as f, open(os.path.join(dst, "metrics.jsonl"), "w") as g:
        g.writelines(line for line in f if json.loads(line)["step"] <= step)


def test_fsdp_generate_logits_and_checkpoint(tmp_path, tiny_dir):
    launch("tests/dist_checks.py", tiny_dir, str(tmp_path))
    checks = json.load(open(tmp_path / "checks.json"))
    assert checks["logits_max_diff"] == 0.0  # rank 0 read + broadcast == the plain model
    assert checks["generate_per_token_equal"] and checks["generate_gather_once_equal"]
    assert checks["after_gather_logits_equal"]
    assert checks["reload_logits_equal"]  # written by 2 ranks, reloaded plain: identical logits
    assert "model.safetensors" in checks["folder"] and "meta.json" in checks["folder"]


def test_sft_one_vs_two_ranks_and_resume(tmp_path, tiny_dir, toy_dir):
    args = ["--model", tiny_dir, "--data", os.path.join(toy_dir, "sft_train.jsonl"), "--val-data",
            os.path.join(toy_dir, "sft_val.jsonl"), "--lr", "2e-3", "--batch-size", "8", "--grad-accum", "2",
            "--max-steps", "3", "--save-every", "2", "--eval-every", "2", "--max-length", "128", "--epochs", "1"]
    one, two, resumed = str(tmp_path / "one"), str(tmp_path / "two"), str(tmp_path / "resumed")
    launch("train_sft.py", *args, "--out-dir", one, ranks=1)
    launch("train_sft.py", *args, "--out-dir", two, ranks=2)
    loss1, loss2 = train_records(one, "train/loss"), train_records(two, "train/loss")
    assert sorted(loss1) == sorted(loss2) == [1, 2, 3]
    for step in loss1:
        assert abs(loss1[step] - loss2[step]) < 1e-5, (step, loss1[step], loss2[step])
    assert max_weight_diff(os.path.join(one, "final"), os.path.join(two, "final")) < 1e-5
    # the 2-rank resume state is sharded (one file per rank, no full optimizer anywhere)
    resume_files = sorted(os.listdir(os.path.join(two, "step_000002", "resume")))
    assert resume_files == [".metadata", "__0_0.distcp", "__1_0.distcp", "extra_rank0.pt", "extra_rank1.pt"]
    crash_after(two, resumed, 2)
    stdout = launch("train_sft.py", *args, "--out-dir", resumed, "--resume", "1", ranks=2)
    assert "at step 2" in stdout
    assert abs(train_records(resumed, "train/loss")[3] - loss2[3]) < 1e-6
    assert max_weight_diff(os.path.join(two, "final"), os.path.join(resumed, "final")) < 1e-6


GRPO = ["--max-new-tokens", "6", "--prompts-per-step", "4", "--group-size", "4", "--generate-batch-seqs", "4",
        "--micro-batch-size", "3", "--lr", "1e-3", "--entropy-coef", "0.05", "--entropy-warmup", "0", "--val-data"]


def test_grpo_trl_one_vs_two_ranks_with_an_empty_pad_rank_and_resume(tmp_path, tiny_dir, toy_dir):
    # ratio 1/16 of 16 rollouts: PAD selects exactly one sequence, so one rank trains on nothing and must still
    # run the same forwards (the reference model's and the policy's) as the other, or gloo hangs.
    args = ["--stage", "trl", "--model", tiny_dir, "--data", os.path.join(toy_dir, "text_train.jsonl"),
            "--max-steps", "3", "--pad", "random", "--pad-ratio", "0.0625", "--save-every", "1", *GRPO]
    one, two, resumed = str(tmp_path / "one"), str(tmp_path / "two"), str(tmp_path / "resumed")
    launch("train_grpo.py", *args, "--out-dir", one, ranks=1)
    launch("train_grpo.py", *args, "--out-dir", two, ranks=2, timeout=180)
    assert train_records(two, "pad/selected") == {1: 1, 2: 1, 3: 1}
    assert max_weight_diff(os.path.join(one, "final"), os.path.join(two, "final")) < 1e-5
    kl1, kl2 = train_records(one, "train/kl"), train_records(two, "train/kl")
    # update 0 has entropy coef 0 (released schedule) and no reward: the policy first moves in step 2
    assert kl1[3] > 0 and abs(kl1[3] - kl2[3]) < 1e-6
    crash_after(two, resumed, 1)
    assert "at step 1" in launch("train_grpo.py", *args, "--out-dir", resumed, "--resume", "1", ranks=2)
    assert max_weight_diff(os.path.join(two, "final"), os.path.join(resumed, "final")) < 1e-6


def test_grpo_mrl_one_vs_two_ranks_uneven_selection(tmp_path, tiny_dir, toy_dir):
    # the released preset samples 1.5 N with replacement: duplicates, and unequal counts on the two ranks; two
    # optimizer steps per rollout step, so old log-probs and clipping come into play
    args = ["--stage", "mrl", "--model", tiny_dir, "--data", os.path.join(toy_dir, "mm_train.jsonl"),
            "--max-steps", "1", "--pad", "code", "--pad-t-low", "-1", "--pad-weighting", "uniform",
            "--optim-batch-seqs", "12", *GRPO]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch("train_grpo.py", *args, "--out-dir", one, ranks=1)
    launch("train_grpo.py", *args, "--out-dir", two, ranks=2, timeout=180)
    assert train_records(two, "pad/selected") == {1: 24} and train_records(two, "train/updates") == {1: 2}
    assert abs(train_records(one, "train/grad_norm")[1] - train_records(two, "train/grad_norm")[1]) < 1e-5
    assert abs(train_records(one, "train/ratio_mean")[1] - train_records(two, "train/ratio_mean")[1]) < 1e-6
    assert max_weight_diff(os.path.join(one, "final"), os.path.join(two, "final")) < 1e-5


def test_rollouts_on_a_qwen_config_checkpoint_equal_one_process(tmp_path, qwen_dir):
    """The checkpoint's generation_config.json (repetition penalty 1.3, top-k 1) must not reach any rank's sampling:
    2 ranks sample what one process samples, and generate's scores equal the sharded log-prob forward."""
    from dist_rollout_checks import ROLLOUT, prompts

    from nanorevisual.model import load_model_and_processor
    from nanorevisual.processor import vision_token_ids
    from nanorevisual.rollout import generate_rollouts
    launch("tests/dist_rollout_checks.py", qwen_dir, str(tmp_path))
    two = json.load(open(tmp_path / "rollouts.json"))
    model, processor = load_model_and_processor(qwen_dir)
    model.eval()
    one = generate_rollouts(model, processor, prompts(), suppress_ids=vision_token_ids(processor), **ROLLOUT)
    assert two["ids"] == [s["completion_ids"].tolist() for s in one]  # shared prefill on both sides
    repeated = generate_rollouts(model, processor, prompts(), suppress_ids=vision_token_ids(processor),
                                 share_prefill=False, **ROLLOUT)  # generate's own G-fold prompt expansion
    assert two["ids"] == [s["completion_ids"].tolist() for s in repeated]
    assert max(two["worst"]) <= 1e-5, two["worst"]
