"""Distributed plumbing: torchrun detection, print0, (sum, count) reductions, FSDP2 sharding.

The same script runs as `python train_x.py` (one process, plain model) and as `torchrun --nproc_per_node=N
train_x.py` (FSDP2 on every block, also at N=1): nccl + bf16 on CUDA, gloo + fp32 on CPU.
"""

import datetime
import os

import torch
import torch.distributed as dist


def is_ddp():
    return all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def compute_init(timeout_s=1800):
    """-> (ddp, rank, local_rank, world_size, device). Picks nccl on CUDA, gloo on CPU."""
    if not is_ddp():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return False, 0, 0, 1, device
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = datetime.timedelta(seconds=timeout_s)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device, timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group(backend="gloo", timeout=timeout)
    return True, rank, local_rank, world_size, device


def compute_cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_dict(values, device="cpu", op="sum"):
    """{name: float} summed (or maxed) over ranks; named, so a reader never counts positions in a list."""
    names = list(values)
    t = torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=device)  # (K,)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return dict(zip(names, t.tolist()))


def all_reduce_sum(values, device="cpu"):
    """Sum a list of floats over ranks (identity without a process group). Use for (sum, count) pairs."""
    t = torch.tensor(values, dtype=torch.float64, device=device)  # (K,)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value, device="cpu"):
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def all_gather_objects(obj):
    """[obj from rank 0, obj from rank 1, ...] (a one-element list without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------------------------
# FSDP2

def shard_model(model, device, mixed_precision=True):
    """fully_shard every block named in model._no_split_modules (decoder layers, vision blocks), then the root.

    bf16 params / fp32 gradient reduction on CUDA; fp32 on CPU. `generate` is registered as an FSDP forward
    method, otherwise transformers' image pre-encoding before the first forward hits sharded root params
    (pitfalls.md §5: "got mixed torch.Tensor and DTensor").
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = None
    if mixed_precision and device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs = {"mesh": mesh, **({"mp_policy": mp} if mp else {})}
    names = set(model._no_split_modules or [])
    for block in [m for m in model.modules() if type(m).__name__ in names]:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    register_fsdp_forward_method(model, "generate")
    return model


def fsdp_modules(model):
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def reshard_all(model):
    """Put every FSDP unit back in its sharded state. The root unit stays unsharded after a no-grad forward
    (eval, rollouts), and while it is, model.parameters() yields the unsharded tensors, not the DTensors that
    the optimizer holds."""
    for m in fsdp_modules(model):
        m.reshard()


def full_state_dict(model):
    """A full CPU state dict on rank 0 ({} elsewhere); collective, so every rank must call it."""
    reshard_all(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def grad_norm_value(norm):
    """clip_grad_norm_ returns a DTensor under FSDP2; the logged value must be the global norm."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


class gathered_params:
    """Context manager: all-gather every FSDP unit once and keep it gathered (e.g. for a whole rollout phase).

    With reshard_after_forward=True every decode step of `generate` would all-gather every layer again. Here each
    unit is unsharded once, stays unsharded through all forwards, and is resharded on exit, so the full bf16 copy
    lives only during the block. A no-op for a plain (unsharded) model.
    """

    def __init__(self, model):
        self.modules = fsdp_modules(model) if dist.is_available() and dist.is_initialized() else []

    def __enter__(self):
        for m in self.modules:
            m.set_reshard_after_forward(False)
        for m in self.modules:
            m.unshard()
        return self

    def __exit__(self, *exc):
        for m in self.modules:
            m.reshard()
            m.set_reshard_after_forward(True)


def load_sharded_model(path, device, *, grad_checkpointing=False, freeze_vision_tower=False, mixed_precision=True):
    """Build the model under FSDP without N full copies in CPU RAM: every rank builds it on the meta device and
    shards it; rank 0 alone reads the weights from disk and broadcasts them (the FSDP2 example's pattern).

    Non-persistent buffers (rotary inv_freq) are not in the state dict, so rank 0 broadcasts those too.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForImageTextToText

    from nanorevisual.model import freeze_vision, resolve_model_path

    path = resolve_model_path(path) if dist.get_rank() == 0 else path
    barrier()  # rank 0 may have just built the tiny model folder
    path = resolve_model_path(path)
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    if grad_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if freeze_vision_tower:
        freeze_vision(model)
    shard_model(model, device, mixed_precision=mixed_precision)
    model.to_empty(device=device)
    full, buffers = {}, dict(model.named_buffers())
    if dist.get_rank() == 0:
        cpu_model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        full = cpu_model.state_dict()
        for name, buf in cpu_model.named_buffers():
            buffers[name].copy_(buf)
        del cpu_model
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buf in buffers.values():
        dist.broadcast(buf, src=0)
    del full
    return model


def warmup_forward(model, processor, device):
    """One tiny forward (+ backward when something is trainable) before training starts.

    FSDP2 initialises lazily: unshard() before the first forward fails (pitfalls.md §5), and after a meta-device
    build + to_empty the first backward re-registers the sharded parameters as new objects, so an optimizer
    built before it would hold stale tensors (measured: parameter ids change once, in the first backward)."""
    ids = processor.tokenizer("hi", return_tensors="pt")["input_ids"].to(device)
    trainable = any(p.requires_grad for p in model.parameters())
    with torch.set_grad_enabled(trainable):
        logits = model(input_ids=ids, use_cache=False).logits
    if trainable:
        (logits.sum() * 0.0).backward()
        for p in model.parameters():
            p.grad = None


def save_resume_state(path, model, optimizer, extra):
    """Sharded resume state with torch.distributed.checkpoint: each rank writes its own shards of the model and
    optimizer (no rank ever holds the full optimizer), rank 0 adds the small `extra` dict."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    reshard_all(model)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    torch.save(extra, os.path.join(path, f"extra_rank{dist.get_rank()}.pt"))  # RNG state differs per rank


def load_resume_state(path, model, optimizer):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch.load(os.path.join(path, f"extra_rank{dist.get_rank()}.pt"), weights_only=False)


def load_policy(path, device, ddp, *, grad_checkpointing=False, freeze_vision_tower=False, min_pixels=None,
                max_pixels=None):
    """(model, processor) for training or eval: sharded under torchrun (rank 0 reads, the others receive),
    the plain HF model otherwise. fp32 master weights either way (bf16 compute comes from FSDP's mixed precision
    or from autocast)."""
    from nanorevisual.model import freeze_vision, load_model_and_processor
    if not ddp:
        model, processor = load_model_and_processor(path, device=device, grad_checkpointing=grad_checkpointing,
                                                    min_pixels=min_pixels, max_pixels=max_pixels)
        if freeze_vision_tower:
            freeze_vision(model)
        return model, processor
    model = load_sharded_model(path, device, grad_checkpointing=grad_checkpointing,
                               freeze_vision_tower=freeze_vision_tower)
    _, processor = load_model_and_processor(path, load_model=False, min_pixels=min_pixels, max_pixels=max_pixels)
    from nanorevisual.model import set_neutral_generation_config
    set_neutral_generation_config(model, processor)  # on every rank (pitfall 7)
    warmup_forward(model, processor, device)
    return model, processor
