"""Run under torchrun by tests/test_distributed.py: prompt once on an FSDP2 model vs rows whole.

    torchrun --standalone --nproc_per_node=2 tests/dist_once_checks.py TINY_DIR OUT_DIR

Every rank samples the same rollouts with a plain copy of the tiny model, then takes its own
micro-batches, chosen so that the ranks differ in what prompt-once would do alone: repeats on one
rank and none on the other (images on both), T = 1 on one rank against a longer one, and no
repeat on either. Each micro-batch's forward + backward runs on the sharded model twice, each
distinct prompt once (the default) and every row whole (share_prompt=False), and prompt once on
a sharded model with activation checkpointing (the recipe's --grad-checkpointing 1). Rank 0 writes
OUT_DIR/once.json: per micro-batch the largest |log-prob difference| over the ranks and the
largest norm-wise relative difference of one parameter's full gradient.
"""

import json
import os
import sys

import torch
from PIL import Image

from nanorevisual import dist
from nanorevisual.logprobs import collate_rollouts, completion_logps
from nanorevisual.model import load_model_and_processor, load_policy
from nanorevisual.processor import vision_token_ids
from nanorevisual.prompts import build_messages
from nanorevisual.rollout import generate_rollouts
from parity import rel_norm


def messages():
    red = Image.new("RGB", (56, 56), (200, 30, 30))
    blue = Image.new("RGB", (100, 60), (20, 30, 200))
    return [build_messages("<image>What colour is the shape?", [red]),
            build_messages("What is 3+4?", []),
            build_messages("Left <image> right <image>?", [blue, red]),
            build_messages("What is 2+2?", [])]


def one_token(s):
    """The sequence cut to its first completion token: a micro-batch with T = 1."""
    return {**s, "completion_ids": s["completion_ids"][:1], "num_tokens": 1}


if __name__ == "__main__":
    tiny_dir, out_dir = sys.argv[1], sys.argv[2]
    ddp, rank, _, world_size, device = dist.compute_init(timeout_s=60)  # a mismatch: error, no hang
    assert ddp and world_size == 2
    model, processor = load_policy(tiny_dir, device, ddp)
    plain, _ = load_model_and_processor(tiny_dir)
    plain.eval()
    suppress = vision_token_ids(processor)
    seqs = generate_rollouts(plain, processor, messages(), group_size=3, max_new_tokens=8,
                             temperature=1.0, micro_batch_size=12, suppress_ids=suppress, seed=2)
    del plain

    def pick(*i):
        return [seqs[k] for k in i]

    micro_batches = {  # name -> (rank 0's rows, rank 1's rows)
        "repeats vs none": (pick(0, 1, 0, 6, 7, 3), pick(2, 4, 8, 10)),
        "T=1 vs longer": (pick(9, 10, 9), [one_token(seqs[5])]),
        "none vs none": (pick(0, 3), pick(6, 9)),  # rows whole on both
    }
    checkpointed, _ = load_policy(tiny_dir, device, ddp, grad_checkpointing=True)
    assert checkpointed.is_activation_checkpointing
    results = {}
    for name, rows in micro_batches.items():
        batch = collate_rollouts(rows[rank], processor.tokenizer.pad_token_id)
        mask = batch["completion_mask"]
        runs = []
        for net, share in ((model, True), (model, False), (checkpointed, True)):
            net.train()
            logps = completion_logps(net, batch, temperature=0.7, suppress_ids=suppress,
                                     share_prompt=share)  # (B, T)
            (logps * mask).sum().backward()
            grads = {n: p.grad.full_tensor() for n, p in net.named_parameters()
                     if p.grad is not None}
            net.zero_grad(set_to_none=True)
            runs.append((logps.detach(), grads))
        (whole, g_whole) = runs[1]
        for way, (once, g_once) in (("", runs[0]), ("checkpointed ", runs[2])):
            assert g_once.keys() == g_whole.keys()
            worst = dist.all_reduce_dict({
                "logps": (once[mask] - whole[mask]).abs().max().item(),
                "grads": max(rel_norm([g_whole[n]], [g_once[n]]) for n in g_whole)}, op="max")
            results[way + name] = {
                **worst, "T": dist.all_gather_objects(batch["completion_ids"].shape[1]),
                "row_prompt": dist.all_gather_objects("row_prompt" in batch),
                "vision_grads": any(n.startswith("model.visual") for n in g_once)}
    if rank == 0:
        with open(os.path.join(out_dir, "once.json"), "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.compute_cleanup()
