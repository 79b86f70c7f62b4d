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
    (docs/pitfalls.md, pitfall 10: "got mixed torch.Tensor and DTensor").
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
