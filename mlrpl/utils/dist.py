"""Distributed helpers: native DDP launched by ``torchrun`` (gloo on CPU, NCCL on GPU)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device_kind: str = "cpu") -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (identity on one process)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from every process along dim 0 (rank order)."""
    if not is_dist():
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, 0)


def all_gather_varlen(t: torch.Tensor) -> torch.Tensor:
    """Concatenate tensors whose first dimension differs between processes."""
    if not is_dist():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = all_gather_cat(n).tolist()
    pad = max(sizes) - t.shape[0]
    if pad:
        t = torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))], 0)
    full = all_gather_cat(t)
    m = max(sizes)
    return torch.cat([full[i * m: i * m + s] for i, s in enumerate(sizes)], 0)


def rows_by_index(batches, n: int) -> list[torch.Tensor]:
    """Whole-dataset tensors from a pass over this process's shard: `batches` yields
    ``(index, *tensors)`` per batch (dataset indices first); every process gets the (n, ...)
    tensors (CPU) with each row placed at its index (a sampler's padded repeats land on their own
    row). Every process must yield the same number of batches (DistributedSampler pads)."""
    out = None
    for index, *values in batches:
        index = all_gather_varlen(index.long())
        values = [all_gather_varlen(v) for v in values]
        if out is None:
            out = [torch.zeros((n, *v.shape[1:]), dtype=v.dtype) for v in values]
        for o, v in zip(out, values):
            o[index.cpu()] = v.cpu()
    return out


def broadcast_buffers(module, src: int = 0) -> None:
    """Give every process rank `src`'s buffers (BatchNorm statistics drift apart between
    processes; DDP re-broadcasts them only at its next training forward)."""
    if is_dist():
        for buf in module.buffers():
            dist.broadcast(buf, src=src)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable object on every process (the object itself without DDP)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup():
    if is_dist():
        dist.destroy_process_group()
