"""The served model: an artifact ready to score (tables at fp32, int8 or int4), and the slot that swaps models
atomically.

``ServedModel.load`` reads an artifact, stores its embedding tables at the precision asked for (by default
the one the artifact records, its config's ``embedding.serving_precision``; fp32 for artifacts from before
it) and prepares everything a request needs from the artifact's schema (record codecs, context encoder,
Batch layout), so that a request reads one ``ModelSlot.current`` reference at its start and uses that model
to the end: a swap never changes the model of a request already running.

bf16: fp32 tables and weights, the forward under bf16 autocast (``recsys.precision``), scores returned as fp32;
refused where the CPU lacks native bf16 (emulated bf16 is slower than fp32 and no smaller).

int8 / int4: ``kernels.quantize.quantize_tables`` swaps every torchrec embedding collection of the model
(bags and un-pooled) for torchrec's quantised one (fbgemm rows with a per-row fp16 scale and bias, CPU
kernels of fbgemm-gpu-cpu); the MLPs stay fp32.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch
from torch import nn

from kernels.quantize import quantize_tables
from recsys import artifact as artifacts
from recsys.errors import RecsysError
from recsys.precision import autocast, require_bf16
from recsys.schema import Schema
from recsys.tasks import TaskSpec, task_spec
from recsys.types import Batch
from services.feature_store.codec import RecordLayouts, layout_fingerprint, record_layouts
from services.feature_store.encode import RawEncoder
from services.ranking.features import FeatureLayout
from services.ranking.settings import Precision


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
    model: nn.Module  # eval, CPU; embedding tables quantised for int8 / int4
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

    def probabilities(self, batch: Batch) -> torch.Tensor:
        """The task's scores (B,) as float32, the forward at this model's precision (call under inference_mode)."""
        with autocast("bf16" if self.precision is Precision.BF16 else "fp32", torch.device("cpu")):
            logits = self.model(batch)
        return self.task.link(logits.float())

    @classmethod
    def load(cls, path: str | Path, precision: Precision | str | None = None) -> ServedModel:
        """``precision`` None: the artifact's ``embedding.serving_precision``. Raises RecsysError (one line) for
        a bad artifact."""
        loaded = artifacts.load(path)
        if loaded.schema.user_key is None or loaded.schema.item_key is None:
            raise RecsysError(f"{loaded.path}: the schema has no user_key/item_key; the ranking service looks "
                              "features up by them")
        precision = Precision(precision or loaded.config.embedding.serving_precision)
        if precision is Precision.BF16:
            require_bf16(torch.device("cpu"), f"{loaded.path}: precision")
        loaded.model = quantize_tables(loaded.model, "fp32" if precision is Precision.BF16 else precision)
        features = FeatureLayout(loaded.schema, RawEncoder(loaded.schema, loaded.path), loaded.lookups)
        features.encoder.preload(features.context_keys)
        layouts = record_layouts(loaded.schema, loaded.path)
        return cls(loaded, precision, loaded.model, features, layouts, layout_fingerprint(layouts))


M = TypeVar("M")


class ModelSlot(Generic[M]):
    """The current model and the one before it; swaps are one reference assignment under a lock. Holds the ranker
    (``ServedModel``) and the retriever (``services.retrieval.service.ServedRetriever``)."""

    def __init__(self, model: M) -> None:
        self._lock = threading.Lock()
        self.current: M = model
        self.previous: M | None = None

    def swap_in(self, model: M) -> tuple[M, M | None]:
        """Make ``model`` current; the current one becomes previous. Returns (current, previous)."""
        with self._lock:
            self.previous, self.current = self.current, model
            return self.current, self.previous

    def roll_back(self) -> tuple[M, M | None]:
        with self._lock:
            if self.previous is None:
                raise RecsysError("no previous model to roll back to")
            self.previous, self.current = self.current, self.previous
            return self.current, self.previous
