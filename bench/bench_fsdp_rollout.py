"""Rollout speed under FSDP2: all-gather every layer for every generated token, versus gather once per rollout.

    torchrun --standalone --nproc_per_node=2 bench/bench_fsdp_rollout.py            # CPU, gloo, tiny model
    torchrun --standalone --nproc_per_node=2 bench/bench_fsdp_rollout.py --layers 8 --hidden 256

Each rank generates --seqs sequences of --new-tokens tokens from the same sharded model, three ways:
  per-token   plain FSDP: every decode step's forward all-gathers every unit (generate runs with synced_gpus)
  gather-once dist.gathered_params: each unit unsharded once for the whole call, resharded after
  unsharded   the plain model on one process (a lower bound: no communication at all)
and prints the median wall time of --repeats runs and the ratio per-token / gather-once, all measured in this run.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere, no install

from nanorevisual import dist
from nanorevisual.prompts import build_messages
from nanorevisual.processor import vision_token_ids
from nanorevisual.rollout import generate_rollouts
from nanorevisual.toy import tiny_stack as build_tiny_stack

parser = argparse.ArgumentParser(description="FSDP2 rollout bench: per-token gathers vs gather once")
parser.add_argument("--seqs", type=int, default=16, help="sequences per rank")
parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per sequence")
parser.add_argument("--hidden", type=int, default=128, help="text hidden size of the random model")
parser.add_argument("--layers", type=int, default=4, help="decoder layers of the random model")
parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode (median reported)")
args = parser.parse_args()

ddp, rank, _, world_size, device = dist.compute_init(timeout_s=120)
assert ddp, "run under torchrun"
torch.manual_seed(0)
plain, processor = build_tiny_stack(hidden=args.hidden, layers=args.layers)
sharded, _ = build_tiny_stack(hidden=args.hidden, layers=args.layers)
sharded = dist.shard_model(sharded, device)
dist.warmup_forward(sharded, processor, device)
msgs = [build_messages(f"What is {i % 10}+{(3 * i) % 10}?", []) for i in range(args.seqs)]
kw = dict(group_size=1, max_new_tokens=args.new_tokens, temperature=1.0, micro_batch_size=args.seqs,
          suppress_ids=vision_token_ids(processor), seed=rank)


def timed(fn):
    fn()  # warm-up
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        out = fn()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def gather_once():
    with dist.gathered_params(sharded):
        return generate_rollouts(sharded, processor, msgs, synced_gpus=False, **kw)


t_token, a = timed(lambda: generate_rollouts(sharded, processor, msgs, **kw))
t_once, b = timed(gather_once)
t_plain, c = timed(lambda: generate_rollouts(plain, processor, msgs, **kw))
same = all(torch.equal(x["completion_ids"], y["completion_ids"]) for x, y in zip(a, b))
params = sum(p.numel() for p in plain.parameters())
dist.print0(f"{world_size} ranks x {args.seqs} seqs x {args.new_tokens} tokens | model {params:,} params "
            f"(hidden {args.hidden}, {args.layers} layers) | median of {args.repeats}")
dist.print0(f"per-token gathers: {t_token:.3f} s | gather once: {t_once:.3f} s | unsharded: {t_plain:.3f} s | "
            f"speed-up per-token / gather-once: {t_token / t_once:.2f}x | identical tokens: {same}")
dist.compute_cleanup()
