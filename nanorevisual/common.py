"""Shared helpers: user errors in one line, flag rules, seeding, dtypes, the SFT schedule, metrics
JSONL, timers."""

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
    """A mistake in the user's input (flag, path, data row): printed as one line, no traceback."""


class MissingPackage(UserError, ImportError):
    """An optional package the input needs (pyarrow for parquet, matplotlib) is not installed."""


AT_EXIT = []  # what exit_now runs (os._exit skips atexit): the out-dir lock's release
MAX_NONFINITE_STEPS = 3  # non-finite gradient norms in a row (steps skipped) before a run stops


def exit_now(code):
    """Leave at once with `code`, without the interpreter's teardown (os._exit): run AT_EXIT, which
    atexit would have run, and flush stdout and stderr first."""
    for fn in AT_EXIT:
        fn()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def one_line_errors(parser):
    """A UserError anywhere in the script prints `error: <message>` on stderr (rank 0) and every
    rank exits 2; argparse's complaints lose their usage block. Anything else (a bug) tracebacks."""
    default_hook = sys.excepthook

    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, UserError):
            return default_hook(exc_type, exc, tb)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        exit_now(2)  # skips torch.distributed's atexit teardown: it would wait for the other ranks

    def parser_error(message):
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)

    sys.excepthook = hook
    parser.error = parser_error


# The valid values of every numeric flag of the three scripts, as intervals: "[0, 1)" is 0 <= x < 1.
# An infinite end is allowed only where it is closed ("(-inf, inf]"), so NaN, and inf elsewhere, are
# refused. Flags left None take a preset: scripts check after the presets are applied.
FLAG_RULES = {
    **dict.fromkeys(["max_steps", "batch_size", "grad_accum", "max_length", "log_every", "samples",
                     "prompts_per_step", "group_size", "max_new_tokens", "generate_batch_seqs",
                     "micro_batch_size", "length_budget",
                     "min_pixels", "max_pixels"], "[1, inf)"),
    **dict.fromkeys(["save_every", "eval_every", "eval_limit", "limit",
                     "optim_batch_seqs", "micro_batch_tokens", "max_prompt_length",
                     "entropy_warmup"], "[0, inf)"),
    **dict.fromkeys(["instruction", "skip_bad_rows", "grad_checkpointing", "freeze_vision",
                     "deterministic", "resume", "overwrite", "scale_by_std", "pad_replacement",
                     "gather_for_rollout", "meta_samples"], "[0, 1]"),  # 0/1 switches
    "seed": "[0, 4294967295]",  # numpy's seed range
    "epochs": "(0, inf)", "lr": "(0, inf)", "clip_grad": "(0, inf)", "weight_decay": "[0, inf)",
    "adam_beta2": "[0, 1)", "min_lr_ratio": "[0, 1]", "warmup_ratio": "[0, 1]",
    "temperature": "(0, inf)", "top_p": "(0, 1]",
    "eval_temperature": "[0, inf)",
    "kl_coef": "[0, inf)", "clip_low": "[0, 1)", "clip_high": "[0, inf)", "dual_clip": "(1, inf)",
    "entropy_coef": "[0, inf)",
    **dict.fromkeys(["w_accuracy", "w_format", "w_length", "w_self_critique", "w_image_revisit",
                     "w_repetition"], "[0, inf)"),
    "pad_t_low": "[-inf, inf)", "pad_t_high": "(-inf, inf]", "pad_ratio": "(0, inf)",
    "pad_alpha": "[0, inf)", "pad_tau_start": "(0, inf)", "pad_tau_end": "(0, inf)",
}
# rules between two flags, checked when both are set: (first, second, holds, what it means)
PAIR_RULES = [
    ("min_pixels", "max_pixels", lambda a, b: a <= b, "must be <="),
    ("dual_clip", "clip_high", lambda c, h: c > 1 + h, "must be > 1 +"),
]


def in_range(value, rule):
    """Whether value lies in the interval `rule`, e.g. "[0, 1)"; NaN lies in none."""
    low, high = (float(end) for end in rule[1:-1].split(","))
    above = low <= value if rule[0] == "[" else low < value
    return above and (value <= high if rule[-1] == "]" else value < high)


