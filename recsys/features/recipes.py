"""Generated features: computing a recipe (``schema.Derivation``) identically offline and online.

A generated feature is a function of other features' *prepared* values (dense values as
transformed by prepare, sparse values as table rows), so the ranking service computes it
from the very user/item/context inputs it already assembled, and ``features generate``
computes it from the prepared Parquet, with this one numpy function (``derive``) in both
places: the same float64 arithmetic on the same float32 inputs gives the same bits.

Statistics a recipe needs (a group's train mean, an id's train frequency, bin edges, the
output's mean/std) are measured on the train split by ``fit`` and frozen into the schema
or into a lookup file ``generated/<feature>.parquet`` (key int64, value float64; key -1
holds the value for ids never seen in train), whose digest is in the recipe and checked
when read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.errors import RecsysError
from recsys.schema import (
    DENSE_OPS, DenseFeature, DenseTransform, Derivation, DerivedOp, Encoding, Entity, Schema, SparseFeature, Table,
)

GENERATED_DIR = "generated"
DEFAULT_KEY = -1  # the lookup row used for ids missing from train
DIV_EPSILON = 1e-6
VALUE_LIMIT = 1e6  # generated dense values are clipped to ±this before standardising
BIN_COUNT = 16
GROUP_SMOOTHING = 10.0  # group_mean shrinks a group of n rows towards the global mean: (sum + m·mean) / (n + m)

GeneratedSpec = DenseFeature | SparseFeature


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Lookups:
    """The lookup tables of generated features under ``root`` (a data directory or an artifact), each read once,
    checked against its recipe's digest; tables fitted in memory can be added with ``put``."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self._tables: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}

    def put(self, recipe: Derivation, keys: np.ndarray, values: np.ndarray, default: float) -> None:
        order = np.argsort(keys, kind="stable")
        self._tables[_lookup_key(recipe)] = (keys[order].astype(np.int64), values[order].astype(np.float64),
                                             float(default))

    def table(self, recipe: Derivation) -> tuple[np.ndarray, np.ndarray, float]:
        key = _lookup_key(recipe)
        if key not in self._tables:
            self._tables[key] = self._read(recipe)
        return self._tables[key]

    def _read(self, recipe: Derivation) -> tuple[np.ndarray, np.ndarray, float]:
        name = recipe.lookup_file or ""
        if self.root is None:
            raise RecsysError(f"generated feature lookup '{name}': no directory to read it from")
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts or relative.parts[0] != GENERATED_DIR:
            raise RecsysError(f"generated feature lookup '{name}': must be a path under {GENERATED_DIR}/")
        path = self.root / relative
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RecsysError(f"{path}: generated feature lookup unreadable ({exc.strerror or exc})") from None
        if recipe.lookup_sha256 is not None and sha256_bytes(data) != recipe.lookup_sha256:
            raise RecsysError(f"{path}: digest differs from the schema's lookup_sha256 (file changed or corrupt)")
        try:
            table = pq.read_table(pa.BufferReader(data))
            keys = table.column("key").to_numpy().astype(np.int64)
            values = table.column("value").to_numpy().astype(np.float64)
        except (pa.ArrowException, KeyError, ValueError) as exc:
            raise RecsysError(f"{path}: not a lookup table (key int64, value float64): {exc}") from None
        default_rows = keys == DEFAULT_KEY
        if default_rows.sum() != 1 or not np.isfinite(values).all() or len(np.unique(keys)) != len(keys):
            raise RecsysError(f"{path}: malformed lookup (needs unique keys, one key {DEFAULT_KEY}, finite values)")
        default = float(values[default_rows][0])
        order = np.argsort(keys[~default_rows], kind="stable")
        return keys[~default_rows][order], values[~default_rows][order], default


def _lookup_key(recipe: Derivation) -> str:
    return f"{recipe.lookup_file}@{recipe.lookup_sha256}"


def _looked_up(table: tuple[np.ndarray, np.ndarray, float], ids: np.ndarray) -> np.ndarray:
    keys, values, default = table
    if len(keys) == 0:
        return np.full(len(ids), default)
    position = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return np.where(keys[position] == ids, values[position], default)


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def raw_value(recipe: Derivation, columns: Mapping[str, np.ndarray], lookups: Lookups) -> np.ndarray:
    """The recipe's value before standardisation: float64 for dense ops, int64 row ids for sparse ones."""
    inputs = [np.asarray(columns[name]) for name in recipe.inputs]
    op = recipe.op
    if op in (DerivedOp.FREQ, DerivedOp.CROSS):
        ids = [x.astype(np.int64) for x in inputs]
    else:
        ids = []
    if op is DerivedOp.FREQ:
        return _looked_up(lookups.table(recipe), ids[0])
    if op is DerivedOp.GROUP_MEAN:
        return _looked_up(lookups.table(recipe), inputs[1].astype(np.int64))
    if op is DerivedOp.CROSS:
        a, b = ids
        missing = (a <= 0) | (b <= 0)
        if recipe.stride is not None:
            combined = (a - 1) * (recipe.stride - 1) + b
        else:
            assert recipe.buckets is not None
            mixed = _splitmix(_splitmix(a) ^ b.astype(np.uint64))
            combined = (mixed % np.uint64(recipe.buckets - 1)).astype(np.int64) + 1
        return np.where(missing, 0, combined).astype(np.int64)
    x = inputs[0].astype(np.float64)
    if op is DerivedOp.BIN:
        assert recipe.edges is not None
        return np.searchsorted(np.asarray(recipe.edges, dtype=np.float64), x, side="right").astype(np.int64) + 1
    if op is DerivedOp.ABS:
        out = np.abs(x)
    elif op is DerivedOp.SQUARE:
        out = x * x
    else:
        y = inputs[1].astype(np.float64)
        if op is DerivedOp.ADD:
            out = x + y
        elif op is DerivedOp.SUB:
            out = x - y
        elif op is DerivedOp.MUL:
            out = x * y
        else:  # DIV: zero where the divisor is (nearly) zero
            safe = np.abs(y) > DIV_EPSILON
            out = np.divide(x, np.where(safe, y, 1.0)) * safe
    return np.clip(out, -VALUE_LIMIT, VALUE_LIMIT)


