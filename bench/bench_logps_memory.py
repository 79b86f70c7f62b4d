"""
Peak memory of token log-probs: the naive full-vocabulary fp32 log_softmax vs nanorevisual.grpo.token_logps.

Each (method, dtype, mode) runs in a FRESH subprocess so peaks cannot mix. Inside it the logits (B, T, V) and
targets (B, T) are created first; the measured number is the peak ABOVE that point:
    CUDA: torch.cuda.max_memory_allocated() - memory_allocated() after the inputs (peak stats reset there);
    CPU:  resource.getrusage(RUSAGE_SELF).ru_maxrss - RSS after the inputs. The kernel's peak-RSS mark is reset
          after the inputs (write "5" to /proc/self/clear_refs, Linux >= 4.0) so that a transient during input
          creation cannot be mistaken for the measured peak.
Modes: "forward" = no_grad (old/ref log-probs), "backward" = forward + backward of sum(logps) (the update).
The backward numbers include the (B, T, V) gradient of the logits itself (same size as the input), which
both methods must produce.

    python bench/bench_logps_memory.py                        # bf16 logits, vocab 152064, seq 4096 (a few GB)
    python bench/bench_logps_memory.py --dtypes bf16,fp32     # also fp32 logits (naive fp32 backward: ~10 GB)

Measured on CPU (2 shared cores, defaults: B 1, T 4096, V 152064, chunk_size 1024), MB above the inputs:
    dtype mode       input  naive   ours  naive/ours
    bf16  forward     1188   4752   1188  4.0x
    bf16  backward    1188   7128   3564  2.0x
    fp32  forward     2376   4752   1188  4.0x
    fp32  backward    2376   7128   5346  1.3x
Backward always holds the input-sized gradient; ours adds one transient input-sized buffer (slice backward
assembling the chunk gradients) plus one chunk's fp32 work. A smaller --chunk-size lowers "ours" further.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

parser = argparse.ArgumentParser(description="peak memory of token log-prob computation")
parser.add_argument("--vocab", type=int, default=152064, help="V, vocabulary size (Qwen2.5-VL: 152064)")
parser.add_argument("--seq-len", type=int, default=4096, help="T, completion tokens per sequence")
parser.add_argument("--batch", type=int, default=1, help="B, sequences in the micro-batch")
parser.add_argument("--chunk-size", type=int, default=1024, help="rows per chunk for token_logps")
parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature dividing the logits")
parser.add_argument("--dtypes", type=str, default="bf16", help="comma list of logits dtypes: bf16,fp32")
parser.add_argument("--modes", type=str, default="forward,backward", help="comma list: forward,backward")
parser.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda")
parser.add_argument("--worker", type=str, default="", help=argparse.SUPPRESS)  # "method,dtype,mode": one run
args = parser.parse_args()

MB = 2 ** 20


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_worker(method: str, dtype_name: str, mode: str) -> dict:
    """One measurement in this (fresh) process; returns a dict that the parent prints."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, ROOT)
    from nanorevisual.grpo import token_logps

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.empty(args.batch, args.seq_len, args.vocab, dtype=dtype, device=device)  # (B, T, V)
    logits.normal_(generator=generator)  # touch every page, so the input is inside the baseline RSS
    targets = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device, generator=generator)  # (B, T)
    if mode == "backward":
        logits.requires_grad_(True)

    def naive() -> torch.Tensor:
        logprobs = F.log_softmax(logits.float() / args.temperature, dim=-1)  # (B, T, V) fp32
        return torch.gather(logprobs, -1, targets[..., None]).squeeze(-1)  # (B, T)

    def ours() -> torch.Tensor:
        return token_logps(logits, targets, temperature=args.temperature, chunk_size=args.chunk_size)  # (B, T)

    fn = {"naive": naive, "token_logps": ours}[method]
    # warm-up on a tiny slice: first calls page in library code and set up thread pools (~100 MB of RSS on CPU)
    # that would otherwise be billed to whichever method runs first
    full_logits, full_targets = logits, targets
    logits = full_logits[:, :2].detach().clone().requires_grad_(mode == "backward")  # (B, 2, V)
    targets = full_targets[:, :2]  # (B, 2)
    warm = fn()  # (B, 2)
    if mode == "backward":
        warm.sum().backward()
    logits, targets = full_logits, full_targets
    del warm
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = current_rss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak-RSS mark (VmHWM, which ru_maxrss reports) to the current RSS
            peak_was_reset = True
        except OSError:
            peak_was_reset = False

    start = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            logps = fn()  # (B, T) fp32
    else:
        logps = fn()  # (B, T) fp32
        logps.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline  # ru_maxrss is in KiB on Linux
    seconds = time.perf_counter() - start
    return dict(peak_mb=peak / MB, seconds=seconds, device=device, mean_logp=logps.mean().item(),
                input_mb=logits.numel() * logits.element_size() / MB,
                peak_was_reset=peak_was_reset if device == "cpu" else True)


if args.worker:
    print(json.dumps(run_worker(*args.worker.split(","))))
    sys.exit(0)

# -----------------------------------------------------------------------------
# parent: one fresh subprocess per measurement, then a table

forwarded = [f"--vocab={args.vocab}", f"--seq-len={args.seq_len}", f"--batch={args.batch}",
             f"--chunk-size={args.chunk_size}", f"--temperature={args.temperature}", f"--device={args.device}"]
print(f"logits (B={args.batch}, T={args.seq_len}, V={args.vocab}), chunk_size {args.chunk_size}; "
      f"peak memory above the inputs, each number from a fresh process")
header = f"{'dtype':<6}{'mode':<10}{'input MB':>10}{'naive MB':>11}{'ours MB':>10}{'naive/ours':>12}" \
         f"{'naive s':>9}{'ours s':>8}{'mean logp naive / ours':>26}"
rows = []
for dtype_name in args.dtypes.split(","):
    for mode in args.modes.split(","):
        result = {}
        for method in ("naive", "token_logps"):
            cmd = [sys.executable, os.path.abspath(__file__), *forwarded, f"--worker={method},{dtype_name},{mode}"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"worker {method},{dtype_name},{mode} failed:\n{out.stderr}")
            result[method] = json.loads(out.stdout.strip().splitlines()[-1])
            if not result[method]["peak_was_reset"]:
                print(f"warning: could not reset the peak-RSS mark for {method},{dtype_name},{mode}; "
                      f"its number may include input creation")
        naive, ours = result["naive"], result["token_logps"]
        rows.append(f"{dtype_name:<6}{mode:<10}{naive['input_mb']:>10.0f}{naive['peak_mb']:>11.0f}"
                    f"{ours['peak_mb']:>10.0f}{naive['peak_mb'] / max(ours['peak_mb'], 1e-9):>11.1f}x"
                    f"{naive['seconds']:>9.1f}{ours['seconds']:>8.1f}"
                    f"{naive['mean_logp']:>14.4f} / {ours['mean_logp']:.4f}")
        print(rows[-1] if len(rows) > 1 else header + "\n" + rows[-1], flush=True)
print(f"device: {naive['device']}")
