"""The contract of a feature method: what it reads (``FeatureData``) and what it returns (``Ranking``)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from recsys.schema import DenseFeature, Derivation, Schema

FieldKind = Literal["dense", "sparse"]


class NoOptions(BaseModel):
    """A method without settings: any key is an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class FeatureData:
    """A sample of a prepared data set's train rows, as methods see it.

    ``frame`` holds every candidate field and the label, prepared values: dense fields as float32
    (transformed as prepare did), sparse fields as int64 table rows (0: missing or out of vocabulary).
    Candidates are the single-valued dense and sparse features (generated ones included); list-valued
    features (multi-valued sparse, sequences) are not ranked and always kept (``kept_unranked``).
    """

    data_dir: Path
    schema: Schema
    frame: pl.DataFrame  # sampled train rows: fields + label
    label: str
    fields: list[str]  # candidate fields, in schema order (dense, then sparse)
    kinds: dict[str, FieldKind]
    cardinality: dict[str, int]  # sparse fields: rows of their table
    rows_total: int  # train rows in the data set (the sample may hold fewer)
    seed: int = 0
    valid: pl.DataFrame | None = None  # a sample of valid rows, same columns (held-out gains)
    kept_unranked: list[str] = field(default_factory=list)  # list-valued features, and candidates left out

    def column(self, name: str, frame: pl.DataFrame | None = None) -> np.ndarray:
        return (self.frame if frame is None else frame)[name].to_numpy()

    def labels(self, frame: pl.DataFrame | None = None) -> np.ndarray:
        return (self.frame if frame is None else frame)[self.label].to_numpy().astype(np.float64)

    @property
    def dense_fields(self) -> list[str]:
        return [f for f in self.fields if self.kinds[f] == "dense"]

    @property
    def sparse_fields(self) -> list[str]:
        return [f for f in self.fields if self.kinds[f] == "sparse"]


@dataclass
class Ranking:
    """A method's verdict: a score per candidate field (higher = more useful) and its own cut."""

    method: str
    scores: dict[str, float]  # every candidate field
    seconds: float = 0.0
    suggested: list[str] | None = None  # the fields the method would keep by itself (None: cut at the knee)
    interactions: list[tuple[str, str]] | None = None  # interaction selectors: the feature pairs kept
    details: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable, method-specific

    def order(self) -> list[str]:
        """Fields best first; ties by name so the order is reproducible."""
        return sorted(self.scores, key=lambda f: (-self.scores[f], f))


@dataclass
class GeneratedFeature:
    """A proposed new column: its name, recipe, kind, train statistics and the gain that earned its place."""

    name: str
    recipe: Derivation
    kind: FieldKind
    gain: float
    dense: DenseFeature | None = None  # filled by the writer: the schema entry with its mean/std
    details: dict[str, Any] = field(default_factory=dict)


class FeatureMethod(ABC):
    """One paper's way of ranking fields. Subclasses set ``name``, ``paper`` and ``Options``."""

    name: ClassVar[str]
    paper: ClassVar[str]  # "Authors, venue year: title", shown by --help and in outputs
    Options: ClassVar[type[BaseModel]] = NoOptions
    trains_model: ClassVar[bool] = False  # reads the whole data set through a model (optfs, optfeature)
    quick: ClassVar[dict[str, Any]] = {}  # settings of a small, fast run: smoke checks and the contract suite

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    @abstractmethod
    def rank(self, data: FeatureData) -> Ranking:
        """Score every field of ``data.fields``."""

    def timed_rank(self, data: FeatureData) -> Ranking:
        start = time.perf_counter()
        ranking = self.rank(data)
        ranking.seconds = time.perf_counter() - start
        missing = [f for f in data.fields if f not in ranking.scores]
        if missing:
            raise AssertionError(f"feature method '{self.name}' scored no '{missing[0]}'")
        return ranking


class FeatureGenerator(FeatureMethod):
    """A method that also proposes new columns (``recsys features generate``)."""

    @abstractmethod
    def generate(self, data: FeatureData) -> list[GeneratedFeature]:
        """New features with their recipes, best first; each must improve on the base fields."""
