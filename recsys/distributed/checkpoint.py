"""Checkpoints with torch.distributed.checkpoint: sharded model and optimizer state, written atomically.

Layout: ``RUN/checkpoints/step-000001234/`` (DCP files plus ``trainer.json``: epoch,
position in the epoch, step, process count, what the trainer asks it to record, and
the sha256 of every DCP file). Every process writes its shards into a hidden
``.tmp-step-…`` folder; only after all have finished does rank 0 rename it into
place, so a run killed mid-write leaves a temporary folder that ``latest`` ignores
and the next save removes. DCP stores tensors by their global names and offsets, so
a checkpoint written under one plan or process count loads under another
(resharding). The folder must be on storage every host can reach.

Checkpoints sit on shared storage, so they are read as untrusted input. DCP's own
reader unpickles ``.metadata`` with ``pickle.load`` and byte items with
``torch.load(weights_only=False)``: either runs any code a planted file names. Here
``.metadata`` goes through an unpickler that admits only DCP's metadata classes and
the torch types they hold, byte items through ``torch.load(weights_only=True)``, and
every file is checked against the digest recorded when it was written.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from recsys.artifact import sha256_file
from recsys.errors import RecsysError

_NAME = re.compile(r"^step-(\d{9})$")
TRAINER_FILE = "trainer.json"
METADATA_FILE = ".metadata"

# What DCP's .metadata may name, found by unpickling real checkpoints with a logging find_class: the metadata
# dataclasses, the file-system reader's storage record, tensor sizes, dtypes and layouts, and the checkpoint's
# own path (StorageMeta.checkpoint_id). Each of them only stores its arguments.
_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset(
        name for name, value in vars(dcp_metadata).items()
        if isinstance(value, type) and value.__module__ == dcp_metadata.__name__),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch": frozenset({"Size"} | {name for name, value in vars(torch).items() if isinstance(value, torch.dtype)}),
    "torch.serialization": frozenset({"_get_layout"}),
    "pathlib": frozenset({"PosixPath", "PurePosixPath"}),
}


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


def _shared_digests(folder: Path, names: list[str]) -> dict[str, str]:
    """sha256 of each named file, the hashing split over the processes (a large checkpoint has many files)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = {name: sha256_file(folder / name) for name in names[rank::world]}
    if world == 1:
        return mine
    parts: list[dict[str, str] | None] = [None] * world
    dist.all_gather_object(parts, mine)
    return {name: digest for part in parts if part for name, digest in part.items()}


def non_finite(model: nn.Module) -> str | None:
    """The first state-dict entry with a NaN or infinite value in any process (None: all finite). Collective."""
    bad = ""
    for key, value in model.state_dict().items():
        tensors = [shard.tensor for shard in value.local_shards()] if isinstance(value, ShardedTensor) else [value]
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
            bad = key
            break
    if dist.is_initialized():
        found: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(found, bad)
        bad = next((name for name in found if name), "")
    return bad or None


def of_step(directory: Path, step: int) -> Path | None:
    """The complete checkpoint of global ``step``, if kept."""
    return next((p for p in checkpoints(directory) if trainer_state(p).get("step") == step), None)


