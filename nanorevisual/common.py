"""Small shared helpers: seeding, dtype choice, learning-rate schedule, metrics JSONL, timers."""

import contextlib
import json
import math
import os
import random
import time

import numpy as np
import torch


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_dtype(device, requested="auto"):
    """bf16 on CUDA, fp32 on CPU (CPU bf16 matmuls are slow and our parity tests want fp32)."""
    if requested != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def autocast(device, ddp):
    """bf16 autocast for a single CUDA process; under FSDP the MixedPrecisionPolicy casts, on CPU we stay fp32."""
    if torch.device(device).type == "cuda" and not ddp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_multiplier(step, total_steps, warmup_steps, min_ratio, schedule="cosine"):
    """Linear warmup to 1, then cosine decay to min_ratio (or constant). `step` counts finished optimizer steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class MetricsLogger:
    """Appends one JSON dict per call to OUT_DIR/<name> (master process only; a no-op elsewhere)."""

    def __init__(self, out_dir, enabled=True, name="metrics.jsonl"):
        self.path = os.path.join(out_dir, name) if enabled else None
        if self.path:
            os.makedirs(out_dir, exist_ok=True)

    def log(self, record):
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def truncate_jsonl(path, resume_step):
    """On resume, drop what was logged after the checkpoint so metrics.jsonl has no duplicates: training records
    carry the number of finished steps (kept up to resume_step); eval records carry the step they ran before
    (the eval at resume_step ran after the checkpoint, so it is dropped and redone)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        records = [json.loads(line) for line in f]
    keep = [r for r in records if r.get("step", 0) < resume_step
            or (r.get("step") == resume_step and not any(k.startswith("eval/") for k in r))]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)


class Timer:
    """Accumulates wall time per named phase: `with timer("generate"): ...`; `timer.pop()` returns and resets."""

    def __init__(self, sync_cuda=False):
        self.totals, self.sync_cuda = {}, sync_cuda

    def __call__(self, name):
        timer = self

        class _Phase:
            def __enter__(self):
                if timer.sync_cuda:
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                if timer.sync_cuda:
                    torch.cuda.synchronize()
                timer.totals[name] = timer.totals.get(name, 0.0) + time.perf_counter() - self.t0

        return _Phase()

    def pop(self):
        out, self.totals = self.totals, {}
        return out
