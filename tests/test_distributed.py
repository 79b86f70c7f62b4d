"""torchrun + FSDP2 on CPU (gloo, 2 ranks): parity with one process, sharded checkpoints, resume, empty PAD ranks.

    python -m pytest -q tests/test_distributed.py     # ~2 min: each torchrun launch costs ~10 s of start-up

One rank means the plain `python script.py` run (no FSDP); two ranks mean `torchrun --nproc_per_node=2`. The
same global batch gives the same losses and gradients up to the reordering of fp32 sums (relative bounds below);
a resume on the same rank count repeats the same float operations, so it is compared bit for bit.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from parity import SUM_RTOL, TENSOR_RTOL, equal_trees, rel, rel_norm, within

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")]
# Adam moves an element by ~lr whatever the size of its gradient, so an element whose gradient cancels to within
# rounding of 0 may move either way: weights agree norm-wise relative to the update, not element-wise. Measured
# ~1e-5 (tests/parity_margins.py); a lost micro-batch or a misweighted token flips a large share of the update.
WEIGHT_RTOL = 1e-3


def launch(script, *args, ranks=2, timeout=240):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT,
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))  # 2 ranks x 1 thread on 2 cores
    if ranks == 1:
        cmd = [sys.executable, os.path.join(ROOT, script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               os.path.join(ROOT, script), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout


def weights(folder):
    w = load_file(os.path.join(folder, "model.safetensors"))
    return [w[k] for k in sorted(w)]


def weight_rel(a, b, start):
    """||w_a - w_b|| / ||w_a - w_start||: the two runs' difference relative to the update itself."""
    wa, wb, w0 = weights(a), weights(b), weights(start)
    return rel_norm([x - z for x, z in zip(wa, w0)], [y - z for y, z in zip(wb, w0)])


def first_moments(step_dir, tmp):
    """Adam's exp_avg per parameter from a step folder's resume state: a decayed sum of (1 - beta1) x the clipped
    gradients, linear in them, so it compares gradients where Adam's division has not bent them."""
    resume = os.path.join(step_dir, "resume")
    if os.path.exists(os.path.join(resume, "state.pt")):
        state = torch.load(os.path.join(resume, "state.pt"), weights_only=False)["optimizer"]["state"]
        return [state[i]["exp_avg"] for i in sorted(state)]
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(resume, os.path.join(tmp, "resume.pt"))  # the sharded state, gathered offline
    state = torch.load(os.path.join(tmp, "resume.pt"), weights_only=False)["optim"]["state"]
    return [state[k]["exp_avg"] for k in state]  # parameter order, as the optimizer holds them


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
    # exact: the gathered fp32 weights run the plain model's float ops (rank 0 read + broadcast)
    within("fsdp/logits vs plain", checks["logits_max_diff"], 0.0)
    assert checks["generate_per_token_equal"] and checks["generate_gather_once_equal"]
    assert checks["after_gather_logits_equal"]
    assert checks["reload_logits_equal"]  # written by 2 ranks, reloaded plain: identical logits
    assert "model.safetensors" in checks["folder"] and "meta.json" in checks["folder"]



def test_prompt_once_under_fsdp_equals_rows_whole(tmp_path, tiny_dir):
    """Each distinct prompt once on a sharded model gives the log-probs and full gradients of rows
    whole: ranks with and without repeats (both make the two FSDP calls), T = 1 on one, and rows
    whole on every rank when no rank repeats a prompt; with activation checkpointing too."""
    launch("tests/dist_once_checks.py", tiny_dir, str(tmp_path), timeout=180)
    checks = json.load(open(tmp_path / "once.json"))
    mixed = checks["repeats vs none"]
    assert mixed["row_prompt"] == [True, False] and mixed["vision_grads"]
    assert checks["T=1 vs longer"]["T"] == [8, 1]
    # no rank repeats a prompt: every rank runs rows whole, the same float operations both times
    none = checks.pop("none vs none")
    assert none["logps"] == 0.0 and none["grads"] == 0.0
    assert len(checks) == 5  # and activation checkpointing (ReplayCache): 3 micro-batches
    for name, c in checks.items():
        # the prompt's attention runs in another call and batch shape: ~1e-6 of rounding on
        # log-probs <= ~10, as in test_rollout.py; a wrong cache row or position moves them >= 1e-2
        within(f"fsdp prompt once/{name}/log-probs vs rows whole", c["logps"], 1e-5)
        # G rows' gradients reach the prompt as one sum instead of G: other groupings, per tensor
        within(f"fsdp prompt once/{name}/gradients vs rows whole", c["grads"], TENSOR_RTOL)


