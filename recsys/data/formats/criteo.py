"""Criteo display-advertising logs: label, 13 integer features, 26 hashed categoricals per line.

Reads the Kaggle ``train.txt`` and Terabyte ``day_N`` files (tab-separated, no
header, optionally gzip) and the comma-separated variant with a
``label,I1..I13,C1..C26`` header that many tutorials ship. A directory input
means every data file in it, in natural name order (day_0, day_1, ..., day_23 is time order).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from recsys.data.lines import data_files, iter_line_chunks
from recsys.data.pipeline import MAX_FIELD_BYTES, RawPart, bad_rows, too_long
from recsys.errors import RecsysError
from recsys.schema import DenseFeature, Entity, Label, Schema, SparseFeature, Table

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_NAMES = [f"I{i}" for i in range(1, NUM_DENSE + 1)]
SPARSE_NAMES = [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
FIELDS = ["label", *DENSE_NAMES, *SPARSE_NAMES]


def default_schema(embedding_dim: int = 16, min_count: int = 2) -> Schema:
    """Criteo has no user or item ids: every field is context; categoricals get thresholded vocabularies."""
    return Schema(
        dense=[DenseFeature(name=n, entity=Entity.CONTEXT) for n in DENSE_NAMES],
        sparse=[SparseFeature(name=n, entity=Entity.CONTEXT) for n in SPARSE_NAMES],
        tables=[Table(name=n, embedding_dim=embedding_dim, min_count=min_count) for n in SPARSE_NAMES],
        labels=[Label(name="label")],
    )


def input_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = data_files(path)
        if not files:
            raise RecsysError(f"{path}: directory has no input files")
        return files
    if not path.exists():
        raise RecsysError(f"{path}: input not found")
    return [path]


class CriteoSource:
    """Yields parsed chunks of Criteo lines; malformed lines become bad rows with their reason.

    A line with a field over ``max_field_bytes`` is malformed too: Criteo values are a few bytes long.
    """

    def __init__(self, path: Path, schema: Schema | None = None, max_field_bytes: int = MAX_FIELD_BYTES) -> None:
        if max_field_bytes < 1:
            raise RecsysError(f"--max-field-bytes must be at least 1, got {max_field_bytes}")
        self.files = input_files(path)
        self.max_field_bytes = max_field_bytes
        self.schema = schema or default_schema()
        wanted = {c for c in self.schema.columns}
        missing = [c for c in wanted if c not in FIELDS]
        if missing:
            raise RecsysError(f"schema column '{missing[0]}' is not a Criteo field (expected {FIELDS[0]}, I1..I13, C1..C26)")

    def parts(self) -> Iterator[RawPart]:
        for path in self.files:
            yield from self.file_parts(path)

    def tasks(self) -> list[Callable[[], Iterator[RawPart]]]:
        """One independent piece of parsing per input file (``--engine ray`` runs them in parallel)."""
        return [functools.partial(self.file_parts, path) for path in self.files]

    def file_parts(self, path: Path) -> Iterator[RawPart]:
        separator: str | None = None
        for chunk in iter_line_chunks(path):
            lines = chunk.frame
            if separator is None:
                separator = _detect_separator(lines["text"].head(1000))
                first = lines["text"][0] if lines.height else ""
                if first.split(separator, 1)[0].strip().lower() == "label":
                    lines = lines.slice(1)  # a header line, not a row
            yield _parse(lines, separator, chunk.source, self.max_field_bytes)


def _detect_separator(sample: pl.Series) -> str:
    """Tab (Criteo's own files) unless the sample has more commas (the CSV variant); stray lines don't decide it."""
    tabs = sample.str.count_matches("\t", literal=True).sum()
    commas = sample.str.count_matches(",", literal=True).sum()
    return "," if commas > tabs else "\t"


def _parse(lines: pl.DataFrame, separator: str, source: str, max_field_bytes: int) -> RawPart:
    fields = lines.with_columns(
        pl.col("text").str.count_matches(separator, literal=True).alias("separators"),
        pl.col("text").str.splitn(separator, len(FIELDS)).struct.rename_fields(FIELDS).alias("f"),
    ).unnest("f")
    checks: list[tuple[pl.Expr, str]] = [
        (pl.col("undecodable"), "undecodable bytes (not UTF-8)"),
        (pl.col("separators") != len(FIELDS) - 1,
         pl.format("wrong field count: {} (expected {})", pl.col("separators") + 1, pl.lit(len(FIELDS)))),
    ]
    # Only a line longer than the limit can hold a field that is: most chunks skip the 40 checks.
    if lines.height and lines["text"].str.len_bytes().max() > max_field_bytes:  # type: ignore[operator]
        checks += [(pl.col(name).str.len_bytes() > max_field_bytes,
                    too_long(f"field '{name}'", pl.col(name).str.len_bytes(), max_field_bytes)) for name in FIELDS]
    checks.append((~pl.col("label").str.strip_chars().is_in(["0", "1"]), "label is not 0 or 1"))
    typed = [pl.col("label").str.strip_chars().cast(pl.Float64, strict=False)]
    for name in DENSE_NAMES:
        raw = pl.col(name).str.strip_chars()
        value = raw.cast(pl.Float64, strict=False)
        checks.append(((raw != "") & (value.is_null() | ~value.is_finite()), f"non-numeric dense value in {name}"))
        typed.append(pl.when(raw == "").then(None).otherwise(value).alias(name))
    for name in SPARSE_NAMES:
        raw = pl.col(name).str.strip_chars()
        typed.append(pl.when(raw == "").then(None).otherwise(raw).alias(name))

    reason: pl.Expr = pl.lit(None, pl.String)
    for condition, why in reversed(checks):
        reason = pl.when(condition.fill_null(True)).then(why if isinstance(why, pl.Expr) else pl.lit(why)).otherwise(reason)
    checked = fields.with_columns(reason.alias("reason"))
    bad = checked.filter(pl.col("reason").is_not_null())
    good = checked.filter(pl.col("reason").is_null()).select(typed)
    return RawPart(rows=good, bad=bad_rows(source, bad["line"], bad["reason"], bad["text"]))
