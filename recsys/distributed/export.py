"""Unsharded weights of a sharded model, assembled on rank 0 for the artifact."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


@torch.no_grad()
def gather_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every entry of the model's state dict as a full CPU tensor on rank 0 (an empty dict elsewhere).

    Collective: every rank must call it. A sharded table is gathered shard by shard
    (``ShardedTensor.gather``); replicated tensors are taken from rank 0.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
            value.gather(dst=0, out=full, dtype=value.dtype)  # without dtype the shards travel as float32
            if full is not None:
                out[key] = full
        elif rank == 0:
            out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


@torch.no_grad()
def full_tensor(model: nn.Module, key: str) -> torch.Tensor:
    """The full CPU value of one state-dict entry on every rank (a sharded table gathered on rank 0, then
    broadcast). Collective: every rank must call it with the same key."""
    value = model.state_dict()[key]
    if not isinstance(value, ShardedTensor):
        full = value.detach().to("cpu", copy=True)
    else:
        rank = dist.get_rank() if dist.is_initialized() else 0
        full = torch.empty(value.size(), dtype=value.dtype)
        value.gather(dst=0, out=full if rank == 0 else None, dtype=value.dtype)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(full, src=0)
    return full
