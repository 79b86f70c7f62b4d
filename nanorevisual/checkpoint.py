"""Checkpoints: HF folders the next stage loads with from_pretrained, written atomically, plus resume state.

Layout of OUT_DIR/step_000400/ (and OUT_DIR/final/):
    config.json, generation_config.json, model.safetensors   save_pretrained of the policy
    tokenizer files, processor_config.json, chat_template     save_pretrained of the processor
    meta.json                                                 {"user_config", "step", "git_commit", ...}
    resume/                                                   optimizer, scheduler, RNG, data position (optional)

Every folder is written under OUT_DIR/.tmp-<name>-<pid>/ and renamed into place only when complete, so a crash
never leaves a half-written "latest": `find_last_step` only sees finished folders.
"""

import contextlib
import json
import os
import random
import shutil
import subprocess

import numpy as np
import torch


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temp folder next to `path`; on success replace `path` with it, on error remove it."""
    path = os.path.abspath(path)
    parent, name = os.path.dirname(path), os.path.basename(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):  # move the old one aside first: os.rename cannot replace a non-empty folder
        old = os.path.join(parent, f".old-{name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
    os.rename(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, model, processor, meta, resume_state=None, state_dict=None):
    """Write an HF folder + meta.json (+ resume/state.pt) atomically. Call on the master process only.

    `state_dict`: a full (gathered) state dict to write instead of model.state_dict(), used under FSDP where the
    model's own parameters are shards (pitfalls.md §5: never save_pretrained a sharded model).
    """
    meta = dict(meta, git_commit=git_commit())
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        processor.save_pretrained(tmp)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2, default=str)
        if resume_state is not None:
            os.makedirs(os.path.join(tmp, "resume"))
            torch.save(resume_state, os.path.join(tmp, "resume", "state.pt"))
    return path


def load_resume_state(path):
    return torch.load(os.path.join(path, "resume", "state.pt"), map_location="cpu", weights_only=False)


def find_last_step(out_dir):
    """The newest finished OUT_DIR/step_XXXXXX folder (with resume state), or None."""
    if not os.path.isdir(out_dir):
        return None
    steps = [d for d in os.listdir(out_dir) if d.startswith("step_") and d[5:].isdigit()
             and os.path.exists(os.path.join(out_dir, d, "meta.json"))]
    return os.path.join(out_dir, max(steps)) if steps else None


def read_meta(path):
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)
