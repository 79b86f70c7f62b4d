"""Rollout generation with a shared prefill (one vision pass + prompt prefill per prompt, the KV cache copied to its G
samples) against generate's own G-fold repetition of every prompt, measured side by side in one run.

    python bench/bench_rollout_prefill.py                    # tiny model, 8 image prompts x G 8, 32 new tokens
    python bench/bench_rollout_prefill.py --image-size 112   # the same prompts with the largest tiny-model images
    python bench/bench_rollout_prefill.py --min-pixels 262144 --max-pixels 4194304   # the released pixel bounds

Interleaved repeats (shared, repeated, shared, ...), the median of each, the ratio printed last. It also checks that
greedy decoding gives identical tokens both ways and that a sampled run draws identical tokens from the same seed,
and times both paths with one new token (the prefill and one decode step), which bounds what sharing can save: the
rest of a rollout is the decode loop over all N sequences, the same work both ways.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanorevisual.data import load_rl_rows  # noqa: E402
from nanorevisual.model import load_model_and_processor  # noqa: E402
from nanorevisual.processor import vision_token_ids  # noqa: E402
from nanorevisual.rollout import generate_rollouts  # noqa: E402
from nanorevisual.toy import ensure_tiny_model, ensure_toy_data  # noqa: E402


def resized(messages, size, folder):
    """The same prompts with every image resized to size x size (copies written to `folder`)."""
    out = []
    for i, turns in enumerate(messages):
        content = []
        for j, item in enumerate(turns[0]["content"]):
            if item["type"] == "image":
                path = os.path.join(folder, f"{i}-{j}.png")
                Image.open(item["image"]).convert("RGB").resize((size, size)).save(path)
                item = dict(item, image=path)
            content.append(item)
        out.append([dict(turns[0], content=content)])
    return out


def main():
    parser = argparse.ArgumentParser(description="shared prefill vs repeated prompts in generate")
    parser.add_argument("--prompts", type=int, default=8, help="image prompts per generate call")
    parser.add_argument("--group-size", type=int, default=8, help="G samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="completion length cap")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls of each path, interleaved")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--min-pixels", type=int, default=None, help="processor's lower pixel bound (262144: the "
                        "released recipe's, which makes each toy image 361 image tokens)")
    parser.add_argument("--max-pixels", type=int, default=None, help="processor's upper pixel bound (released: 4194304)")
    parser.add_argument("--image-size", type=int, default=0, help="resize the toy images to N x N first (0: as they "
                        "are, 56 x 56 = 4 image tokens; 112 is the tiny processor's largest, 16 tokens)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, processor = load_model_and_processor(ensure_tiny_model(), min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    model.eval()
    rows = load_rl_rows(os.path.join(ensure_toy_data(), "mm_val.jsonl"))[:args.prompts]
    messages = [r["messages"] for r in rows]
    if args.image_size:
        messages = resized(messages, args.image_size, tempfile.mkdtemp())
    kw = dict(group_size=args.group_size, max_new_tokens=args.max_new_tokens, suppress_ids=vision_token_ids(processor),
              micro_batch_size=args.prompts * args.group_size)

    def ids(out):
        return [s["completion_ids"].tolist() for s in out]

    # greedy: generate refuses num_return_sequences > 1, so the repeated path decodes each prompt once; every one of
    # the G shared-prefill samples must equal it
    once = ids(generate_rollouts(model, processor, messages, temperature=0.0, share_prefill=False,
                                 **dict(kw, group_size=1)))
    greedy_same = ids(generate_rollouts(model, processor, messages, temperature=0.0, share_prefill=True, **kw)) == \
        [row for row in once for _ in range(args.group_size)]
    sampled_same = ids(generate_rollouts(model, processor, messages, temperature=1.0, seed=3, share_prefill=True,
                                         **kw)) == \
        ids(generate_rollouts(model, processor, messages, temperature=1.0, seed=3, share_prefill=False, **kw))
    times = {(shared, new): [] for shared in (True, False) for new in (args.max_new_tokens, 1)}
    for _ in range(args.repeats):
        for shared, new in times:
            t0 = time.perf_counter()
            generate_rollouts(model, processor, messages, temperature=1.0, seed=0, share_prefill=shared,
                              **dict(kw, max_new_tokens=new))
            times[shared, new].append(time.perf_counter() - t0)
    med = {key: statistics.median(v) for key, v in times.items()}
    shared, repeated = med[True, args.max_new_tokens], med[False, args.max_new_tokens]
    first_shared, first_repeated = med[True, 1], med[False, 1]
    image_tokens = int(generate_rollouts(model, processor, messages[:1], temperature=0.0, max_new_tokens=1,
                                         group_size=1)[0]["prompt_mm_types"].sum())
    print(f"{args.prompts} image prompts ({image_tokens} image tokens each) x G {args.group_size}, "
          f"{args.max_new_tokens} new tokens, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"greedy tokens identical: {greedy_same} | sampled tokens identical (same seed): {sampled_same}")
    print(f"prefill + first token: repeated prompts {first_repeated:.3f} s | shared prefill {first_shared:.3f} s "
          f"({first_repeated / first_shared:.2f}x)")
    print(f"bound: the repeated path spends {first_repeated / repeated:.0%} of a rollout in prefill + first token; "
          f"if the shared one cost nothing the speed-up would be {repeated / (repeated - first_repeated):.2f}x")
    print(f"repeated prompts {repeated:.3f} s | shared prefill {shared:.3f} s")
    print(f"speed-up of the shared prefill: {repeated / shared:.2f}x")


if __name__ == "__main__":
    main()
