"""Tampering with exported artifacts, for the tests of what loading refuses: copies as an earlier recsys exported
them, edited weights, and digests kept in step so that a test reaches the check it is about."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "weights.safetensors"


def reseal(artifact: Path, *names: str) -> None:
    """Record the current sha256 of ``names`` in the manifest, as if the artifact had been exported with them
    (no-op for a file whose digest the manifest does not record)."""
    path = artifact / "manifest.json"
    manifest = json.loads(path.read_text())
    digests = manifest.get("sha256")
    if isinstance(digests, dict):
        for name in names:
            if name in digests:
                digests[name] = hashlib.sha256((artifact / name).read_bytes()).hexdigest()
        path.write_text(json.dumps(manifest))


def rewrite(artifact: Path, name: str, data: bytes) -> None:
    """Replace one file of the artifact and reseal it: what is tested is the content, not the digest check."""
    (artifact / name).write_bytes(data)
    reseal(artifact, name)


def unsealed_copy(source: Path, into: Path) -> Path:
    """A copy as an earlier recsys exported it: no digests in the manifest, so nothing is refused as changed and
    the checks behind the digests are reached."""
    shutil.copytree(source, into)
    manifest = json.loads((into / "manifest.json").read_text())
    manifest.pop("sha256", None)
    (into / "manifest.json").write_text(json.dumps(manifest))
    return into


def edit_weights(artifact: Path, edit: Callable[[dict[str, torch.Tensor]], None], *, resealed: bool = True) -> Path:
    """``edit`` the state dict in place and save it back; ``resealed``: record the new digest too (else the
    artifact is one whose weights changed after export)."""
    state = load_file(str(artifact / WEIGHTS))
    edit(state)
    save_file(state, str(artifact / WEIGHTS))
    if resealed:
        reseal(artifact, WEIGHTS)
    return artifact


def first_mlp_layer(state: dict[str, torch.Tensor]) -> str:
    """The name of the first 2-d weight that is not an embedding table (an MLP layer)."""
    return next(name for name, tensor in state.items() if tensor.ndim == 2 and "embedding" not in name)