def derive(feature: GeneratedSpec, columns: Mapping[str, np.ndarray], lookups: Lookups) -> np.ndarray:
    """A generated feature's prepared value from its inputs' prepared values: (N,) float32 or int64."""
    recipe = feature.derived
    if recipe is None:
        raise RecsysError(f"feature '{feature.name}' is not generated")
    raw = raw_value(recipe, columns, lookups)
    if isinstance(feature, SparseFeature):
        return raw
    if feature.transform.standardizes:
        if feature.mean is None or feature.std is None:
            raise RecsysError(f"generated feature '{feature.name}' has no mean/std")
        raw = (raw - feature.mean) / (feature.std if feature.std > 0 else 1.0)
    return raw.astype(np.float32)


def derive_frame(schema: Schema, frame: pl.DataFrame, lookups: Lookups) -> pl.DataFrame:
    """``frame`` (prepared rows holding the generated features' inputs) with every generated feature added."""
    needed = {name for f in schema.derived_features for name in f.derived.inputs}  # type: ignore[union-attr]
    columns = {name: frame[name].to_numpy() for name in needed}
    return frame.with_columns([pl.Series(f.name, derive(f, columns, lookups)) for f in schema.derived_features])


# ---- fitting on train -----------------------------------------------------------------------------------------

def fit(name: str, recipe: Derivation, frame: pl.DataFrame, schema: Schema, lookups: Lookups,
        embedding_dim: int | None = None) -> tuple[GeneratedSpec, Table | None, pl.DataFrame | None]:
    """Measure what ``recipe`` needs on ``frame`` (train rows) and return the schema entry for feature ``name``,
    its table (sparse), and its lookup rows to write (freq, group_mean). ``lookups`` learns the fitted table."""
    recipe = recipe.model_copy(deep=True)
    lookup: pl.DataFrame | None = None
    if recipe.op in (DerivedOp.FREQ, DerivedOp.GROUP_MEAN):
        recipe.lookup_file = f"{GENERATED_DIR}/{name}.parquet"
        recipe.lookup_sha256 = None
        if recipe.op is DerivedOp.FREQ:
            counts = frame.group_by(recipe.inputs[0]).len()
            keys = counts[recipe.inputs[0]].to_numpy().astype(np.int64)
            values = counts["len"].to_numpy() / max(len(frame), 1)
            default = 0.0
        else:
            value, group = recipe.inputs
            overall = float(frame[value].cast(pl.Float64).mean() or 0.0)
            stats = frame.group_by(group).agg(pl.col(value).cast(pl.Float64).sum().alias("s"), pl.len().alias("n"))
            keys = stats[group].to_numpy().astype(np.int64)
            values = (stats["s"].to_numpy() + GROUP_SMOOTHING * overall) / (stats["n"].to_numpy() + GROUP_SMOOTHING)
            default = overall
        lookups.put(recipe, keys, values, default)
        lookup = pl.DataFrame({"key": np.concatenate([keys, [DEFAULT_KEY]]).astype(np.int64),
                               "value": np.concatenate([values, [default]]).astype(np.float64)}).sort("key")
    elif recipe.op is DerivedOp.BIN:
        x = frame[recipe.inputs[0]].cast(pl.Float64).to_numpy()
        edges = np.unique(np.quantile(x, np.linspace(0, 1, BIN_COUNT + 1)[1:-1])) if len(x) else np.array([0.0])
        recipe.edges = [float(e) for e in edges]
    elif recipe.op is DerivedOp.CROSS and recipe.stride is None and recipe.buckets is None:
        a, b = (schema.feature_table(n).cardinality or 1 for n in recipe.inputs)
        if (a - 1) * (b - 1) + 1 <= 1 << 20:
            recipe.stride = max(b, 2)
        else:
            recipe.buckets = 1 << 20
    dim = embedding_dim or schema.default_embedding_dim
    if recipe.op in DENSE_OPS:
        raw = raw_value(recipe, {n: frame[n].to_numpy() for n in recipe.inputs}, lookups)
        mean, std = (float(raw.mean()), float(raw.std())) if len(raw) else (0.0, 1.0)
        feature: GeneratedSpec = DenseFeature(name=name, entity=Entity.DERIVED, transform=DenseTransform.STANDARDIZE,
                                              clip_min=None, mean=mean, std=std, derived=recipe)
        return feature, None, lookup
    if recipe.op is DerivedOp.BIN:
        rows = len(recipe.edges or []) + 2
    elif recipe.stride is not None:
        a = schema.feature_table(recipe.inputs[0]).cardinality or 1
        rows = (a - 1) * (recipe.stride - 1) + 1
    else:
        rows = recipe.buckets or 2
    table = Table(name=name, encoding=Encoding.IDENTITY, cardinality=max(rows, 2), embedding_dim=dim)
    return SparseFeature(name=name, entity=Entity.DERIVED, derived=recipe), table, lookup
