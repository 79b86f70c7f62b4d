"""Summary of a bench/gpu_check.sh run: per stage the median step time and its split, generated tokens/s, peak GPU
memory; the eval table; the static vs dynamic KV cache result; the memory plan's simulated peak of every phase
next to the same phase run for real (bench/memory_plan.py).

    python bench/gpu_report.py runs/gpu_check
"""

import json
import os
import statistics
import sys


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "time/step" in r]


def main(out):
    for stage in ("sft", "mrl", "trl"):
        steps = records(os.path.join(out, stage))[1:] or records(os.path.join(out, stage))  # skip the warm-up step
        keys = [k for k in steps[0] if k.startswith(("time/", "gpu/"))]
        med = {k: statistics.median(r.get(k, 0.0) for r in steps) for k in keys}
        peak = max(r.get("gpu/peak_gb", 0.0) for r in steps)
        line = " | ".join(f"{k} {v:.3f}" for k, v in med.items() if k != "gpu/peak_gb")
        print(f"{stage}: {len(steps)} steps, median {line} | peak GPU memory {peak:.2f} GB")
    with open(os.path.join(out, "eval", "results.md")) as f:
        print("\neval:\n" + f.read())
    cache = os.path.join(out, "generate_cache.txt")
    if os.path.exists(cache):
        print("generate, KV cache:\n" + open(cache).read())
    memory = os.path.join(out, "logps_memory.txt")
    if os.path.exists(memory):
        print("log-prob memory, plain vs chunked LM head:\n" + open(memory).read())
    memory_plan(out)


def memory_plan(out):
    """bench/memory_plan.py simulated (fake tensors) vs real, phase by phase: live tensor bytes both ways and,
    on CUDA, torch.cuda.max_memory_allocated over the phase."""
    paths = [os.path.join(out, f"memory_{kind}.json") for kind in ("sim", "real")]
    if not all(os.path.exists(p) for p in paths):
        return
    sim, real = (json.load(open(p))["rows"] for p in paths)
    print("memory plan, simulated vs real (MiB per GPU; ratio = simulated / real):")
    for s, r in zip(sim, real):
        line = (f"  {s['stage']:4s} {s['phase']:20s} simulated {s['peak'] / 2 ** 20:10,.1f} | real live tensors "
                f"{r['peak'] / 2 ** 20:10,.1f} ({s['peak'] / r['peak']:.3f})")
        if "cuda_max_allocated" in r:
            cuda = r["cuda_max_allocated"]
            line += f" | cuda max_memory_allocated {cuda / 2 ** 20:10,.1f} ({s['peak'] / cuda:.3f})"
        print(line)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu_check")
