"""The topologies of a real run, on CPU (gloo, tiny model): 8 ranks on one node, and 2 nodes of 2.

    python -m pytest -q tests/test_topologies.py     # ~4 min on 2 cores: 8 ranks share them

Global rank (RANK) decides file writing, data shards and seeds; local rank (LOCAL_RANK) only the
device. A script that used the local rank would write twice from two "nodes" sharing one folder,
and sample the same rows on ranks 0 and 2, which parity with one process catches.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from parity import SUM_RTOL, equal_trees, rel, within
from test_distributed import (GRPO, ROOT, WEIGHT_RTOL, crash_after, launch, train_records,
                              weight_rel, weights)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch_two_nodes(script, *args, per_node=2, timeout=300):
    """Two torchrun agents on this machine, as two nodes meeting at one rendezvous endpoint."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    endpoint = f"localhost:{free_port()}"
    cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
             f"--nproc_per_node={per_node}", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
             "--rdzv-id", "topologies", os.path.join(ROOT, script), *args] for node in (0, 1)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=ROOT) for c in cmds]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-3000:] + err[-5000:]
    return [out for out, _ in outs]


def metric_steps(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [r["step"] for r in map(json.loads, f) if "train/grad_norm" in r]


def predictions(out_dir):
    with open(os.path.join(out_dir, "predictions.jsonl")) as f:
        return sorted((r["benchmark"], r["id"], r["sample"], r["completion"]) for r in map(json.loads, f))


def test_two_nodes_train_save_resume_and_evaluate(tmp_path, tiny_dir, toy_dir):
    args = ["--stage", "mrl", "--model", tiny_dir, "--data", os.path.join(toy_dir, "mm_train.jsonl"),
            "--max-steps", "3", "--save-every", "1", "--pad", "none", *GRPO, "--micro-batch-size", "4"]
    one, nodes, resumed = (str(tmp_path / name) for name in ("one", "nodes", "resumed"))
    launch("train_grpo.py", *args, "--out-dir", one, ranks=1)
    outs = launch_two_nodes("train_grpo.py", *args, "--out-dir", nodes)
    # one writer: rank 0 of node 0 prints and writes; node 1's local rank 0 neither
    assert "step    3/3" in outs[0] and outs[1].strip() == ""
    assert metric_steps(nodes) == [1, 2, 3]  # each record once
    assert sorted(os.listdir(os.path.join(nodes, "step_000002", "resume"))) == [
        ".metadata", *[f"__{r}_0.distcp" for r in range(4)], *[f"extra_rank{r}.pt" for r in range(4)]]
    crash_after(nodes, resumed, 2)
    outs = launch_two_nodes("train_grpo.py", *args, "--out-dir", resumed, "--resume", "1")
    assert "at step 2" in outs[0] and metric_steps(resumed) == [1, 2, 3]
    # exact: the same float operations on the same 4 ranks
    within("2 nodes/resume", equal_trees(weights(os.path.join(nodes, "final")),
                                         weights(os.path.join(resumed, "final"))), 0.0)
    # 4 ranks (data shards and sampling seeds by global rank) against one process, resumed or not
    a, b = train_records(one, "train/grad_norm"), train_records(nodes, "train/grad_norm")
    within("2 nodes/grad_norm vs 1 process", max(rel(a[k], b[k]) for k in a), SUM_RTOL)
    within("2 nodes/weights vs 1 process", weight_rel(os.path.join(one, "final"),
                                                      os.path.join(nodes, "final"), tiny_dir),
           WEIGHT_RTOL)
    evals = {}
    for name, model in (("one", one), ("nodes", nodes)):
        evals[name] = str(tmp_path / f"eval_{name}")
        ev = ["--model", os.path.join(model, "final"), "--data", os.path.join(toy_dir, "mm_val.jsonl"),
              "--max-new-tokens", "6", "--out-dir", evals[name]]
        if name == "one":
            launch("eval.py", *ev, ranks=1)
        else:
            launch_two_nodes("eval.py", *ev)
    # greedy decoding of weights within ~1e-6 of each other: the same tokens unless a logit tie is
    # that close (not on this model; a wrong shard or a duplicated item changes the list)
    assert predictions(evals["one"]) == predictions(evals["nodes"])
    assert not [f for f in os.listdir(evals["nodes"]) if f.startswith("predictions.rank")]


def test_whole_recipe_on_eight_ranks_equals_one_process(tmp_path, tiny_dir, toy_dir):
    """SFT -> mrl -> trl -> eval, each stage from the previous stage's final/, 8 ranks vs one process."""
    sft = ["--data", os.path.join(toy_dir, "sft_train.jsonl"), "--val-data",
           os.path.join(toy_dir, "sft_val.jsonl"), "--eval-every", "0", "--lr", "2e-3",
           "--batch-size", "16", "--grad-accum", "1", "--max-steps", "2", "--max-length", "128"]
    # 3 steps: step 1 has no entropy bonus and no reward on a random model, so the policy first
    # moves in step 2 and the KL to the reference is first nonzero in step 3
    grpo = ["--max-steps", "3", "--pad", "none", *GRPO, "--prompts-per-step", "8",
            "--micro-batch-size", "4"]
    runs = {}
    for ranks in (1, 8):
        d = {k: str(tmp_path / f"{k}{ranks}") for k in ("sft", "mrl", "trl", "eval")}
        launch("train_sft.py", "--model", tiny_dir, *sft, "--out-dir", d["sft"], ranks=ranks,
               timeout=600)
        launch("train_grpo.py", "--stage", "mrl", "--model", os.path.join(d["sft"], "final"), "--data",
               os.path.join(toy_dir, "mm_train.jsonl"), *grpo, "--out-dir", d["mrl"], ranks=ranks,
               timeout=600)
        launch("train_grpo.py", "--stage", "trl", "--model", os.path.join(d["mrl"], "final"), "--data",
               os.path.join(toy_dir, "text_train.jsonl"), *grpo, "--out-dir", d["trl"], ranks=ranks,
               timeout=600)
        launch("eval.py", "--model", os.path.join(d["trl"], "final"), "--data",
               os.path.join(toy_dir, "mm_val.jsonl"), "--max-new-tokens", "6", "--out-dir", d["eval"],
               ranks=ranks, timeout=600)
        runs[ranks] = d
    # the parity tests' bounds (tests/test_distributed.py): losses and gradient norms are sums in
    # another order (SUM_RTOL); weights agree norm-wise relative to their update (WEIGHT_RTOL)
    for stage, key in (("sft", "train/loss"), ("mrl", "train/grad_norm"), ("trl", "train/grad_norm"),
                       ("trl", "train/kl")):
        a, b = train_records(runs[1][stage], key), train_records(runs[8][stage], key)
        assert sorted(a) == sorted(b) == [1, 2, 3][:len(a)] and a[len(a)] > 0
        within(f"8 ranks/{stage} {key}", max(rel(a[k], b[k]) for k in a if a[k]), SUM_RTOL)
    start = tiny_dir
    for stage in ("sft", "mrl", "trl"):
        one, eight = (os.path.join(runs[r][stage], "final") for r in (1, 8))
        within(f"8 ranks/{stage} weights", weight_rel(one, eight, start), WEIGHT_RTOL)
        start = one
    assert predictions(runs[1]["eval"]) == predictions(runs[8]["eval"])  # greedy, as above