def save(directory: Path, step: int, model: nn.Module, optimizer: CombinedOptimizer,
         trainer_state: dict[str, Any], keep: int, protect_step: int | None = None) -> Path:
    """Write a checkpoint of ``step`` collectively; returns its folder once every rank's part is in place.

    ``trainer_state`` must be JSON (finite numbers); the file digests are added to it. Only the newest ``keep``
    checkpoints are kept, and the one of ``protect_step`` (the best evaluation's, which the artifact exports).
    """
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
    files = _shared_digests(tmp, sorted(p.name for p in tmp.iterdir() if p.is_file()))
    if rank == 0:
        text = json.dumps({**trainer_state, "files": files}, indent=1, allow_nan=False)
        (tmp / TRAINER_FILE).write_text(text)
        if final.exists():  # the same step saved again (e.g. epoch end right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        protected = of_step(directory, protect_step) if protect_step is not None else None
        for old in checkpoints(directory)[:-keep]:
            if old != protected:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def trainer_state(path: Path) -> dict[str, Any]:
    """The checkpoint's ``trainer.json`` (JSON only: safe to read before deciding to load the checkpoint)."""
    try:
        state = json.loads((path / TRAINER_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise RecsysError(f"{path / TRAINER_FILE}: unreadable checkpoint state ({exc})") from None
    if not isinstance(state, dict):
        raise RecsysError(f"{path / TRAINER_FILE}: expected a JSON object")
    return state


def _verify_files(path: Path, recorded: Any) -> None:
    """Every DCP file as written (same names, same sha256); collective. Older checkpoints record none."""
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise RecsysError(f"{path / TRAINER_FILE}: 'files' must map file names to sha256 digests")
    present = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != TRAINER_FILE)
    if sorted(recorded) != present:
        extra, missing = sorted(set(present) - set(recorded)), sorted(set(recorded) - set(present))
        raise RecsysError(f"{path}: the checkpoint's files changed after it was written "
                          f"(unexpected {extra[:3]}, missing {missing[:3]})")
    changed = [name for name, digest in sorted(_shared_digests(path, present).items()) if recorded[name] != digest]
    if changed:
        raise RecsysError(f"{path / changed[0]}: changed after the checkpoint was written (sha256 differs from "
                          f"{path / TRAINER_FILE})")


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's metadata: refuses every global outside ``_ALLOWED_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        if name not in _ALLOWED_GLOBALS.get(module, ()):
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


class _Refused(Exception):
    """A global the checkpoint metadata may not name."""


def read_metadata(path: Path) -> Metadata:
    """The checkpoint's ``.metadata``, rebuilt from DCP's own classes only, naming only files in ``path``."""
    file = path / METADATA_FILE
    try:
        with file.open("rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except _Refused as exc:
        raise RecsysError(f"{file}: refused to load: it names {exc}, which checkpoint metadata never holds "
                          "(a planted or corrupt file?)") from None
    except OSError as exc:
        raise RecsysError(f"{file}: unreadable checkpoint metadata ({exc.strerror})") from None
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is a bad file, not a bug of ours
        raise RecsysError(f"{file}: not valid checkpoint metadata ({type(exc).__name__}: {exc})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise RecsysError(f"{file}: not valid checkpoint metadata (holds a {type(metadata).__name__})")
    for info in metadata.storage_data.values():
        # DCP opens PATH/relative_path: a name with a separator could read any file on the host.
        if not (isinstance(info, _StorageInfo) and isinstance(info.relative_path, str)
                and Path(info.relative_path).name == info.relative_path and info.relative_path not in ("", ".", "..")
                and not info.transform_descriptors):
            raise RecsysError(f"{file}: not valid checkpoint metadata (storage entry {info!r})")
    return metadata


class _Reader(FileSystemReader):
    """DCP's file-system reader, handed metadata already read by ``read_metadata``."""

    def __init__(self, path: Path, metadata: Metadata) -> None:
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if getattr(self._metadata, "storage_meta", None) is None:
            self._metadata.storage_meta = StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata


class _Planner(DefaultLoadPlanner):
    """DCP's default load planner, except that byte items are unpickled with ``weights_only=True``."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as exc:
            refused = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch's wording varies between versions
            what = f"it names {refused.group(1)}" if refused else "it needs more than weights-only unpickling"
            raise RecsysError(f"{self._path}: refused to load item '{fqn}': {what}, which a checkpoint never "
                              "holds (a planted or corrupt file?)") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded


def load(path: Path, model: nn.Module, optimizer: CombinedOptimizer) -> dict[str, Any]:
    """Load a checkpoint into the (already sharded) model and optimizer; returns the trainer state.

    Refuses (RecsysError, one line) a file changed since it was written, metadata naming anything but DCP's own
    classes, byte items that need more than ``weights_only`` unpickling, and non-finite weights.
    """
    state_file = trainer_state(path)
    _verify_files(path, state_file.get("files"))
    metadata = read_metadata(path)
    # DCP loads in place: torch optimizers create their state lazily, at their first step, so make it now
    # (a zero-gradient step) or there would be nothing to load Adam's moments into.
    for _, part in optimizer.optimizers:
        if isinstance(part, KeyedOptimizerWrapper):
            part.init_state()
            part.zero_grad(set_to_none=True)
    state = _state(model, optimizer)
    try:
        dcp.load(state, storage_reader=_Reader(path, metadata), planner=_Planner(path))
    except CheckpointException as exc:  # every rank's failures, gathered by DCP
        failures = [error for error, _ in exc.failures.values()]
        ours = next((error for error in failures if isinstance(error, RecsysError)), None)
        if ours is not None:
            raise RecsysError(str(ours)) from None
        first = str(failures[0]).splitlines()[0] if failures else "unknown failure"
        raise RecsysError(f"{path}: unreadable checkpoint ({type(failures[0]).__name__}: {first})") from None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    torch.set_rng_state(state["rng"])
    bad = non_finite(model)
    if bad is not None:
        raise RecsysError(f"{path}: weights '{bad}' hold NaN or infinite values; resume from an earlier checkpoint")
    return state_file
