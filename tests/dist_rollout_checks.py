"""Run under torchrun by tests/test_distributed.py: sampling on a checkpoint with the 7B-Instruct generation defaults.

    torchrun --standalone --nproc_per_node=2 tests/dist_rollout_checks.py QWEN_DIR OUT_DIR

Each rank loads the sharded policy (rank 0 reads, the others receive), takes its half of 4 prompts and samples them
with the weights gathered once, exactly as train_grpo.py does. Rank 0 writes OUT_DIR/rollouts.json: every rank's
completion ids (in global prompt order) and the worst |generate score - completion_logps| on each rank.
"""

import json
import os
import sys

import torch
from PIL import Image

from nanorevisual import dist
from nanorevisual.prompts import build_messages
from nanorevisual.logprobs import collate_rollouts, completion_logps
from nanorevisual.model import load_policy
from nanorevisual.processor import vision_token_ids
from nanorevisual.rollout import generate_rollouts

ROLLOUT = dict(group_size=2, max_new_tokens=12, temperature=1.0, top_p=1.0, micro_batch_size=4, seed=4)


def prompts():
    red = Image.new("RGB", (56, 56), (200, 30, 30))
    return [build_messages("<image>What colour is the shape?", [red]), build_messages("What is 3+4?", []),
            build_messages("What is 2+2?", []), build_messages("<image>Which colour?", [red])]


if __name__ == "__main__":
    qwen_dir, out_dir = sys.argv[1], sys.argv[2]
    ddp, rank, _, world_size, device = dist.compute_init(timeout_s=120)
    model, processor = load_policy(qwen_dir, device, ddp)
    model.eval()
    suppress = vision_token_ids(processor)
    local = len(prompts()) // world_size
    mine = prompts()[rank * local:(rank + 1) * local]
    with dist.gathered_params(model):
        seqs = generate_rollouts(model, processor, mine, suppress_ids=suppress, prompt_offset=rank * local,
                                 synced_gpus=False, with_scores=True, **ROLLOUT)
    batch = collate_rollouts(seqs, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logps = completion_logps(model, batch, temperature=1.0, suppress_ids=suppress)  # (B, T) sharded forward
    worst = max((logps[i, :s["num_tokens"]] - s["sample_logps"]).abs().max().item() for i, s in enumerate(seqs))
    parts = dist.all_gather_objects({"ids": [s["completion_ids"].tolist() for s in seqs], "worst": worst})
    if rank == 0:
        with open(os.path.join(out_dir, "rollouts.json"), "w") as f:
            json.dump({"ids": [i for p in parts for i in p["ids"]], "worst": [p["worst"] for p in parts]}, f)
    dist.barrier()
    dist.compute_cleanup()
