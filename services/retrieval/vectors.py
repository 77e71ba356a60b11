"""A retriever artifact's item vectors (interface 2 of issue 14): ``retrieval/items.parquet`` (``item_key``, row i
↔ vector i) and ``retrieval/item_vectors.safetensors`` (one float32 tensor ``vectors`` (N, d)).

``read_item_vectors`` reads them with ``recsys.artifact.load_item_vectors`` (the manifest's digests, shapes and
finite values checked) and adds the sha256 of the vectors file: the index built from them records it, and an
index is served only with the vectors it was built from.
"""

from __future__ import annotations

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
    keys, tensor, similarity = artifacts.load_item_vectors(path)  # digests, shapes, finite values checked
    vectors = np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)
    return ItemVectors(path, list(keys), vectors, Similarity(str(similarity)), artifacts.sha256_file(vectors_file))

