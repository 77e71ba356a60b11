"""Raw feature values (as a product backend sends them) → model inputs, as ``prepare`` encodes them.

Used for a request's context features and for online updates (``recsys features
upsert --set``). Vocabulary tables become a dict once; hashed values go through the
very polars expression ``prepare`` used, so an id is encoded identically online and
offline (``recsys.data.transforms.encode_expr``).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.data.transforms import OOV_INDEX, encode_expr, float_id_text
from recsys.errors import RecsysError
from recsys.schema import Encoding, Schema, SequenceFeature, Table
from services.feature_store.codec import pre_standardized, transform_dense

RawValue = str | int | float | bool | None | list[Any]
_INT64 = (-(1 << 63), 1 << 63)
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _stripped(text: str) -> str | None:
    """``text`` stripped as prepare strips a cell (polars' ``strip_chars``); empty is missing."""
    if text[:1].isspace() or text[-1:].isspace():  # Python's whitespace includes Rust's: only then ask polars
        text = pl.Series([text]).str.strip_chars()[0]
    return text or None


@lru_cache(maxsize=65536)
def _float_text(value: float) -> str | None:
    return pl.select(float_id_text(pl.lit(value, pl.Float64))).item()


def _as_text(value: Any) -> str | None:
    """The text prepare keys a scalar by in vocabularies and hashes (None: missing): strings stripped, integral
    floats with their integer spelling, booleans as polars writes them."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _stripped(value)
    if isinstance(value, float):
        return _float_text(value)
    return str(value)


def _parse_int(text: str) -> int | None:
    """An integer cell as prepare reads it (polars' strict=False cast: ASCII digits with an optional sign, in
    Int64's range; no '1_000', '3.0' or ' 7'); None: not one."""
    if not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if _INT64[0] <= value < _INT64[1] else None


def _as_int(value: Any) -> int | None:
    """The identity index prepare reads for a scalar (None: missing); ValueError where prepare quarantines."""
    if value is None:
        return None
    if isinstance(value, str):
        text = _stripped(value)
        if text is None:
            return None
        parsed = _parse_int(text)
        if parsed is None:
            raise ValueError("not an integer (identity encoding)")
        return parsed
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError("not an integer (identity encoding)")
    if not isinstance(value, (int, float)):
        raise ValueError(f"not an integer (identity encoding): {type(value).__name__}")
    index = int(value)
    if not _INT64[0] <= index < _INT64[1]:
        raise ValueError("integer out of Int64 range")
    return index


def _elements(raw: RawValue, separator: str | None) -> list[Any]:
    """A multi-valued raw value → its elements as prepare splits them: a string on ``separator`` (each part
    stripped), a list as it is; missing and empty elements dropped, so None and "" are no values at all."""
    if raw is None:
        return []
    if isinstance(raw, str) and separator:
        text = _stripped(raw)
        parts = [] if text is None else text.split(separator)
    else:
        parts = raw if isinstance(raw, list) else [raw]
    return [p for p in parts if p is not None and not (isinstance(p, str) and _stripped(p) is None)]


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
        """The model input for a raw number (a boolean is 1 or 0, as prepare reads a Boolean column); NaN and
        infinities (JSON's NaN, Infinity, 1e400) are refused, as is a value its transform cannot take or takes
        out of float32's range: a model input must be finite, and prepare quarantines such rows."""
        self._check_raw(feature)
        if raw is not None and (isinstance(raw, (list, str)) or not isinstance(raw, (int, float))):
            raise RecsysError(f"feature '{feature}': expected a number, got {type(raw).__name__}")
        shown = str(raw) if len(str(raw)) <= 30 else f"{str(raw)[:27]}..."
        try:
            if raw is not None and not math.isfinite(raw):
                raise RecsysError(f"feature '{feature}': {shown} is not a finite number")
            with np.errstate(over="ignore"):  # an overflow to float32 is refused just below, not warned about
                spec = self._dense[feature]
                value = transform_dense(spec, raw)
                # Prepare quarantines a value that is not finite in float32 before standardising, too.
                before = float(np.float32(pre_standardized(spec, raw)))
        except (OverflowError, ValueError) as exc:  # an int past float's range; log1p of a value below -1
            raise RecsysError(f"feature '{feature}': {shown} cannot be encoded ({exc})") from None
        if not (math.isfinite(value) and math.isfinite(before)):
            raise RecsysError(f"feature '{feature}': {shown} is out of range for a float32 once transformed")
        return value

    def sparse(self, feature: str, raw: RawValue) -> np.ndarray:
        """Row indices of ``feature``'s table for a raw value, as prepare encodes the cell: one index for a
        single-valued feature (missing → OOV), the present elements' indices for a multi-valued one or a
        sequence (a string split on its separator; missing and empty elements dropped). RecsysError for a
        value prepare would quarantine (an identity table's non-integer)."""
        self._check_raw(feature)
        spec = self._sparse[feature]
        table = self.schema.table(spec.table_name)
        several = isinstance(spec, SequenceFeature) or spec.separator is not None
        values = _elements(raw, spec.separator) if several else (raw if isinstance(raw, list) else [raw])
        if any(isinstance(v, (list, dict)) for v in values):
            raise RecsysError(f"feature '{feature}': expected a scalar or a flat list of values")
        try:
            return np.array([self._index(table, v) for v in values], dtype=np.int64)
        except ValueError as exc:
            shown = str(raw) if len(str(raw)) <= 30 else f"{str(raw)[:27]}..."
            raise RecsysError(f"feature '{feature}': {shown} is {exc}") from None

    def preload(self, features: list[str]) -> None:
        """Read the vocabularies of ``features`` now, so that no request waits for one (or finds it unreadable)."""
        for feature in features:
            self._check_raw(feature)
            table = self.schema.table(self._sparse[feature].table_name)
            if table.encoding is Encoding.VOCAB:
                self._vocab(table)

    def _check_raw(self, feature: str) -> None:
        if feature in self._generated:
            raise RecsysError(f"feature '{feature}' is generated: computed from its inputs, it has no raw value")
        if feature not in self._dense and feature not in self._sparse:
            raise RecsysError(f"feature '{feature}': not in the schema")

    def _index(self, table: Table, value: Any) -> int:
        if table.encoding is Encoding.IDENTITY:
            index = _as_int(value)
            assert table.cardinality is not None
            return index if index is not None and 0 <= index < table.cardinality else OOV_INDEX
        text = _as_text(value)
        if text is None:
            return OOV_INDEX
        if table.encoding is Encoding.VOCAB:
            return self._vocab(table).get(text, OOV_INDEX)
        return self._hash(table.name, text)

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