def check_flags(args, **overrides):
    """Refuse, naming the flag, a numeric flag outside its FLAG_RULES interval (`overrides`: a
    script's own rules, e.g. eval's temperature 0 = greedy) or breaking a PAIR_RULES rule."""
    rules = {**FLAG_RULES, **overrides}
    for name, value in vars(args).items():
        rule = rules.get(name)
        if rule and isinstance(value, (int, float)) and not in_range(value, rule):
            low, bound = rule[1:-1].split(",")[0], f"in {rule}"
            if rule.endswith(", inf)") and "inf" not in low:  # "> 0 (finite)", not "in (0, inf)"
                finite = " (finite)" if isinstance(value, float) else ""
                bound = f"{'>=' if rule[0] == '[' else '>'} {low}{finite}"
            raise UserError(f"--{name.replace('_', '-')} must be {bound}, got {value}")
    for first, second, holds, relation in PAIR_RULES:
        a, b = getattr(args, first, None), getattr(args, second, None)
        if a is not None and b is not None and not holds(a, b):
            flags = f"--{first.replace('_', '-')} {relation} --{second.replace('_', '-')}"
            raise UserError(f"{flags}, got {a} and {b}")


def key_values(flag, items, kinds, rule_prefix):
    """["t_low=0.1", "weighting=power"] -> {"t_low": 0.1, "weighting": "power"}, a flag that
    overrides entries of a table. kinds: {key: float, int, bool or a tuple of allowed words}; a
    number must lie in its FLAG_RULES interval, named rule_prefix + key."""
    out = {}
    for item in items:
        key, _, text = item.partition("=")
        kind = kinds.get(key)
        if kind is None or not text:
            raise UserError(f"{flag} {item}: expected KEY=VALUE with KEY in {', '.join(kinds)}")
        if isinstance(kind, tuple) and text not in kind:
            raise UserError(f"{flag} {key} must be one of {', '.join(kind)}, got {text}")
        if kind is bool and text not in ("0", "1"):
            raise UserError(f"{flag} {key} must be 0 or 1, got {text}")
        try:
            value = text if isinstance(kind, tuple) else (kind(int(text)) if kind is bool
                                                          else kind(text))
        except ValueError:
            raise UserError(f"{flag} {key} must be a number, got {text}") from None
        rule = FLAG_RULES.get(rule_prefix + key)
        if rule and not isinstance(value, str) and not in_range(value, rule):
            raise UserError(f"{flag} {key} must be in {rule}, got {text}")
        out[key] = value
    return out


def nonfinite_streak(norm, streak):
    """Consecutive non-finite gradient norms up to this step (their optimizer steps are skipped);
    a run that keeps getting them has diverged: it stops in one line, not with a broken final/."""
    streak = 0 if math.isfinite(norm) else streak + 1
    if streak >= MAX_NONFINITE_STEPS:
        raise UserError(f"the last {streak} optimizer steps had a non-finite gradient norm "
                        f"({norm}) and were skipped: the run diverged; lower --lr, or check data")
    return streak


def set_seed(seed, deterministic=False):
    """Seed every generator; deterministic=True also refuses kernels whose result depends on thread
    timing (cuBLAS needs a fixed workspace, set before its first call; pitfall 21)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def default_dtype(device, requested="auto"):
    """bf16 on CUDA, fp32 on CPU (CPU bf16 matmuls are slow; the parity tests want fp32)."""
    if requested != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16}[requested]
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def autocast(device, ddp):
    """bf16 autocast for one CUDA process; under FSDP the MixedPrecisionPolicy casts; CPU: fp32."""
    if torch.device(device).type == "cuda" and not ddp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_multiplier(step, total_steps, warmup_steps, min_ratio):
    """Linear warmup to 1, then cosine decay to min_ratio; `step`: finished optimizer steps."""
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
        """One write of a whole line: a crash leaves at most a torn last line (readers skip it)."""
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_jsonl_records(path):
    """The records of a metrics file; a line cut off by a crash (only the last) is dropped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def truncate_jsonl(path, resume_step):
    """On resume, drop what was logged after the checkpoint: training records carry the finished
    steps (kept up to resume_step); eval records the step they ran before (the eval at resume_step
    ran after the checkpoint: dropped and redone)."""
    if not os.path.exists(path):
        return
    records = read_jsonl_records(path)
    keep = [r for r in records if r.get("step", 0) < resume_step
            or (r.get("step") == resume_step and not any(k.startswith("eval/") for k in r))]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(path + ".tmp", path)  # a crash here leaves the old file, never a half-written one


class Timer:
    """Wall time per named phase: `with timer("generate"): ...`; pop() returns and resets."""

    def __init__(self, sync_cuda=False):
        self.totals, self.sync_cuda = {}, sync_cuda

    @contextlib.contextmanager
    def __call__(self, name):
        if self.sync_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.sync_cuda:
            torch.cuda.synchronize()
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def pop(self):
        out, self.totals = self.totals, {}
        return out
