"""Checkpoints: HF folders the next stage loads with from_pretrained, plus resume state, written
atomically; and the out-dir rules (one run per folder, under a lock). OUT_DIR/step_000400/ and
OUT_DIR/final/ hold the fp32 policy with hub key names, the processor, meta.json {"user_config",
"step", "stage", "git_commit"}, and (step folders) resume/: optimizer, RNG, counters.
"""

import atexit
import fcntl
import json
import os
import random
import shutil
import socket
import subprocess
import time

import numpy as np
import torch
import torch.distributed

from nanorevisual import dist
from nanorevisual.common import AT_EXIT, UserError


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def kernels():
    """What picks the float kernels: torch, the CPU's vector instructions, the GPU model. Resumed
    under other kernels, a run continues but not bit for bit (pitfall 25)."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}, {gpu}"


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def publish(tmp, path):
    """Rename a finished temp folder into place, replacing a folder of that name."""
    old = None
    if os.path.exists(path):  # os.rename cannot replace a non-empty folder: move it aside first
        old = path + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
    os.rename(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def temp_dir_for(path, pid=None):
    """OUT_DIR/.tmp-<name>-<pid>: removed only by its own process, or once that process is gone."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".tmp-{name}-{pid or os.getpid()}")


def save_hf_folder(tmp, model, processor, state_dict=None):
    if state_dict is None:
        model.save_pretrained(tmp)
    else:  # FSDP: a weightless skeleton writes the gathered weights, hub key names (pitfall 16)
        from transformers import AutoModelForImageTextToText
        with torch.device("meta"):
            skeleton = AutoModelForImageTextToText.from_config(model.config)
        skeleton.generation_config = model.generation_config
        skeleton.save_pretrained(tmp, state_dict=state_dict)
    processor.save_pretrained(tmp)


def save_checkpoint(path, model, processor, meta, *, optimizer=None, extra=None, ddp=False):
    """Write an HF folder + meta.json (+ resume state with `extra` when optimizer is given) into a
    temp folder, then rename it into place, so `find_last_step` never sees a half-written one.
    Collective: every rank calls it."""
    master = not ddp or torch.distributed.get_rank() == 0
    state_dict = dist.full_state_dict(model) if ddp else None  # collective
    tmp = temp_dir_for(path, dist.all_gather_objects(os.getpid())[0])  # rank 0's pid, every rank
    if master:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    resume = os.path.join(tmp, "resume")
    if optimizer is not None:
        os.makedirs(resume, exist_ok=True)
        if ddp:  # each rank writes its own shards (none holds the full optimizer) and RNG state
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict
            dist.reshard_all(model)
            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=resume)
            torch.save(extra, os.path.join(resume, f"extra_rank{torch.distributed.get_rank()}.pt"))
        else:
            state = {"optimizer": optimizer.state_dict(), **extra}
            torch.save(state, os.path.join(resume, "state.pt"))
    if master:
        save_hf_folder(tmp, model, processor, state_dict)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(dict(meta, git_commit=git_commit(), kernels=kernels()), f, indent=2,
                      default=str)
    dist.barrier()
    if master:
        publish(tmp, path)
    dist.barrier()
    return path


def load_resume(path, model, optimizer, ddp=False):
    """Restore optimizer (under FSDP, model shards too) from path/resume; returns `extra`."""
    with open(os.path.join(path, "meta.json")) as f:
        saved, now = json.load(f).get("kernels"), kernels()
    if saved and saved != now:
        dist.print0(f"note: {path} was saved under {saved}; this run has {now}: it "
                    "continues, but not bit-identically to a run that never stopped (pitfall 25)")
    resume = os.path.join(path, "resume")
    if ddp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=resume)
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        rank = torch.distributed.get_rank()
        return torch.load(os.path.join(resume, f"extra_rank{rank}.pt"), weights_only=False)
    state = torch.load(os.path.join(resume, "state.pt"), map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state.pop("optimizer"))
    return state


# flags that may change between a run and its resume: they do not change what the run computes
# (source says where each value came from: a default and the same value as a flag are one run)
RESUMABLE_CHANGES = {"resume", "overwrite", "max_steps", "save_every", "eval_every", "log_every",
                     "out_dir", "eval_limit", "source"}
RUN_FILES = ("final", "metrics.jsonl", "rollouts")


