"""Small shared helpers: user errors in one line, seeding, dtype choice, learning-rate schedule, metrics JSONL, timers."""

import contextlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch


class UserError(Exception):
    """A mistake in the user's input (a flag, a path, a data row). Scripts print it as one line, no traceback."""


class MissingPackage(UserError, ImportError):
    """An optional package the user's input needs (pyarrow for parquet, matplotlib for plots) is not installed."""


def one_line_errors(parser):
    """Make a script report user errors as one line on stderr and exit 2, before any model loads.

    A UserError raised anywhere in the script prints `error: <message>` (on rank 0 only under torchrun; every
    rank exits), and argparse's own complaints lose their usage block. Anything else keeps its traceback: that is
    a bug, not a user error."""
    default_hook = sys.excepthook

    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, UserError):
            return default_hook(exc_type, exc, tb)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        os._exit(2)  # also skips torch.distributed's atexit teardown, which would hang without the other ranks

    def parser_error(message):
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)

    sys.excepthook = hook
    parser.error = parser_error


def check_flags(args, *, positive=(), non_negative=()):
    """Refuse sizes and counts that cannot work, naming the flag: `--max-steps must be >= 1, got 0`."""
    for names, low in ((positive, 1), (non_negative, 0)):
        for name in names:
            value = getattr(args, name)
            if value is not None and value < low:
                raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


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


def lr_multiplier(step, total_steps, warmup_steps, min_ratio):
    """Linear warmup to 1, then cosine decay to min_ratio. `step` counts finished optimizer steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class MetricsLogger:
    """Appends one JSON dict per call to OUT_DIR/<name> (master process only; a no-op elsewhere)."""

    def __init__(self, out_dir, enabled=True, name="metrics.jsonl"):
        self.path = os.path.join(out_dir, name) if enabled else None
        if self.path:
            os.makedirs(out_dir, exist_ok=True)

    def log(self, record):
        """One write of one whole line, flushed: a crash can leave at most a torn last line, which readers skip."""
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_jsonl_records(path):
    """The records of a metrics file; a line cut off by a crash (only ever the last one) is dropped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def truncate_jsonl(path, resume_step):
    """On resume, drop what was logged after the checkpoint so metrics.jsonl has no duplicates: training records
    carry the number of finished steps (kept up to resume_step); eval records carry the step they ran before
    (the eval at resume_step ran after the checkpoint, so it is dropped and redone)."""
    if not os.path.exists(path):
        return
    records = read_jsonl_records(path)
    keep = [r for r in records if r.get("step", 0) < resume_step
            or (r.get("step") == resume_step and not any(k.startswith("eval/") for k in r))]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(path + ".tmp", path)  # a crash here leaves the old file, never a half-written one


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
