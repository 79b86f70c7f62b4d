"""Load a Qwen2.5-VL policy for training or eval: from a hub id, a local HF folder, or "tiny".

Every script checks --model with `check_model_path` before anything else loads, then calls `load_policy`: the plain
HF model in one process, or under torchrun an FSDP2-sharded model that rank 0 alone reads from disk. "tiny" is the
random ~1M-parameter model the toy runs use (nanorevisual/toy.py builds it once under runs/tiny-model/); any other
value goes through `from_pretrained` exactly as a real `Qwen/Qwen2.5-VL-7B-Instruct` folder would.

Pitfalls handled here (docs/pitfalls.md): the checkpoint's generation_config.json sampling defaults are replaced
by a neutral config (pitfall 7); the sharded build warms up with a forward and backward before any optimizer
exists (pitfall 12) and broadcasts the non-persistent rotary buffers (pitfall 17).
"""

import glob
import json
import os
import re

import torch
import torch.distributed

from nanorevisual import dist, toy
from nanorevisual.common import UserError
from nanorevisual.processor import load_processor, stop_token_ids

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


def check_model_path(path):
    """The --model value every script accepts, checked before anything loads: "tiny" (built on first
    use), an HF folder with a Qwen2.5-VL config.json and weight files, or a hub id (owner/name) when
    the hub can be reached. Returns the path to load."""
    if path == "tiny":
        return toy.ensure_tiny_model()
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise UserError(f"--model {path}: folder has no config.json (expected a Hugging Face checkpoint folder)")
        try:
            with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
                model_type = json.load(f).get("model_type")
        except (OSError, ValueError, AttributeError) as e:  # unreadable, not JSON, not an object
            why = type(e).__name__
            raise UserError(f"--model {path}: unreadable config.json ({why})") from None
        if model_type != "qwen2_5_vl":
            raise UserError(f"--model {path}: config.json is model_type {model_type!r}; this "
                            "project trains Qwen2.5-VL checkpoints ('qwen2_5_vl')")
        weights = ("*.safetensors", "*.bin", "*.index.json")
        if not any(glob.glob(os.path.join(path, pattern)) for pattern in weights):
            raise UserError(f"--model {path}: no weight files (*.safetensors, *.bin) in it")
        return path
    if os.path.exists(path):
        raise UserError(f"--model {path}: is a file; expected a checkpoint folder, a hub id or 'tiny'")
    if not HUB_ID.match(path) or os.path.isdir(path.split("/")[0]):  # runs/nope: a local path, not an owner
        raise UserError(f"--model {path}: no such folder (and not a hub id like Qwen/Qwen2.5-VL-7B-Instruct)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache
        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise UserError(f"--model {path}: no such folder, and HF_HUB_OFFLINE=1 with no cached copy of that hub id")
    return path


def is_toy_model(path):
    """The tiny model and its descendants (text hidden size <= 512) get the toy presets of every script."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
    except OSError:
        return False  # a hub id: a real model
    return cfg.get("text_config", cfg).get("hidden_size", 4096) <= 512


def set_neutral_generation_config(model, processor):
    """Replace the checkpoint's generation config by one that carries only the stop and pad ids.

    HF generate fills every sampling field a call leaves unset from model.generation_config, and a real
    Qwen2.5-VL-7B-Instruct folder ships repetition_penalty 1.05, top_k 1, top_p 0.001, temperature 0.1 (pitfall 7):
    rollouts would then be drawn from a penalised distribution while the loss scores the plain one. With this
    neutral config the distribution is exactly what the caller's flags say, on every rank, and the checkpoints we
    write carry it, so the next stage starts clean.
    """
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig(eos_token_id=stop_token_ids(processor),
                                               pad_token_id=processor.tokenizer.pad_token_id,
                                               bos_token_id=model.generation_config.bos_token_id)


def load_model_and_processor(path, *, dtype=torch.float32, grad_checkpointing=False, device="cpu", min_pixels=None,
                             max_pixels=None, load_model=True):
    """The plain (unsharded) model and its processor; model is None when load_model=False."""
    path = check_model_path(path)
    processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
    if not load_model:
        return None, processor
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device)
    if grad_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    set_neutral_generation_config(model, processor)
    return model, processor


def load_policy(path, device, ddp, *, grad_checkpointing=False, freeze_vision_tower=False, min_pixels=None,
                max_pixels=None):
    """(model, processor) for training or eval: sharded under torchrun (rank 0 reads, the others receive), the
    plain HF model otherwise. fp32 master weights either way (bf16 compute comes from FSDP's mixed precision or
    from autocast). The vision tower is frozen before sharding when asked (paper §5.1: the TRL stage)."""
    if not ddp:
        model, processor = load_model_and_processor(path, device=device, grad_checkpointing=grad_checkpointing,
                                                    min_pixels=min_pixels, max_pixels=max_pixels)
        if freeze_vision_tower:
            freeze_vision(model)
        return model, processor
    model = load_sharded_model(path, device, grad_checkpointing=grad_checkpointing,
                               freeze_vision_tower=freeze_vision_tower)
    processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
    set_neutral_generation_config(model, processor)  # on every rank (pitfall 7)
    warmup_forward(model, processor, device)
    return model, processor


def load_sharded_model(path, device, *, grad_checkpointing=False, freeze_vision_tower=False):
    """Build the model under FSDP without N full copies in CPU RAM: every rank builds it on the meta device and
    shards it; rank 0 alone reads the weights from disk and broadcasts them (the FSDP2 example's pattern).
    Non-persistent buffers (rotary inv_freq) are not in the state dict, so rank 0 broadcasts those too."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    if grad_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if freeze_vision_tower:
        freeze_vision(model)
    dist.shard_model(model, device)
    model.to_empty(device=device)
    full, buffers = {}, dict(model.named_buffers())
    if torch.distributed.get_rank() == 0:
        cpu_model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        full = cpu_model.state_dict()
        for name, buf in cpu_model.named_buffers():
            buffers[name].copy_(buf)
        del cpu_model
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buf in buffers.values():
        torch.distributed.broadcast(buf, src=0)
    return model


def warmup_forward(model, processor, device):
    """One tiny forward (+ backward when something is trainable) before training starts.

    FSDP2 initialises lazily: unshard() before the first forward fails, and after a meta-device build + to_empty
    the first backward re-registers the sharded parameters as new objects, so an optimizer built before it would
    hold stale tensors (pitfall 12; measured: parameter ids change once, in the first backward)."""
    ids = processor.tokenizer("hi", return_tensors="pt")["input_ids"].to(device)
    trainable = any(p.requires_grad for p in model.parameters())
    with torch.set_grad_enabled(trainable):
        logits = model(input_ids=ids, use_cache=False).logits
    if trainable:
        (logits.sum() * 0.0).backward()
        for p in model.parameters():
            p.grad = None


def freeze_vision(model):
    """Freeze the vision tower (paper §5.1: TRL stage). Frozen params must also be left out of the optimizer."""
    for p in model.model.visual.parameters():
        p.requires_grad_(False)


def count_params(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
