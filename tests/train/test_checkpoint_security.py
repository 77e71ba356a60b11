"""A checkpoint is untrusted input (shared storage): planted metadata or byte items never run code, and a file
changed after it was written is refused, each with one line naming the file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

from recsys.distributed import checkpoint
from recsys.errors import RecsysError
from tests.conftest import train_cli

SETTINGS = ("trainer.batch_size=256", "trainer.max_steps=6", "trainer.checkpoint_every=3")


class Payload:
    """Unpickling it runs ``touch MARKER``: what a planted file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture(scope="module")
def trained(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    result = train_cli(small_ctr, out, *SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, free to tamper with."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _latest(run: Path) -> Path:
    found = checkpoint.latest(run / "checkpoints")
    assert found is not None
    return found


def _reseal(folder: Path) -> None:
    """What an attacker who can write the folder does as well: record the planted files' digests."""
    state = json.loads((folder / checkpoint.TRAINER_FILE).read_text())
    state["files"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
                      if p.is_file() and p.name != checkpoint.TRAINER_FILE}
    (folder / checkpoint.TRAINER_FILE).write_text(json.dumps(state))


def _resume(data: Path, run: Path, marker: Path | None = None) -> list[str]:
    result = train_cli(data, run, *SETTINGS, extra=("--resume",))
    assert marker is None or not marker.exists(), "the planted file ran its code"
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines


def test_planted_metadata_runs_no_code(run: Path, small_ctr: Path, tmp_path: Path) -> None:
    folder = _latest(run)
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    _reseal(folder)
    [line] = _resume(small_ctr, run, marker)
    assert str(folder / ".metadata") in line and "posix.system" in line and "refused" in line


def test_planted_byte_item_runs_no_code(run: Path, small_ctr: Path, tmp_path: Path) -> None:
    """Metadata of DCP's own classes only, declaring the RNG state a byte item: DCP's planner would
    ``torch.load(weights_only=False)`` it."""
    folder = _latest(run)
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    (folder / "__payload.distcp").write_bytes(payload.getvalue())
    with (folder / ".metadata").open("rb") as handle:
        metadata = pickle.load(handle)  # the genuine file, read by the test
    metadata.state_dict_metadata["rng"] = BytesStorageMetadata()
    metadata.storage_data = {index: info for index, info in metadata.storage_data.items() if index.fqn != "rng"}
    metadata.storage_data[MetadataIndex("rng")] = _StorageInfo("__payload.distcp", 0, len(payload.getvalue()))
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    _reseal(folder)
    [line] = _resume(small_ctr, run, marker)
    assert str(folder) in line and "'rng'" in line and "posix.system" in line


def test_changed_file_is_refused(run: Path, small_ctr: Path) -> None:
    folder = _latest(run)
    shard = next(folder.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    [line] = _resume(small_ctr, run)
    assert str(shard) in line and "changed after the checkpoint was written" in line


@pytest.mark.parametrize("edit", [
    lambda info: _StorageInfo("../../trainer.json", info.offset, info.length),
    lambda info: _StorageInfo("/etc/passwd", 0, 10),
    lambda info: _StorageInfo(info.relative_path, info.offset, info.length, ["zstd"]),
])
def test_metadata_naming_files_elsewhere_is_refused(run: Path, edit) -> None:  # type: ignore[no-untyped-def]
    folder = _latest(run)
    with (folder / ".metadata").open("rb") as handle:
        metadata = pickle.load(handle)
    index = next(iter(metadata.storage_data))
    metadata.storage_data[index] = edit(metadata.storage_data[index])
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(RecsysError, match=r"\.metadata: not valid checkpoint metadata \(storage entry") as error:
        checkpoint.read_metadata(folder)
    assert "\n" not in str(error.value)


def test_genuine_metadata_reads(trained: Path) -> None:
    metadata = checkpoint.read_metadata(_latest(trained))
    assert "rng" in metadata.state_dict_metadata and metadata.storage_data
