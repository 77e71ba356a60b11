"""The served model: an artifact ready to score (optionally int8), and the slot that swaps models atomically.

``ServedModel.load`` reads an artifact, quantises its embedding tables for
``int8`` and prepares everything a request needs from the artifact's schema
(record codecs, context encoder, Batch layout), so that a request reads one
``ModelSlot.current`` reference at its start and uses that model to the end:
a swap never changes the model of a request already running.

int8: torchrec's ``quantize_embeddings`` swaps each ``EmbeddingBagCollection``
for torchrec's quantised one (fbgemm int8 rows with a per-row scale and bias,
CPU kernels of fbgemm-gpu-cpu); the MLPs stay fp32.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recsys import artifact as artifacts
from recsys.errors import RecsysError
from recsys.schema import Schema
from recsys.tasks import TaskSpec, task_spec
from services.feature_store.codec import RecordLayouts, layout_fingerprint, record_layouts
from services.feature_store.encode import RawEncoder
from services.ranking.features import FeatureLayout
from services.ranking.settings import Precision


def quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` with its torchrec EmbeddingBagCollections swapped, in place, for int8 ones (fbgemm rows with a
    per-row scale and bias); the fp32 tables are dropped."""
    from torchrec.inference.modules import quantize_embeddings

    with warnings.catch_warnings():  # torchrec calls torch.ao's quantize_dynamic, deprecated in favour of torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_embeddings(model, dtype=torch.qint8, inplace=True)
    quantized.eval()
    return quantized


def check_artifact(path: Path) -> None:
    """The cheap checks of an artifact (files present, schema readable, keys declared), without its weights."""
    from recsys.schema import Schema

    if not path.is_dir():
        raise RecsysError(f"--artifact {path}: artifact directory not found")
    for name in (artifacts.MANIFEST, artifacts.WEIGHTS, artifacts.CONFIG):
        if not (path / name).is_file():
            raise RecsysError(f"{path / name}: missing from the artifact")
    schema = Schema.load(path / artifacts.SCHEMA)
    if schema.user_key is None or schema.item_key is None:
        raise RecsysError(f"{path / artifacts.SCHEMA}: no user_key/item_key; the ranking service looks features "
                          "up by them")


@dataclass
class ServedModel:
    """One artifact, loaded and prepared for serving."""

    artifact: artifacts.Artifact
    precision: Precision
    model: nn.Module  # eval, CPU; embedding tables quantised for Precision.INT8
    features: FeatureLayout
    layouts: RecordLayouts  # what the feature-store records it reads hold (see codec.record_layouts)
    fingerprint: str  # their digest: it reads the feature versions materialised with the same one

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def schema(self) -> Schema:
        return self.artifact.schema

    @property
    def keys(self) -> list[str]:
        return self.features.keys

    @property
    def task(self) -> TaskSpec:
        return task_spec(self.artifact.schema)

    @classmethod
    def load(cls, path: str | Path, precision: Precision = Precision.FP32) -> ServedModel:
        """Raises RecsysError (one line) for a bad artifact."""
        precision = Precision(precision)
        loaded = artifacts.load(path)
        if loaded.schema.user_key is None or loaded.schema.item_key is None:
            raise RecsysError(f"{loaded.path}: the schema has no user_key/item_key; the ranking service looks "
                              "features up by them")
        if precision is Precision.INT8:
            loaded.model = quantize_int8(loaded.model)
        features = FeatureLayout(loaded.schema, RawEncoder(loaded.schema, loaded.path))
        for key in features.context_keys:  # read the context vocabularies now, not on a request
            features.encoder.sparse(key, "")
        layouts = record_layouts(loaded.schema, loaded.path)
        return cls(loaded, precision, loaded.model, features, layouts, layout_fingerprint(layouts))


class ModelSlot:
    """The current model and the one before it; swaps are one reference assignment under a lock."""

    def __init__(self, model: ServedModel) -> None:
        self._lock = threading.Lock()
        self.current: ServedModel = model
        self.previous: ServedModel | None = None

    def swap_in(self, model: ServedModel) -> tuple[ServedModel, ServedModel | None]:
        """Make ``model`` current; the current one becomes previous. Returns (current, previous)."""
        with self._lock:
            self.previous, self.current = self.current, model
            return self.current, self.previous

    def roll_back(self) -> tuple[ServedModel, ServedModel | None]:
        with self._lock:
            if self.previous is None:
                raise RecsysError("no previous model to roll back to")
            self.previous, self.current = self.current, self.previous
            return self.current, self.previous