def pid_alive(pid):
    """Whether process `pid` exists on this host (signal 0 sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def lock_out_dir(out_dir):
    """An exclusive flock on OUT_DIR/.lock, which holds the owner's {"pid", "host"}; a held lock
    stops this run in one line naming its holder. The kernel drops an flock with its process, so a
    killed run's lock is taken over (with a note). Released, file removed, at exit."""
    path = os.path.join(out_dir, ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, tries = read_lock(fd), 0
            while not holder and tries < 100:  # the owner writes its pid right after locking
                time.sleep(0.01)
                holder, tries = read_lock(fd), tries + 1
            os.close(fd)
            who = f"pid {holder.get('pid')} on {holder.get('host')}"
            raise UserError(f"{out_dir}: in use by another run ({who}); wait for it to end, or "
                            "pass another --out-dir") from None
        if same_file(fd, path):
            break
        os.close(fd)  # the owner removed the file between our open and our lock: lock the new one
    old = read_lock(fd)
    if old:
        dist.print0(f"note: {path}: taking over the lock of pid {old.get('pid')} on "
                    f"{old.get('host')}, which ended without releasing it")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)

    def release():
        if fd in held:
            held.remove(fd)
            if same_file(fd, path):
                os.remove(path)
            os.close(fd)  # drops the flock

    held = [fd]
    atexit.register(release)
    AT_EXIT.append(release)
    return release


def read_lock(fd):
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:  # being written by its owner, or not ours
        return {}


def same_file(fd, path):
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def claim_out_dir(out_dir):
    """Before a run writes into OUT_DIR (global rank 0 only): create it, lock it, and remove the
    temp folders of runs killed mid-save."""
    if int(os.environ.get("RANK", 0)) != 0:
        return None
    try:
        os.makedirs(out_dir, exist_ok=True)
        release = lock_out_dir(out_dir)  # writing the lock file is the write probe
    except OSError as e:
        why = "a file of that name exists" if os.path.isfile(out_dir) else e.strerror
        raise UserError(f"--out-dir {out_dir}: cannot create or write to it ({why})") from None
    for name in os.listdir(out_dir):
        pid = name.rsplit("-", 1)[-1]
        if name.startswith(".tmp-") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)  # a killed run's save
    return release


def prepare_out_dir(out_dir, *, resume, overwrite, user_config, total_steps=None):
    """Where a run starts, decided before any model loads: the step folder to resume from, or None.
    resume=1: the newest OUT_DIR/step_* whose meta.json describes the same run (RESUMABLE_CHANGES
    aside) and lies at or before total_steps. resume=0 refuses a folder holding another run (a later
    --resume would mix the two) unless overwrite=1, which deletes it first."""
    last = find_last_step(out_dir)
    if resume and last:
        with open(os.path.join(last, "meta.json")) as f:
            meta = json.load(f)
        old, step = meta.get("user_config", {}), meta.get("step", 0)
        if total_steps is not None and total_steps < step:  # else final/ says 2, holds step 7
            raise UserError(f"{last}: --max-steps {total_steps} is below the checkpoint's step "
                            f"{step}; pass --max-steps {step} or more, or a new --out-dir")
        differ = {k: (old.get(k), v) for k, v in user_config.items()
                  if k not in RESUMABLE_CHANGES and k in old and str(old.get(k)) != str(v)}
        if differ:
            diff = ", ".join(f"--{k.replace('_', '-')} {a} -> {b}"
                             for k, (a, b) in sorted(differ.items()))
            raise UserError(f"{last}: --resume 1 with other settings than the run it continues "
                            f"({diff}); pass the original flags, or a new --out-dir")
        return last
    leftovers = [] if not os.path.isdir(out_dir) else sorted(
        d for d in os.listdir(out_dir)
        if d in RUN_FILES or (d.startswith("step_") and d[5:].isdigit()))
    if resume and "final" in leftovers:
        raise UserError(f"{out_dir}: --resume 1 but the run there finished (final/) and left "
                        "no step_* folder; pass a new --out-dir, or --overwrite 1 to start again")
    if resume:
        dist.print0(f"resume: no checkpoint in {out_dir}: starting from step 0")
        return None
    if leftovers and not overwrite:
        raise UserError(f"{out_dir}: already holds a run ({', '.join(leftovers[:4])}); pass "
                        "--resume 1 to continue it, --overwrite 1 to replace it, or a new "
                        "--out-dir")
    if leftovers and int(os.environ.get("RANK", 0)) == 0:
        for name in leftovers:
            path = os.path.join(out_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return None


def find_last_step(out_dir):
    """The newest finished OUT_DIR/step_XXXXXX folder (with resume state), or None."""
    if not os.path.isdir(out_dir):
        return None
    steps = [d for d in os.listdir(out_dir) if d.startswith("step_") and d[5:].isdigit()
             and os.path.exists(os.path.join(out_dir, d, "meta.json"))]
    return os.path.join(out_dir, max(steps)) if steps else None

