"""Unsharded weights of a sharded model, assembled on rank 0 for the artifact."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def _gathered(value: torch.Tensor, rank: int) -> torch.Tensor | None:
    """A state-dict entry as a full CPU tensor on rank 0 (None elsewhere for a sharded one, which is gathered shard
    by shard with ``ShardedTensor.gather``; a replicated one is copied on every rank). Collective when sharded."""
    if isinstance(value, ShardedTensor):
        full = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
        value.gather(dst=0, out=full, dtype=value.dtype)  # without dtype the shards travel as float32
        return full
    return value.detach().to("cpu", copy=True).contiguous()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


@torch.no_grad()
def gather_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every entry of the model's state dict as a full CPU tensor on rank 0 (an empty dict elsewhere).

    Collective: every rank must call it. Replicated tensors are taken from rank 0.
    """
    rank = _rank()
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor) or rank == 0:
            full = _gathered(value, rank)
            if rank == 0:
                assert full is not None
                out[key] = full
    return out


@torch.no_grad()
def full_tensor(model: nn.Module, key: str) -> torch.Tensor:
    """The full CPU value of one state-dict entry on every rank (gathered on rank 0, then broadcast).
    Collective: every rank must call it with the same key."""
    value = model.state_dict()[key]
    full = _gathered(value, _rank())
    if full is None:
        full = torch.empty(value.size(), dtype=value.dtype)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(full, src=0)
    return full
