"""Raw feature values (as a product backend sends them) → model inputs, as ``prepare`` encodes them.

Used for a request's context features and for online updates (``recsys features
upsert --set``). Vocabulary tables become a dict once; hashed values go through the
very polars expression ``prepare`` used, so an id is encoded identically online and
offline (``recsys.data.transforms.encode_expr``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.data.transforms import OOV_INDEX, encode_expr
from recsys.errors import RecsysError
from recsys.schema import Encoding, Schema, Table
from services.feature_store.codec import transform_dense

RawValue = str | int | float | bool | None | list[Any]


def _as_text(value: Any) -> str:
    """The string polars' ``cast(pl.String)`` gives for a scalar: how vocabularies were keyed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


class RawEncoder:
    """Encodes raw values of any feature of ``schema``; vocabularies are read from ``root`` (artifact or data dir)."""

    def __init__(self, schema: Schema, root: Path) -> None:
        self.schema, self.root = schema, Path(root)
        # Generated features have no raw value to encode: they are computed from their inputs' encoded values.
        self._dense = {f.name: f for f in schema.dense if f.derived is None}
        self._sparse = {f.name: f for f in [*schema.sparse, *schema.sequences] if getattr(f, "derived", None) is None}
        self._generated = {f.name for f in schema.derived_features}
        self._vocabs: dict[str, dict[str, int]] = {}
        self._hash = lru_cache(maxsize=65536)(self._hash_uncached)

    def knows(self, feature: str) -> bool:
        return feature in self._dense or feature in self._sparse

    def dense(self, feature: str, raw: RawValue) -> float:
        """The model input for a raw number; NaN and infinities (JSON's NaN, Infinity, 1e400) are refused, as
        is a value its transform cannot take or takes out of float32's range: a model input must be finite."""
        self._check_raw(feature)
        if raw is not None and (isinstance(raw, (bool, list, str)) or not isinstance(raw, (int, float))):
            raise RecsysError(f"feature '{feature}': expected a number, got {type(raw).__name__}")
        shown = str(raw) if len(str(raw)) <= 30 else f"{str(raw)[:27]}..."
        try:
            if raw is not None and not math.isfinite(raw):
                raise RecsysError(f"feature '{feature}': {shown} is not a finite number")
            with np.errstate(over="ignore"):  # an overflow to float32 is refused just below, not warned about
                value = transform_dense(self._dense[feature], raw)
        except (OverflowError, ValueError) as exc:  # an int past float's range; log1p of a value below -1
            raise RecsysError(f"feature '{feature}': {shown} cannot be encoded ({exc})") from None
        if not math.isfinite(value):
            raise RecsysError(f"feature '{feature}': {shown} is out of range for a float32 once transformed")
        return value

    def sparse(self, feature: str, raw: RawValue) -> np.ndarray:
        """Row indices of ``feature``'s table for a raw value (or list of values; None → OOV)."""
        self._check_raw(feature)
        spec = self._sparse[feature]
        table = self.schema.table(spec.table_name)
        values = raw if isinstance(raw, list) else [raw]
        if isinstance(raw, str) and spec.separator:
            values = raw.split(spec.separator)
        if any(isinstance(v, (list, dict)) for v in values):
            raise RecsysError(f"feature '{feature}': expected a scalar or a flat list of values")
        return np.array([self._index(table, v) for v in values], dtype=np.int64)

    def _check_raw(self, feature: str) -> None:
        if feature in self._generated:
            raise RecsysError(f"feature '{feature}' is generated: computed from its inputs, it has no raw value")
        if feature not in self._dense and feature not in self._sparse:
            raise RecsysError(f"feature '{feature}': not in the schema")

    def _index(self, table: Table, value: Any) -> int:
        if value is None:
            return OOV_INDEX
        if table.encoding is Encoding.VOCAB:
            return self._vocab(table).get(_as_text(value), OOV_INDEX)
        if table.encoding is Encoding.HASH:
            return self._hash(table.name, _as_text(value))
        try:
            index = int(value)
        except (TypeError, ValueError):
            return OOV_INDEX
        assert table.cardinality is not None
        return index if 0 <= index < table.cardinality else OOV_INDEX

    def _vocab(self, table: Table) -> dict[str, int]:
        if table.name not in self._vocabs:
            path = self.root / (table.vocab_file or f"vocab/{table.name}.parquet")
            try:
                frame = pl.read_parquet(path, columns=["value", "index"])
            except (OSError, pl.exceptions.PolarsError) as exc:
                raise RecsysError(f"{path}: vocabulary of table '{table.name}' unreadable ({exc})") from None
            self._vocabs[table.name] = dict(zip(frame["value"].to_list(), frame["index"].to_list(), strict=True))
        return self._vocabs[table.name]

    def _hash_uncached(self, table_name: str, text: str) -> int:
        table = self.schema.table(table_name)
        frame = pl.DataFrame({"v": [text]}).select(encode_expr("v", table, None, is_list=False))
        return int(frame["v"][0])
