"""Rollout generation with a shared prefill (one vision pass + prompt prefill per prompt, the KV cache copied to its G
samples) against generate's own G-fold repetition of every prompt, measured side by side in one run.

    python bench/bench_rollout_prefill.py                    # tiny model, 8 image prompts x G 8, 32 new tokens

Interleaved repeats (shared, repeated, shared, ...), the median of each, the ratio printed last. It also checks that
greedy decoding gives identical tokens both ways and that a sampled run draws identical tokens from the same seed,
and times both paths with one new token (the prefill and one decode step), which bounds what sharing can save: the
rest of a rollout is the decode loop over all N sequences, the same work both ways.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanorevisual.data import load_rl_rows  # noqa: E402
from nanorevisual.model import load_model_and_processor  # noqa: E402
from nanorevisual.processor import vision_token_ids  # noqa: E402
from nanorevisual.rollout import generate_rollouts  # noqa: E402
from nanorevisual.toy import ensure_toy_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="shared prefill vs repeated prompts in generate")
    parser.add_argument("--prompts", type=int, default=8, help="image prompts per generate call")
    parser.add_argument("--group-size", type=int, default=8, help="G samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="completion length cap")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls of each path, interleaved")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, processor = load_model_and_processor("tiny")
    model.eval()
    rows = load_rl_rows(os.path.join(ensure_toy_data(), "mm_val.jsonl"))[:args.prompts]
    messages = [r["messages"] for r in rows]
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
    print(f"{args.prompts} image prompts x G {args.group_size}, {args.max_new_tokens} new tokens, "
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
