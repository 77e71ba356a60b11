"""Feature transforms shared by data preparation and serving.

Each function turns raw values into model inputs exactly as ``prepare`` did, so
the ranking service can encode a request's raw features the same way.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.schema import DenseFeature, Encoding, Table

OOV_INDEX = 0
_HASH_SEED = 0x5EED


def dense_expr(feature: DenseFeature, standardize: bool = True) -> pl.Expr:
    """Raw Float64 column → fill, clip, log1p and (if ``standardize``) standardise, as Float32."""
    return dense_values(pl.col(feature.name), feature, standardize).alias(feature.name)


def dense_values(raw: pl.Expr, feature: DenseFeature, standardize: bool = True) -> pl.Expr:
    """``dense_expr`` of any expression (prepare checks raw values with it before the statistics exist)."""
    expr = raw.cast(pl.Float64).fill_null(feature.fill_value)
    if feature.clip_min is not None:
        expr = expr.clip(lower_bound=feature.clip_min)
    if feature.transform.uses_log1p:
        expr = expr.log1p()
    if standardize and feature.transform.standardizes:
        if feature.mean is None or feature.std is None:
            raise ValueError(f"dense feature '{feature.name}' has no mean/std yet")
        std = feature.std if feature.std > 0 else 1.0
        expr = (expr - feature.mean) / std
    return expr.cast(pl.Float32)


def float_id_text(raw: pl.Expr) -> pl.Expr:
    """Float ids → the text vocabularies and hashes are keyed by: an integral value keeps its integer spelling
    ("3", not "3.0": a pandas id column with nulls is float), NaN is missing, others as polars writes them.

    Shared by ``prepare`` (a float id column) and the serving encoder (a JSON number), so both key alike."""
    integral = raw.is_finite() & (raw == raw.floor())
    return (pl.when(raw.is_nan()).then(None)
            .otherwise(pl.coalesce(pl.when(integral).then(raw.cast(pl.Int64, strict=False).cast(pl.String)),
                                   raw.cast(pl.String))))


def encode_expr(column: str, table: Table, vocab: pl.DataFrame | None, is_list: bool) -> pl.Expr:
    """Raw values (scalar or list column) → Int64 row indices of ``table``."""
    element = pl.element() if is_list else pl.col(column)
    if table.encoding is Encoding.VOCAB:
        if vocab is None:
            raise ValueError(f"table '{table.name}' needs its vocabulary")
        encoded = element.cast(pl.String).replace_strict(
            vocab["value"], vocab["index"], default=OOV_INDEX, return_dtype=pl.Int64
        )
    elif table.encoding is Encoding.HASH:
        assert table.hash_buckets is not None
        buckets = table.hash_buckets - 1
        encoded = pl.when(element.is_null()).then(pl.lit(OOV_INDEX, pl.Int64)).otherwise(
            (element.cast(pl.String).hash(seed=_HASH_SEED) % buckets).cast(pl.Int64) + 1
        )
    else:
        assert table.cardinality is not None
        value = element.cast(pl.Int64)
        encoded = pl.when(value.is_between(0, table.cardinality - 1)).then(value).otherwise(OOV_INDEX)
    encoded = encoded.fill_null(OOV_INDEX)
    if is_list:
        return pl.col(column).list.eval(encoded).alias(column)
    return encoded.alias(column)


def build_vocab(counts: pl.DataFrame, min_count: int) -> pl.DataFrame:
    """Value counts (value, count) → vocabulary (value, index, count); index 0 stays for OOV.

    Most frequent first, ties by value, so the same data always gives the same indices.
    """
    return (
        counts.filter(pl.col("count") >= min_count)
        .sort(["count", "value"], descending=[True, False])
        .with_row_index("index", offset=1)
        .select(pl.col("value"), pl.col("index").cast(pl.Int64), pl.col("count").cast(pl.Int64))
    )


def uniform_from_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per global row ordinal (splitmix64): splits independent of chunking."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
