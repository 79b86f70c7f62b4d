"""Load a Qwen2.5-VL policy for training or eval from a hub id or a local HF folder: the plain
model in one process, or under torchrun an FSDP2-sharded model that rank 0 alone reads from disk.
Scripts check --model with `check_model_path` before anything loads ("tiny" is theirs to resolve).
"""

import glob
import json
import os
import re

import torch
import torch.distributed

from nanorevisual import dist
from nanorevisual.common import UserError
from nanorevisual.processor import load_processor, stop_token_ids

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
NON_REENTRANT = {"use_reentrant": False}  # activation checkpointing


def check_model_path(path):
    """--model checked before anything loads: an HF folder with a Qwen2.5-VL config.json and
    weight files, or a hub id (owner/name) the hub can serve. Returns the path to load."""
    if os.path.isdir(path):
        config = os.path.join(path, "config.json")
        if not os.path.exists(config):
            raise UserError(f"--model {path}: folder has no config.json "
                            "(expected a Hugging Face checkpoint folder)")
        try:
            with open(config, encoding="utf-8") as f:
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
        raise UserError(f"--model {path}: is a file; expected a checkpoint folder, a hub id "
                        "or 'tiny'")
    if not HUB_ID.match(path) or os.path.isdir(path.split("/")[0]):  # runs/x: a path, not an owner
        raise UserError(f"--model {path}: no such folder "
                        "(and not a hub id like Qwen/Qwen2.5-VL-7B-Instruct)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache
        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise UserError(f"--model {path}: no such folder, and HF_HUB_OFFLINE=1 "
                            "with no cached copy of that hub id")
    return path


def is_toy_model(path):
    """The tiny model and its descendants (text hidden size <= 512) get the toy presets."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
    except OSError:
        return False  # a hub id: a real model
    return cfg.get("text_config", cfg).get("hidden_size", 4096) <= 512


def set_neutral_generation_config(model, processor):
    """Replace the checkpoint's generation config by one with only the stop and pad ids, so
    sampling is exactly what the caller's flags say; checkpoints carry it too (pitfall 7)."""
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig(eos_token_id=stop_token_ids(processor),
                                               pad_token_id=processor.tokenizer.pad_token_id,
                                               bos_token_id=model.generation_config.bos_token_id)


def load_model_and_processor(path, *, dtype=torch.float32, grad_checkpointing=False, device="cpu",
                             min_pixels=None, max_pixels=None, load_model=True):
    """The plain (unsharded) model and its processor; model is None when load_model=False."""
    path = check_model_path(path)
    processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
    if not load_model:
        return None, processor
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype,
                                                        attn_implementation="sdpa").to(device)
    if grad_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=NON_REENTRANT)
        model.config.use_cache = False
    set_neutral_generation_config(model, processor)
    return model, processor


def load_policy(path, device, ddp, *, grad_checkpointing=False, freeze_vision_tower=False,
                min_pixels=None, max_pixels=None):
    """(model, processor): sharded under torchrun, the plain model otherwise; fp32 master weights
    (bf16 compute comes from FSDP's mixed precision or autocast)."""
    if not ddp:
        model, processor = load_model_and_processor(
            path, device=device, grad_checkpointing=grad_checkpointing, min_pixels=min_pixels,
            max_pixels=max_pixels)
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
    """FSDP2 model without N full copies in CPU RAM: every rank builds it on the meta device and
    shards it; rank 0 alone reads the weights and broadcasts them (the FSDP2 example's pattern)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        config = AutoConfig.from_pretrained(path)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    if grad_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=NON_REENTRANT)
    if freeze_vision_tower:
        freeze_vision(model)  # before sharding
    dist.shard_model(model, device)
    model.to_empty(device=device)
    full, buffers = {}, dict(model.named_buffers())
    if torch.distributed.get_rank() == 0:
        cpu_model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        full = cpu_model.state_dict()
        for name, buf in cpu_model.named_buffers():
            buffers[name].copy_(buf)
        del cpu_model
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=options)
    for buf in buffers.values():  # rotary inv_freq is not in the state dict (pitfall 17)
        torch.distributed.broadcast(buf, src=0)
    return model


def warmup_forward(model, processor, device):
    """One tiny forward (+ backward when something is trainable) before any optimizer exists:
    the first backward re-registers the sharded parameters (pitfall 12)."""
    ids = processor.tokenizer("hi", return_tensors="pt")["input_ids"].to(device)
    trainable = any(p.requires_grad for p in model.parameters())
    with torch.set_grad_enabled(trainable):
        logits = model(input_ids=ids, use_cache=False).logits
    if trainable:
        (logits.sum() * 0.0).backward()
        for p in model.parameters():
            p.grad = None


def freeze_vision(model):
    """Freeze the vision tower (paper §5.1, TRL); frozen params must stay out of the optimizer."""
    for p in model.model.visual.parameters():
        p.requires_grad_(False)


def count_params(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