def test_sft_one_vs_two_ranks_and_resume(tmp_path, tiny_dir, toy_dir):
    args = ["--model", tiny_dir, "--data", os.path.join(toy_dir, "sft_train.jsonl"), "--val-data",
            os.path.join(toy_dir, "sft_val.jsonl"), "--lr", "2e-3", "--batch-size", "8", "--grad-accum", "2",
            "--max-steps", "3", "--save-every", "2", "--eval-every", "2", "--max-length", "128", "--epochs", "1"]
    one, two, resumed = str(tmp_path / "one"), str(tmp_path / "two"), str(tmp_path / "resumed")
    launch("train_sft.py", *args, "--out-dir", one, ranks=1)
    stdout = launch("train_sft.py", *args, "--out-dir", two, ranks=2)
    # dist.compute_cleanup leaves by os._exit (pitfall 24): output flushed, the out-dir lock released by hand
    assert "done: " in stdout and not os.path.exists(os.path.join(two, ".lock"))
    loss1, loss2 = train_records(one, "train/loss"), train_records(two, "train/loss")
    assert sorted(loss1) == sorted(loss2) == [1, 2, 3]
    within("sft/loss 1 vs 2 ranks", max(rel(loss1[k], loss2[k]) for k in loss1), SUM_RTOL)
    m1, m2 = (first_moments(os.path.join(d, "step_000002"), str(tmp_path)) for d in (one, two))
    within("sft/adam m 1 vs 2 ranks", rel_norm(m1, m2), SUM_RTOL)
    within("sft/weights 1 vs 2 ranks", weight_rel(os.path.join(one, "final"), os.path.join(two, "final"), tiny_dir),
           WEIGHT_RTOL)
    # the 2-rank resume state is sharded (one file per rank, no full optimizer anywhere)
    resume_files = sorted(os.listdir(os.path.join(two, "step_000002", "resume")))
    assert resume_files == [".metadata", "__0_0.distcp", "__1_0.distcp", "extra_rank0.pt", "extra_rank1.pt"]
    crash_after(two, resumed, 2)
    stdout = launch("train_sft.py", *args, "--out-dir", resumed, "--resume", "1", ranks=2)
    assert "at step 2" in stdout
    # exact: the resumed run repeats the same float operations on the same rank count
    assert train_records(resumed, "train/loss")[3] == loss2[3]
    within("sft/resume 2 ranks", equal_trees(weights(os.path.join(two, "final")),
                                             weights(os.path.join(resumed, "final"))), 0.0)

GRPO = ["--max-new-tokens", "6", "--prompts-per-step", "4", "--group-size", "4", "--generate-batch-seqs", "4",
        "--micro-batch-size", "3", "--lr", "1e-3", "--entropy-coef", "0.05", "--entropy-warmup", "0", "--val-data"]


def test_grpo_trl_one_vs_two_ranks_with_an_empty_pad_rank_and_resume(tmp_path, tiny_dir, toy_dir):
    # ratio 1/16 of 16 rollouts: PAD selects exactly one sequence, so one rank trains on nothing and must still
    # run the same forwards (the reference model's and the policy's) as the other, or gloo hangs.
    args = ["--stage", "trl", "--model", tiny_dir, "--data", os.path.join(toy_dir, "text_train.jsonl"),
            "--max-steps", "3", "--pad", "random", "--pad-set", "ratio=0.0625", "--save-every", "1", *GRPO]
    one, two, resumed = str(tmp_path / "one"), str(tmp_path / "two"), str(tmp_path / "resumed")
    launch("train_grpo.py", *args, "--out-dir", one, ranks=1)
    launch("train_grpo.py", *args, "--out-dir", two, ranks=2, timeout=180)
    assert train_records(two, "pad/selected") == {1: 1, 2: 1, 3: 1}
    within("trl/weights 1 vs 2 ranks", weight_rel(os.path.join(one, "final"), os.path.join(two, "final"), tiny_dir),
           WEIGHT_RTOL)
    kl1, kl2 = train_records(one, "train/kl"), train_records(two, "train/kl")
    # update 0 has entropy coef 0 (released schedule) and no reward: the policy first moves in step 2
    assert kl1[3] > 0
    within("trl/kl 1 vs 2 ranks", rel(kl1[3], kl2[3]), SUM_RTOL)
    crash_after(two, resumed, 1)
    assert "at step 1" in launch("train_grpo.py", *args, "--out-dir", resumed, "--resume", "1", ranks=2)
    within("trl/resume 2 ranks", equal_trees(weights(os.path.join(two, "final")),
                                             weights(os.path.join(resumed, "final"))), 0.0)  # exact, as for SFT

