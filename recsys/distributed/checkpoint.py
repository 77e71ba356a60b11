"""Checkpoints with torch.distributed.checkpoint: sharded model and optimizer state, written atomically.

Layout: ``RUN/checkpoints/step-000001234/`` (DCP files plus ``trainer.json``: epoch,
position in the epoch, step, process count). Every process writes its shards into
a hidden ``.tmp-step-…`` folder; only after all have finished does rank 0 rename it
into place, so a run killed mid-write leaves a temporary folder that ``latest``
ignores and the next save removes. DCP stores tensors by their global names and
offsets, so a checkpoint written under one plan or process count loads under
another (resharding). The folder must be on storage every host can reach.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from recsys.errors import RecsysError

_NAME = re.compile(r"^step-(\d{9})$")
TRAINER_FILE = "trainer.json"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _state(model: nn.Module, optimizer: CombinedOptimizer) -> dict[str, Any]:
    """What a checkpoint holds, as DCP saves it and loads into it in place."""
    return {"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": torch.get_rng_state()}


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(directory: Path) -> Path | None:
    found = checkpoints(directory)
    return found[-1] if found else None


def save(directory: Path, step: int, model: nn.Module, optimizer: CombinedOptimizer,
         trainer_state: dict[str, Any], keep: int) -> Path:
    """Write a checkpoint of ``step`` collectively; returns its folder once every rank's part is in place."""
    final = directory / f"step-{step:09d}"
    tmp = directory / f".tmp-step-{step:09d}"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    state = _state(model, optimizer)
    dcp.save(state, checkpoint_id=tmp)
    _barrier()
    if rank == 0:
        (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state, indent=1))
        if final.exists():  # the same step saved again (e.g. epoch end right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load(path: Path, model: nn.Module, optimizer: CombinedOptimizer) -> dict[str, Any]:
    """Load a checkpoint into the (already sharded) model and optimizer; returns the trainer state."""
    try:
        trainer_state = json.loads((path / TRAINER_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise RecsysError(f"{path}: unreadable checkpoint ({exc})") from None
    # DCP loads in place: torch optimizers create their state lazily, at their first step, so make it now
    # (a zero-gradient step) or there would be nothing to load Adam's moments into.
    for _, part in optimizer.optimizers:
        if isinstance(part, KeyedOptimizerWrapper):
            part.init_state()
            part.zero_grad(set_to_none=True)
    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    torch.set_rng_state(state["rng"])
    return trainer_state
