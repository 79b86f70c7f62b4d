"""The training forward + backward of a rollout batch three ways, side by side in one run:
    prompt once     each distinct prompt (its images and its tokens) runs once, the completions against its KV
                    cache (collate_rollouts' prefix keys, logprobs.shared_prompt_hidden)
    images once     every row runs whole, but each distinct image goes through the vision tower once (image_index)
    rows whole      every row runs whole with its own copy of the images (the plain HF inputs)

    python bench/bench_update_images.py                         # toy images (56 x 56: 4 image tokens), G 8
    python bench/bench_update_images.py --min-pixels 262144     # the released lower pixel bound: 361 image tokens

Interleaved repeats, medians, the ratio rows whole / prompt once printed last. It also prints the largest difference
of the log-probs and of the gradients from "rows whole" (the same computation up to float summation order).
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanorevisual.data import load_rl_rows  # noqa: E402
from nanorevisual.logprobs import collate_rollouts, completion_logps, expand_images  # noqa: E402
from nanorevisual.model import load_model_and_processor  # noqa: E402
from nanorevisual.processor import vision_token_ids  # noqa: E402
from nanorevisual.rollout import generate_rollouts  # noqa: E402
from nanorevisual.toy import ensure_tiny_model, ensure_toy_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="the update forward: prompt once, images once, or rows whole")
    parser.add_argument("--prompts", type=int, default=4, help="image prompts")
    parser.add_argument("--group-size", type=int, default=8, help="G samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="completion length cap")
    parser.add_argument("--min-pixels", type=int, default=None, help="processor's lower pixel bound (released: 262144)")
    parser.add_argument("--repeats", type=int, default=7, help="timed forward + backward of each, interleaved")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, processor = load_model_and_processor(ensure_tiny_model(), min_pixels=args.min_pixels,
                                                max_pixels=4194304 if args.min_pixels else None)
    suppress = vision_token_ids(processor)
    rows = load_rl_rows(os.path.join(ensure_toy_data(), "mm_val.jsonl"))[:args.prompts]
    model.eval()
    seqs = generate_rollouts(model, processor, [r["messages"] for r in rows], group_size=args.group_size,
                             max_new_tokens=args.max_new_tokens, suppress_ids=suppress, seed=0)
    model.train()
    shared = collate_rollouts(seqs, processor.tokenizer.pad_token_id)
    images_once = {k: v for k, v in shared.items() if k != "row_prompt" and not k.startswith("prefix")}
    batches = {"prompt once": shared, "images once": images_once, "rows whole": expand_images(shared)}

    def forward_backward(batch):
        logps = completion_logps(model, batch, suppress_ids=suppress)  # (B, T)
        (logps * batch["completion_mask"]).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return logps.detach(), grads

    results = {name: forward_backward(batch) for name, batch in batches.items()}
    reference, reference_grads = results["rows whole"]
    mask = shared["completion_mask"]
    times = {name: [] for name in batches}
    for _ in range(args.repeats):
        for name, batch in batches.items():
            t0 = time.perf_counter()
            forward_backward(batch)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    tokens = int(shared["mm_token_type_ids"][0].sum())
    print(f"{args.prompts} image prompts ({tokens} image tokens each) x G {args.group_size}, "
          f"{args.max_new_tokens} new tokens, {args.threads} threads, median of {args.repeats}")
    for name in ("prompt once", "images once"):
        logps, grads = results[name]
        print(f"{name}: max |difference| from rows whole: log-probs {(logps - reference)[mask].abs().max():.2e}, "
              f"gradients {max((x - y).abs().max().item() for x, y in zip(grads, reference_grads)):.2e}")
    print("forward + backward: " + " | ".join(f"{name} {t:.3f} s" for name, t in med.items()))
    print(f"images once vs rows whole: {med['rows whole'] / med['images once']:.2f}x")
    print(f"speed-up of running each prompt once (rows whole / prompt once): {med['rows whole'] / med['prompt once']:.2f}x")

if __name__ == "__main__":
    main()
