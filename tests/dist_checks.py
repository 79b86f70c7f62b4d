"""Run under torchrun by tests/test_distributed.py: FSDP2 generate and checkpoint checks on the tiny model.

    torchrun --standalone --nproc_per_node=2 tests/dist_checks.py TINY_DIR OUT_DIR

Checks (each rank asserts, rank 0 also writes OUT_DIR/checks.json for the test to read):
1. rank 0 reads the weights and the other ranks receive them: sharded logits equal the plain model's;
2. generate on the sharded model (per-token gathers, and gathered once) gives the plain model's tokens;
3. a checkpoint written by 2 ranks reloads into a plain model with identical logits.
"""

import json
import os
import sys

import torch

from nanorevisual import checkpoint, dist
from nanorevisual.prompts import build_messages, encode_prompts
from nanorevisual.model import load_model_and_processor, load_policy
from nanorevisual.processor import vision_token_ids
from nanorevisual.rollout import generate_rollouts

tiny_dir, out_dir = sys.argv[1], sys.argv[2]
ddp, rank, _, world_size, device = dist.compute_init(timeout_s=60)
assert ddp and world_size == 2
torch.manual_seed(0)

model, processor = load_policy(tiny_dir, device, ddp)
plain, _ = load_model_and_processor(tiny_dir)
msgs = [build_messages("What is 3+4?", []), build_messages("What is 5+1?", [])]
from PIL import Image  # noqa: E402
msgs.append(build_messages("<image>What colour is the shape?", [Image.new("RGB", (56, 56), (200, 30, 30))]))
enc = encode_prompts(processor, msgs)
with torch.no_grad():
    sharded_logits = model(**enc, use_cache=False).logits
    plain_logits = plain(**enc, use_cache=False).logits
results = {"logits_max_diff": (sharded_logits - plain_logits).abs().max().item()}

kw = dict(group_size=2, max_new_tokens=8, temperature=1.0, micro_batch_size=6, suppress_ids=vision_token_ids(processor),
          seed=5)
ref = [s["completion_ids"].tolist() for s in generate_rollouts(plain, processor, msgs, **kw)]
per_token = [s["completion_ids"].tolist() for s in generate_rollouts(model, processor, msgs, **kw)]  # synced_gpus auto
with dist.gathered_params(model):
    once = [s["completion_ids"].tolist() for s in generate_rollouts(model, processor, msgs, synced_gpus=False, **kw)]
results["generate_per_token_equal"] = per_token == ref
results["generate_gather_once_equal"] = once == ref
with torch.no_grad():  # still trainable after the gathered phase: params resharded, forward works
    again = model(**enc, use_cache=False).logits
results["after_gather_logits_equal"] = torch.equal(again, sharded_logits)

path = os.path.join(out_dir, "ckpt")
checkpoint.save_checkpoint(path, model, processor, {"step": 0}, ddp=True)
if rank == 0:
    from transformers import AutoModelForImageTextToText
    reloaded = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        results["reload_logits_equal"] = torch.equal(reloaded(**enc, use_cache=False).logits, sharded_logits)
    results["folder"] = sorted(os.listdir(path))
    with open(os.path.join(out_dir, "checks.json"), "w") as f:
        json.dump(results, f)
dist.barrier()
dist.compute_cleanup()
