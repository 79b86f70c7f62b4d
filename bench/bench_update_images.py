"""The training forward + backward with each prompt's images through the vision tower once (collate_rollouts'
image_index) against once per sample (every occurrence repeated, the plain HF inputs), side by side in one run.

    python bench/bench_update_images.py                         # toy images (56 x 56: 4 image tokens), G 8
    python bench/bench_update_images.py --min-pixels 262144     # the released lower pixel bound: 361 image tokens

Interleaved repeats, medians, the ratio printed last. It also prints the largest difference of the log-probs and of
the gradients between the two (they are the same computation up to float summation order).
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanorevisual.data import load_rl_rows  # noqa: E402
from nanorevisual.logprobs import completion_logps  # noqa: E402
from nanorevisual.model import load_model_and_processor  # noqa: E402
from nanorevisual.processor import vision_token_ids  # noqa: E402
from nanorevisual.rollout import collate_rollouts, expand_images, generate_rollouts  # noqa: E402
from nanorevisual.toy import ensure_toy_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="vision tower once per image vs once per sample in the update")
    parser.add_argument("--prompts", type=int, default=4, help="image prompts")
    parser.add_argument("--group-size", type=int, default=8, help="G samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="completion length cap")
    parser.add_argument("--min-pixels", type=int, default=None, help="processor's lower pixel bound (released: 262144)")
    parser.add_argument("--repeats", type=int, default=7, help="timed forward + backward of each, interleaved")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, processor = load_model_and_processor("tiny", min_pixels=args.min_pixels,
                                                max_pixels=4194304 if args.min_pixels else None)
    suppress = vision_token_ids(processor)
    rows = load_rl_rows(os.path.join(ensure_toy_data(), "mm_val.jsonl"))[:args.prompts]
    model.eval()
    seqs = generate_rollouts(model, processor, [r["messages"] for r in rows], group_size=args.group_size,
                             max_new_tokens=args.max_new_tokens, suppress_ids=suppress, seed=0)
    model.train()
    shared = collate_rollouts(seqs, processor.tokenizer.pad_token_id)
    batches = {"once per image": shared, "once per sample": expand_images(shared)}

    def forward_backward(batch):
        logps = completion_logps(model, batch, suppress_ids=suppress)  # (B, T)
        (logps * batch["completion_mask"]).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return logps.detach(), grads

    results = {name: forward_backward(batch) for name, batch in batches.items()}
    (a, ga), (b, gb) = results.values()
    mask = shared["completion_mask"]
    times = {name: [] for name in batches}
    for _ in range(args.repeats):
        for name, batch in batches.items():
            t0 = time.perf_counter()
            forward_backward(batch)
            times[name].append(time.perf_counter() - t0)
    once, per_sample = (statistics.median(times[name]) for name in batches)
    tokens = int(shared["mm_token_type_ids"][0].sum())
    print(f"{args.prompts} image prompts ({tokens} image tokens each) x G {args.group_size}, "
          f"{args.max_new_tokens} new tokens, {args.threads} threads, median of {args.repeats}")
    print(f"max |difference|: log-probs {(a - b)[mask].abs().max():.2e}, "
          f"gradients {max((x - y).abs().max().item() for x, y in zip(ga, gb)):.2e}")
    print(f"forward + backward: vision once per sample {per_sample:.3f} s | once per image {once:.3f} s")
    print(f"speed-up of one vision pass per image: {per_sample / once:.2f}x")


if __name__ == "__main__":
    main()