def test_grpo_mrl_one_vs_two_ranks_uneven_selection(tmp_path, tiny_dir, toy_dir):
    # the released preset samples 1.5 N with replacement: duplicates, and unequal counts on the two ranks; two
    # optimizer steps per rollout step, so old log-probs and clipping come into play
    args = ["--stage", "mrl", "--model", tiny_dir, "--data", os.path.join(toy_dir, "mm_train.jsonl"),
            "--max-steps", "2", "--save-every", "1", "--pad", "code", "--pad-set", "t_low=-1",
            "weighting=uniform", "--optim-batch-seqs", "12", *GRPO]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch("train_grpo.py", *args, "--out-dir", one, ranks=1)
    launch("train_grpo.py", *args, "--out-dir", two, ranks=2, timeout=180)
    assert train_records(two, "pad/selected")[1] == 24 and train_records(two, "train/updates")[1] == 2
    for key in ("train/grad_norm", "train/ratio_mean", "train/entropy"):
        a, b = train_records(one, key), train_records(two, key)
        within(f"mrl/{key} 1 vs 2 ranks", max(rel(a[k], b[k]) for k in a), SUM_RTOL)
    m1, m2 = (first_moments(os.path.join(d, "step_000001"), str(tmp_path)) for d in (one, two))
    within("mrl/adam m 1 vs 2 ranks", rel_norm(m1, m2), SUM_RTOL)
    within("mrl/weights 1 vs 2 ranks", weight_rel(os.path.join(one, "final"), os.path.join(two, "final"), tiny_dir),
           WEIGHT_RTOL)

def test_grpo_microbatch_loss_one_vs_two_ranks(tmp_path, tiny_dir, toy_dir):
    # --loss-agg microbatch (released): a token mean per micro-batch / their count, averaged over
    # ranks. With every rollout trained (--pad none) and 4-sequence micro-batches, 1 process runs the
    # same 4 micro-batches as 2 ranks' 2 each: (1/4) sum = (1/2) sum over ranks of (1/2) sum
    args = ["--stage", "mrl", "--model", tiny_dir, "--data", os.path.join(toy_dir, "mm_train.jsonl"),
            "--max-steps", "2", "--save-every", "1", "--pad", "none", "--loss-agg", "microbatch",
            *GRPO, "--micro-batch-size", "4"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch("train_grpo.py", *args, "--out-dir", one, ranks=1)
    launch("train_grpo.py", *args, "--out-dir", two, ranks=2, timeout=180)
    assert train_records(two, "train/micro_batches")[1] == 4
    for key in ("train/grad_norm", "train/entropy"):
        a, b = train_records(one, key), train_records(two, key)
        within(f"microbatch/{key} 1 vs 2 ranks", max(rel(a[k], b[k]) for k in a), SUM_RTOL)
    m1, m2 = (first_moments(os.path.join(d, "step_000001"), str(tmp_path)) for d in (one, two))
    within("microbatch/adam m 1 vs 2 ranks", rel_norm(m1, m2), SUM_RTOL)
    within("microbatch/weights 1 vs 2 ranks", weight_rel(os.path.join(one, "final"),
                                                         os.path.join(two, "final"), tiny_dir),
           WEIGHT_RTOL)


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
    # generate's fp32 scores vs the sharded log-prob forward: other batch shapes, so other GEMM blockings; log-probs
    # of size <= ~10 carry ~1e-6 of rounding, and a wrong temperature or mask moves them by >= 1e-2
    within("fsdp/generate scores vs log-prob forward", max(two["worst"]), 1e-5)
