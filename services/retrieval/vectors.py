"""A retriever artifact's item vectors (interface 2 of issue 14): ``retrieval/items.parquet`` (``item_key``, row i
↔ vector i) and ``retrieval/item_vectors.safetensors`` (one float32 tensor ``vectors`` (N, d)).

``read_item_vectors`` uses ``recsys.artifact.load_item_vectors`` when the artifact module has it (it checks the
manifest's digests too) and otherwise reads the two files itself with the same checks on shapes and values.
Either way the result carries the sha256 of the vectors file: the index built from them records it, and an index
is served only with the vectors it was built from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys import artifact as artifacts
from recsys.errors import RecsysError
from recsys.models.retriever import Similarity

RETRIEVAL_DIR = "retrieval"
ITEMS_FILE = f"{RETRIEVAL_DIR}/items.parquet"
VECTORS_FILE = f"{RETRIEVAL_DIR}/item_vectors.safetensors"


@dataclass
class ItemVectors:
    path: Path  # the artifact
    keys: list[str]  # item keys, row i ↔ vectors[i]
    vectors: np.ndarray  # (N, d) float32, C-contiguous
    similarity: Similarity
    sha256: str  # of the vectors file

    @property
    def items(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def read_item_vectors(artifact: str | Path) -> ItemVectors:
    """The artifact's item keys and vectors; one-line RecsysError naming the file for anything wrong."""
    path = Path(artifact)
    if not path.is_dir():
        raise RecsysError(f"--artifact {path}: artifact directory not found")
    vectors_file = path / VECTORS_FILE
    if not vectors_file.is_file():
        raise RecsysError(f"{vectors_file}: missing: {path} is not a retriever artifact (no item vectors)")
    loader = getattr(artifacts, "load_item_vectors", None)
    if loader is not None:
        keys, tensor, similarity = loader(path)
        vectors = np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)
        return ItemVectors(path, list(keys), vectors, Similarity(str(similarity)),
                           artifacts.sha256_file(vectors_file))
    return _read_files(path)


def _read_files(path: Path) -> ItemVectors:
    """The two files read directly (until ``recsys.artifact.load_item_vectors`` exists)."""
    import polars as pl
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    vectors_file, items_file, manifest_file = path / VECTORS_FILE, path / ITEMS_FILE, path / artifacts.MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as exc:
        raise RecsysError(f"{manifest_file}: unreadable ({str(exc).splitlines()[0]})") from None
    retrieval = manifest.get("retrieval") if isinstance(manifest, dict) else None
    if not isinstance(retrieval, dict):
        raise RecsysError(f"{manifest_file}: no 'retrieval' section (similarity, items, dim)")
    try:
        similarity = Similarity(retrieval.get("similarity"))
    except ValueError:
        raise RecsysError(f"{manifest_file}: retrieval.similarity {retrieval.get('similarity')!r} is not one of "
                          f"{', '.join(s.value for s in Similarity)}") from None
    sha256 = artifacts.sha256_file(vectors_file)
    recorded = manifest.get("sha256") or {}
    for name, digest in ((VECTORS_FILE, sha256), (ITEMS_FILE, None)):
        want = recorded.get(name) if isinstance(recorded, dict) else None
        if want is not None:
            have = digest or artifacts.sha256_file(path / name)
            if want != have:
                raise RecsysError(f"{path / name}: changed after export (its sha256 differs from the one in "
                                  f"{artifacts.MANIFEST})")
    try:
        tensors = load_file(str(vectors_file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RecsysError(f"{vectors_file}: unreadable ({exc})") from None
    vectors = tensors.get("vectors")
    if vectors is None or vectors.ndim != 2 or vectors.dtype != np.float32:
        raise RecsysError(f"{vectors_file}: expected one float32 (N, d) tensor 'vectors'")
    if not np.isfinite(vectors).all():
        raise RecsysError(f"{vectors_file}: holds NaN or infinite values")
    try:
        keys = pl.read_parquet(items_file, columns=["item_key"])["item_key"].cast(pl.String).to_list()
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise RecsysError(f"{items_file}: unreadable ({str(exc).splitlines()[0]})") from None
    if len(keys) != vectors.shape[0]:
        raise RecsysError(f"{items_file}: {len(keys)} item keys for {vectors.shape[0]} vectors")
    for field, value in (("items", vectors.shape[0]), ("dim", vectors.shape[1])):
        if retrieval.get(field) not in (None, value):
            raise RecsysError(f"{manifest_file}: retrieval.{field} is {retrieval.get(field)} but {vectors_file} "
                              f"has {value}")
    return ItemVectors(path, keys, np.ascontiguousarray(vectors), similarity, sha256)
