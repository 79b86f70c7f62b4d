"""Distributed plumbing: torchrun detection, print0, named reductions, FSDP2 sharding. A script
runs as one plain process, or under torchrun with FSDP2 on every block (N=1 too): nccl + bf16 on
CUDA, gloo + fp32 on CPU.
"""

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from nanorevisual.common import exit_now

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def is_ddp():
    return all(k in os.environ for k in TORCHRUN_ENV)


def compute_init(timeout_s=1800):
    """-> (ddp, rank, local_rank, world_size, device)."""
    if not is_ddp():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return False, 0, 0, 1, device
    rank, local_rank, world_size = (int(os.environ[k]) for k in TORCHRUN_ENV)
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
    """The last line of a script. Under torchrun it does not return: it destroys the process group
    and leaves without the interpreter's teardown (os._exit), because a gloo worker thread can drop
    the last reference to a finished collective's tensors after Python began tearing down; taking
    the GIL then kills that thread inside a noexcept destructor: SIGABRT (pitfall 24)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        exit_now(0)


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_dict(values, device="cpu", op="sum"):
    """{name: float} summed (or maxed) over ranks."""
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


# ------------------------------------------------------------------------------------------------
# FSDP2

def shard_model(model, device, mixed_precision=True):
    """fully_shard every block of model._no_split_modules (decoder layers, vision blocks), then
    the root; bf16 params and fp32 gradient reduction on CUDA, fp32 on CPU."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy as Policy
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    kwargs = {"mesh": init_device_mesh(device.type, (dist.get_world_size(),))}
    if mixed_precision and device.type == "cuda":
        kwargs["mp_policy"] = Policy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    names = set(model._no_split_modules or [])
    for block in [m for m in model.modules() if type(m).__name__ in names]:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    register_fsdp_forward_method(model, "generate")  # pitfall 10
    return model


def fsdp_modules(model):
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def reshard_all(model):
    """Every FSDP unit back in its sharded state: the root stays unsharded after a no-grad forward
    (pitfall 13)."""
    for m in fsdp_modules(model):
        m.reshard()


def full_state_dict(model):
    """A full CPU state dict on rank 0 ({} elsewhere); collective, so every rank must call it."""
    reshard_all(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def grad_norm_value(norm):
    """The global norm from clip_grad_norm_, which returns a DTensor under FSDP2."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


@contextlib.contextmanager
def gathered_params(model):
    """Every FSDP unit all-gathered once and kept so inside the block (a rollout phase), instead of
    again at every decode step (pitfall 14). A no-op for a plain model."""
    modules = fsdp_modules(model) if dist.is_available() and dist.is_initialized() else []
    for m in modules:
        m.set_reshard_after_forward(False)
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True)
