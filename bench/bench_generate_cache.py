"""HF generate with a static KV cache against the default dynamic one, on any model folder, in one run.

    python bench/bench_generate_cache.py --model tiny                       # CPU, the tiny model
    python bench/bench_generate_cache.py --model runs/gpu_check/model --device cuda --dtype bfloat16

Interleaved repeats of the same sampled rollouts (shared prefill off: the static cache is sized by generate itself),
the median of each, generated tokens per second, and the ratio printed last. bench/gpu_check.sh runs it on CUDA.
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
from nanorevisual.prompts import encode_prompts  # noqa: E402
from nanorevisual.rollout import sampling_kwargs  # noqa: E402
from nanorevisual.toy import ensure_tiny_model, ensure_toy_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="static vs dynamic KV cache in HF generate")
    parser.add_argument("--model", default="tiny", help="model folder or 'tiny'")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per call (toy image + text prompts)")
    parser.add_argument("--group-size", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per sample")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each, interleaved")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count()))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    path = ensure_tiny_model() if args.model == "tiny" else args.model
    model, processor = load_model_and_processor(path, dtype=dtype, device=args.device)
    model.eval()
    toy = ensure_toy_data()
    rows = (load_rl_rows(os.path.join(toy, "mm_val.jsonl")) + load_rl_rows(os.path.join(toy, "text_val.jsonl")))
    rows = rows[::max(1, len(rows) // args.prompts)][:args.prompts]
    enc = {k: v.to(args.device) for k, v in encode_prompts(processor, [r["messages"] for r in rows]).items()}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def generate(cache):
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(**enc, **sampling_kwargs(1.0, 1.0), num_return_sequences=args.group_size,
                                 max_new_tokens=args.max_new_tokens, suppress_tokens=vision_token_ids(processor),
                                 **({"cache_implementation": "static"} if cache == "static" else {}))
        return out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1])  # generated positions

    times = {"dynamic": [], "static": []}
    for cache in times:  # warm-up (the static cache allocates on its first call)
        generate(cache)
    for _ in range(args.repeats):
        for cache in times:
            sync()
            t0 = time.perf_counter()
            tokens = generate(cache)
            sync()
            times[cache].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.prompts} prompts x G {args.group_size}, {args.max_new_tokens} new tokens, {args.device} {args.dtype}")
    for cache, t in med.items():
        print(f"{cache:8s} cache: {t:.3f} s per call, {tokens / t:.0f} generated tokens/s")
    print(f"static / dynamic time: {med['static'] / med['dynamic']:.2f}")


if __name__ == "__main__":
    main()
