"""Generic CSV and Parquet input: any table whose columns a hand-written schema describes.

``recsys data prepare --format csv|parquet --input PATH --schema schema.yaml``
reads one file or a directory of files (``*.csv``, ``*.csv.gz``, ``*.tsv``,
``*.tsv.gz`` or ``*.parquet``, in name order), streaming: CSV in chunks of
lines, Parquet in record batches, never a whole file in memory.

Each schema entry reads its ``source`` column (its name by default) and is
typed by the raw-part contract of ``recsys.data.pipeline``:

============================  ==================================================
dense feature                 Float64; an empty cell or null is missing
label                         Float64; must be present and numeric
sparse, vocab/hash encoding   String; empty/null is missing
sparse, identity encoding     Int64
multi-valued sparse           List(String) / List(Int64): the cell split on the
                              feature's ``separator``, or a Parquet list column;
                              an empty cell is an empty list
sequence                      List(String) / List(Int64) the same way, newest
                              first as written in the data
user/item key                 String; must be present
timestamp                     Int64 unix time as written, or an ISO-8601 date /
                              datetime turned into unix seconds (naive = UTC);
                              must be present
============================  ==================================================

Scalar cells are stripped of surrounding whitespace; empty list elements are
dropped. A text cell (or the text of a list cell) longer than
``max_field_bytes`` (``--max-field-bytes``, 64 KiB by default) quarantines its
row. A row whose value breaks these rules is quarantined with its file,
line (CSV: the 1-based physical line, the header being line 1; Parquet: the
1-based row number in the file), a reason naming the column, and its raw text
(Parquet: the columns the schema reads, as JSON). A column the schema needs
but a file lacks, or whose Parquet type cannot hold the feature, is an error
before anything is read.

CSV dialect: a header row is required; the delimiter is detected from it
(comma, tab or semicolon; comma when in doubt) unless given. Lines without a
double quote are split with polars string kernels; lines whose quotes wrap
whole fields (``"a, b"``, ``""`` for empty, ``""`` inside for a quote) are
checked with a regex and parsed by polars' CSV reader; any other line with a
quote goes through Python's ``csv`` module on its own. Every line is parsed on
its own, so a quoted field may hold the delimiter but not a line break: a
quote left open at the end of a line quarantines that line as malformed
quoting, and the line that continues it is quarantined too. Blank lines are
skipped. Input columns the schema does not read are ignored (logged at INFO).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.lines import CHUNK_BYTES, data_files, iter_line_chunks, open_binary
from recsys.data.pipeline import MAX_FIELD_BYTES, RawPart, bad_rows, too_long
from recsys.data.transforms import dense_values, float_id_text
from recsys.errors import RecsysError
from recsys.schema import DenseFeature, Encoding, Schema

log = logging.getLogger(__name__)

FileFormat = Literal["csv", "parquet"]
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".parq")
PARQUET_BATCH_ROWS = 1 << 16
DELIMITERS = (",", "\t", ";")

# Helper columns beside the raw ones while a part is checked; never in the output.
_LINE = "__line"
_TEXT = "__text"
_PRE = "__pre_reason"
_REASON = "__reason"

_Kind = Literal["dense", "label", "category", "identity", "key", "timestamp"]


@dataclass(frozen=True)
class _Field:
    """One output column of a raw part: which raw column it reads and how it is typed."""

    name: str
    source: str
    kind: _Kind
    what: str  # for messages: "dense feature 'price'"
    separator: str | None = None
    sequence: bool = False
    dense: DenseFeature | None = None  # a dense feature's transform, to refuse values it cannot take


Problems = list[tuple[pl.Expr, str]]


@dataclass
class _Typed:
    """A field's typed value, computed once per part, and the row checks made on it.

    ``checks`` receives the computed column, so a parse is never evaluated twice.
    ``retry`` holds more parsers (timestamps) tried, in order, only on the rows
    that are ``present`` but still null: a file of one time format pays one parse.
    """

    value: pl.Expr
    target: pl.DataType
    checks: Callable[[pl.Expr], Problems] = lambda typed: []
    retry: list[pl.Expr] = field(default_factory=list)
    present: pl.Expr | None = None


@dataclass
class _Plan:
    """How to read one file: the raw columns it needs and how each output is typed and checked."""

    path: Path
    columns: list[str]  # raw columns read, each once
    fields: list[_Field]
    typed: list[_Typed]
    dtypes: dict[str, pl.DataType]  # output dtypes, to keep every file's parts alike
    sizes: dict[str, pl.Expr] = field(default_factory=dict)  # text-like raw column → its bytes per row
    max_field_bytes: int = MAX_FIELD_BYTES
    delimiter: str = ","
    n_fields: int = 0
    indices: dict[str, int] = field(default_factory=dict)  # CSV: raw column → field position


def input_files(path: Path, file_format: FileFormat) -> list[Path]:
    """The file itself, or the directory's files with this format's suffixes in natural name order."""
    if path.is_dir():
        suffixes = CSV_SUFFIXES if file_format == "csv" else PARQUET_SUFFIXES
        candidates = data_files(path)
        files = [p for p in candidates if p.name.lower().endswith(suffixes)]
        skipped = [p.name for p in candidates if p not in files]
        if skipped:
            log.info("%s: skipping %d files that are not %s: %s", path, len(skipped), file_format,
                     ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""))
        if not files:
            raise RecsysError(f"{path}: directory has no {' / '.join('*' + s for s in suffixes)} files")
        return files
    if not path.exists():
        raise RecsysError(f"{path}: input not found")
    return [path]


class TabularSource:
    """CSV or Parquet rows typed by a hand-written schema; bad rows are quarantined with their reason."""

    def __init__(self, path: str | Path, schema: Schema, file_format: str = "csv", delimiter: str | None = None,
                 chunk_bytes: int = CHUNK_BYTES, batch_rows: int = PARQUET_BATCH_ROWS,
                 max_field_bytes: int = MAX_FIELD_BYTES) -> None:
        if file_format not in ("csv", "parquet"):
            raise RecsysError(f"unknown tabular format '{file_format}' (expected csv or parquet)")
        if max_field_bytes < 1:
            raise RecsysError(f"--max-field-bytes must be at least 1, got {max_field_bytes}")
        if delimiter is not None and len(delimiter) != 1:
            raise RecsysError(f"CSV delimiter must be one character, got {delimiter!r}")
        self.schema = schema
        self.file_format: FileFormat = file_format  # type: ignore[assignment]
        self.chunk_bytes = chunk_bytes
        self.batch_rows = batch_rows
        self._fields = _schema_fields(schema)
        # Every file is checked here, so a missing column fails before any row is processed.
        self._plans: list[_Plan] = []
        logged_extra: list[str] | None = None
        for file in input_files(Path(path), self.file_format):
            if self.file_format == "csv":
                plan, extra = _csv_plan(file, self._fields, delimiter)
            else:
                plan, extra = _parquet_plan(file, self._fields)
            plan.max_field_bytes = max_field_bytes
            if self._plans:
                _check_same_types(self._plans[0], plan)
            if extra and extra != logged_extra:
                log.info("%s: ignoring columns not in the schema: %s", file, ", ".join(extra))
                logged_extra = extra
            self._plans.append(plan)

    @property
    def files(self) -> list[Path]:
        return [plan.path for plan in self._plans]

    def parts(self) -> Iterator[RawPart]:
        for plan in self._plans:
            yield from self._plan_parts(plan)

    def tasks(self) -> list[Callable[[], Iterator[RawPart]]]:
        """One independent piece of parsing per input file (``--engine ray`` runs them in parallel)."""
        return [functools.partial(self._plan_parts, plan) for plan in self._plans]

    def _plan_parts(self, plan: _Plan) -> Iterator[RawPart]:
        if self.file_format == "csv":
            return _csv_parts(plan, self.chunk_bytes)
        return _parquet_parts(plan, self.batch_rows)


# ---- schema → fields ----------------------------------------------------------------------
def _schema_fields(schema: Schema) -> list[_Field]:
    fields = [_Field(f.name, f.source_column, "dense", f"dense feature '{f.name}'", dense=f) for f in schema.dense]
    for f in schema.sparse:
        kind: _Kind = "identity" if schema.table(f.table_name).encoding is Encoding.IDENTITY else "category"
        fields.append(_Field(f.name, f.source_column, kind, f"sparse feature '{f.name}'", separator=f.separator))
    for f in schema.sequences:
        kind = "identity" if schema.table(f.table).encoding is Encoding.IDENTITY else "category"
        fields.append(_Field(f.name, f.source_column, kind, f"sequence '{f.name}'", separator=f.separator, sequence=True))
    fields += [_Field(label.name, label.source_column, "label", f"label '{label.name}'") for label in schema.labels]
    for column, role in ((schema.user_key, "user key"), (schema.item_key, "item key")):
        if column is not None:
            fields.append(_Field(column.name, column.source_column, "key", f"{role} '{column.name}'"))
    if schema.timestamp is not None:
        ts = schema.timestamp
        fields.append(_Field(ts.name, ts.source_column, "timestamp", f"timestamp '{ts.name}'"))
    return fields


def _build_plan(path: Path, fields: list[_Field], dtypes: dict[str, pl.DataType]) -> _Plan:
    """How to type each field for a file whose raw columns have ``dtypes`` (type errors raise here)."""
    typed = [_convert(f, dtypes[f.source], path) for f in fields]
    columns = list(dict.fromkeys(f.source for f in fields))
    sizes = {column: size for column in columns if (size := _bytes_of(column, dtypes[column])) is not None}
    return _Plan(path=path, columns=columns, fields=fields, typed=typed,
                 dtypes={f.name: t.target for f, t in zip(fields, typed, strict=True)}, sizes=sizes)


def _bytes_of(column: str, dtype: pl.DataType) -> pl.Expr | None:
    """The bytes of a text cell, or of a list cell's texts; None for numbers (bounded by their type)."""
    if _is_text(dtype):
        return pl.col(column).cast(pl.String).str.len_bytes()
    if isinstance(dtype, pl.List) and _is_text(dtype.inner):
        return pl.col(column).list.eval(pl.element().cast(pl.String).str.len_bytes()).list.sum()
    return None


def _missing_column(path: Path, f: _Field, available: list[str]) -> RecsysError:
    shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
    return RecsysError(f"{path}: column '{f.source}' ({f.what}) is not in the file (columns: {shown})")


def _check_same_types(first: _Plan, plan: _Plan) -> None:
    """Spooled parts are scanned together, so a column must have one type across all files."""
    for name, dtype in plan.dtypes.items():
        if first.dtypes[name] != dtype:
            raise RecsysError(f"{plan.path}: column for '{name}' reads as {dtype}, but as {first.dtypes[name]} "
                              f"in {first.path} (a list column in one file and a plain one in another?)")


# ---- typing rules ---------------------------------------------------------------------------
def _is_text(dtype: pl.DataType) -> bool:
    return dtype == pl.String or dtype == pl.Null or isinstance(dtype, (pl.Categorical, pl.Enum))


def _text(raw: pl.Expr) -> pl.Expr:
    return raw.cast(pl.String).str.strip_chars()


def _non_empty(text: pl.Expr) -> pl.Expr:
    return text.is_not_null() & (text != "")


def _cannot_hold(path: Path, f: _Field, dtype: pl.DataType, expected: str) -> RecsysError:
    return RecsysError(f"{path}: column '{f.source}' has type {dtype}, which cannot hold {f.what} ({expected})")


def _convert(f: _Field, dtype: pl.DataType, path: Path) -> _Typed:
    """The typed value of one field and its bad-row checks, given the raw column's type."""
    raw = pl.col(f.source)
    if f.kind in ("dense", "label"):
        return _to_float(f, raw, dtype, path)
    if f.kind == "timestamp":
        return _to_unix_seconds(f, raw, dtype, path)
    integer = f.kind == "identity"
    if f.sequence or (f.kind != "key" and (f.separator is not None or isinstance(dtype, pl.List))):
        return _to_list(f, raw, dtype, path, integer)
    if integer:
        return _to_int(f, raw, dtype, path)
    value = _to_string(f, raw, dtype, path)
    if f.kind == "key":
        return _Typed(value, pl.String, lambda typed: [(typed.is_null(), "missing key")])
    return _Typed(value, pl.String)


def _to_float(f: _Field, raw: pl.Expr, dtype: pl.DataType, path: Path) -> _Typed:
    if dtype.is_numeric() or dtype == pl.Boolean:
        present = raw.is_not_null()
        value = raw.cast(pl.Float64)
        why = "not a finite number"
    elif _is_text(dtype):
        present = _non_empty(_text(raw))
        value = pl.when(present).then(_text(raw).cast(pl.Float64, strict=False))
        why = "not a number"
    else:
        raise _cannot_hold(path, f, dtype, "numbers")
    required = f.kind == "label"
    feature = f.dense

    def checks(typed: pl.Expr) -> Problems:
        problems = [(present & (typed.is_null() | ~typed.is_finite()), why)]
        if feature is not None:
            problems.append((present & ~_transformable(typed, feature), _untransformable(feature)))
        return [(~present, "missing label"), *problems] if required else problems

    return _Typed(value, pl.Float64, checks)


def _transformable(value: pl.Expr, feature: DenseFeature) -> pl.Expr:
    """Whether fill, clip and log1p leave a value finite in float32, as the statistics are taken over it and as
    the serving encoder demands of a request's value (log1p is NaN below -1, -inf at -1)."""
    return dense_values(value, feature, standardize=False).is_finite()


def _untransformable(feature: DenseFeature) -> str:
    if feature.transform.uses_log1p and feature.clip_min is None:
        return "not a number log1p can take (below -1) or out of range once transformed"
    return "out of range for a float32 once transformed"


def _to_string(f: _Field, raw: pl.Expr, dtype: pl.DataType, path: Path) -> pl.Expr:
    if _is_text(dtype):
        text = _text(raw)
        return pl.when(text != "").then(text)
    if dtype.is_integer() or dtype == pl.Boolean:
        return raw.cast(pl.String)
    if dtype.is_float():
        return float_id_text(raw)
    raise _cannot_hold(path, f, dtype, "ids or strings")


def _to_int(f: _Field, raw: pl.Expr, dtype: pl.DataType, path: Path) -> _Typed:
    if dtype.is_integer() or dtype == pl.Boolean:
        present, value = raw.is_not_null(), raw.cast(pl.Int64, strict=False)
        why = "integer out of Int64 range"
    elif dtype.is_float():
        present = raw.is_not_null()
        value = pl.when(raw.is_finite() & (raw == raw.floor())).then(raw.cast(pl.Int64, strict=False))
        why = "not an integer (identity encoding)"
    elif _is_text(dtype):
        present = _non_empty(_text(raw))
        value = pl.when(present).then(_text(raw).cast(pl.Int64, strict=False))
        why = "not an integer (identity encoding)"
    else:
        raise _cannot_hold(path, f, dtype, "integers")
    return _Typed(value, pl.Int64, lambda typed: [(present & typed.is_null(), why)])


def _to_list(f: _Field, raw: pl.Expr, dtype: pl.DataType, path: Path, integer: bool) -> _Typed:
    element = pl.element()
    target = pl.List(pl.Int64 if integer else pl.String)
    if _is_text(dtype):
        if f.separator is None:
            raise RecsysError(f"{path}: column '{f.source}' holds text, so {f.what} needs a 'separator' in the "
                              f"schema to split it into a list")
        parts = (_text(raw).fill_null("").str.split(f.separator)
                 .list.eval(element.str.strip_chars()).list.eval(element.filter(element != "")))
    elif isinstance(dtype, pl.List) and _is_text(dtype.inner):
        parts = (raw.list.eval(element.cast(pl.String).str.strip_chars())
                 .list.eval(element.filter(element.is_not_null() & (element != "")))
                 .fill_null(pl.lit([], dtype=pl.List(pl.String))))
    elif isinstance(dtype, pl.List) and dtype.inner.is_integer():
        ints = raw.list.eval(element.filter(element.is_not_null()).cast(pl.Int64))
        ints = ints.fill_null(pl.lit([], dtype=pl.List(pl.Int64)))
        return _Typed(ints if integer else ints.cast(pl.List(pl.String)), target)
    else:
        raise _cannot_hold(path, f, dtype, "a list of ids")
    if not integer:
        return _Typed(parts, target)
    # Keep the unparsed elements' nulls so the check can see them; good rows have none.
    ints = parts.list.eval(element.cast(pl.Int64, strict=False))
    return _Typed(ints, target, lambda typed: [(typed.list.eval(element.is_null()).list.any(),
                                                "not a list of integers (identity encoding)")])


# Tried in order on the rows the previous ones left null; naive times are UTC.
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M%z", "%Y-%m-%dT%H:%M")


def _iso_parsers(text: pl.Expr) -> list[pl.Expr]:
    # One spelling for the parsers: a 'T' between date and time, '+00:00' for 'Z'.
    iso = text.str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T").str.replace(r"[Zz]$", "+00:00")
    parsers = [iso.str.to_datetime(fmt, time_zone="UTC" if fmt.endswith("%z") else None, strict=False).dt.epoch("s")
               for fmt in _ISO_FORMATS]
    return [*parsers, iso.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("ms")).dt.epoch("s")]


def _to_unix_seconds(f: _Field, raw: pl.Expr, dtype: pl.DataType, path: Path) -> _Typed:
    retry: list[pl.Expr] = []
    why = "timestamp out of range"
    if dtype.is_integer():
        present, value = raw.is_not_null(), raw.cast(pl.Int64, strict=False)
    elif dtype.is_float():
        present = raw.is_not_null()
        value = pl.when(raw.is_finite()).then(raw.floor().cast(pl.Int64, strict=False))
    elif isinstance(dtype, pl.Datetime):
        present, value = raw.is_not_null(), raw.dt.epoch("s")
    elif dtype == pl.Date:
        present, value = raw.is_not_null(), raw.cast(pl.Datetime("ms")).dt.epoch("s")
    elif _is_text(dtype):
        text = _text(raw)
        present = _non_empty(text)
        as_float = text.cast(pl.Float64, strict=False)
        value = pl.when(present).then(pl.coalesce(
            text.cast(pl.Int64, strict=False),
            pl.when(as_float.is_finite()).then(as_float.floor().cast(pl.Int64, strict=False)),
        ))
        retry = _iso_parsers(text)
        why = "not unix seconds or an ISO-8601 date/time"
    else:
        raise _cannot_hold(path, f, dtype, "unix seconds or datetimes")
    return _Typed(value, pl.Int64, lambda typed: [(~present, "missing timestamp"), (present & typed.is_null(), why)],
                  retry=retry, present=present)


def _finish(frame: pl.DataFrame, plan: _Plan, raw_of: Callable[[pl.DataFrame], pl.Series]) -> RawPart:
    """Type every field once, then check: the first failing check is a bad row's reason."""
    temps = [f"__typed_{i}" for i in range(len(plan.typed))]
    frame = frame.with_columns(t.value.alias(name) for t, name in zip(plan.typed, temps, strict=True))
    for t, name in zip(plan.typed, temps, strict=True):
        for parser in t.retry:
            assert t.present is not None
            todo = frame.select((t.present & pl.col(name).is_null()).fill_null(False)).to_series()
            if not todo.any():
                break
            parsed = frame.filter(todo).select(parser).to_series()
            frame = frame.with_columns(frame[name].scatter(todo.arg_true(), parsed))
    reasons = [pl.col(_PRE)]
    # No field of a CSV line is longer than the line: parts of short lines skip the size checks.
    limit = plan.max_field_bytes
    if _TEXT not in frame.columns or frame[_TEXT].str.len_bytes().max() > limit:  # type: ignore[operator]
        reasons += [pl.when(size > limit).then(too_long(f"column '{column}'", size, limit))
                    for column, size in plan.sizes.items()]
    for f, t, name in zip(plan.fields, plan.typed, temps, strict=True):
        reasons += [pl.when(condition.fill_null(False)).then(pl.lit(f"column '{f.source}': {why}"))
                    for condition, why in t.checks(pl.col(name))]
    checked = frame.with_columns(pl.coalesce(reasons).alias(_REASON))
    good = checked.filter(pl.col(_REASON).is_null()).select(
        pl.col(name).cast(t.target).alias(f.name) for f, t, name in zip(plan.fields, plan.typed, temps, strict=True))
    bad = checked.filter(pl.col(_REASON).is_not_null())
    if bad.height == 0:
        return RawPart(rows=good)
    return RawPart(rows=good, bad=bad_rows(str(plan.path), bad[_LINE], bad[_REASON], raw_of(bad)))


# ---- CSV -----------------------------------------------------------------------------------
def _csv_header(path: Path) -> str:
    with open_binary(path) as stream:
        try:
            first = stream.readline()
        except (OSError, EOFError) as exc:
            raise RecsysError(f"{path}: cannot read: {exc}") from None
    try:
        line = first.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError:
        raise RecsysError(f"{path}: the header row is not UTF-8 text") from None
    if not line.strip():
        raise RecsysError(f"{path}: no header row (the first line is empty); CSV input needs column names")
    return line


def _detect_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])  # ties keep the earlier, so comma wins
    return best if counts[best] else ","


def _csv_plan(path: Path, fields: list[_Field], delimiter: str | None) -> tuple[_Plan, list[str]]:
    header_line = _csv_header(path)
    delim = delimiter or _detect_delimiter(header_line)
    try:
        header = [name.strip() for name in next(csv.reader([header_line], delimiter=delim, strict=True))]
    except csv.Error as exc:
        raise RecsysError(f"{path}: cannot parse the header row: {exc}") from None
    for f in fields:
        if f.source not in header:
            raise _missing_column(path, f, header)
        if header.count(f.source) > 1:
            raise RecsysError(f"{path}: column '{f.source}' ({f.what}) appears {header.count(f.source)} times in the header")
    plan = _build_plan(path, fields, {f.source: pl.String() for f in fields})
    plan.delimiter = delim
    plan.n_fields = len(header)
    plan.indices = {column: header.index(column) for column in plan.columns}
    used = set(plan.columns)
    return plan, [name for name in header if name not in used]


def _csv_parts(plan: _Plan, chunk_bytes: int) -> Iterator[RawPart]:
    for chunk in iter_line_chunks(plan.path, chunk_bytes):
        lines = chunk.frame.filter((pl.col("line") > 1) & (pl.col("text").str.strip_chars() != ""))
        if lines.height:
            yield _finish(_split_csv_lines(lines, plan), plan, lambda bad: bad[_TEXT])


def _line_checks(count: pl.Expr, n_fields: int) -> pl.Expr:
    return pl.coalesce(
        pl.when(pl.col("undecodable")).then(pl.lit("undecodable bytes (not UTF-8)")),
        pl.when(count != n_fields).then(pl.format("wrong field count: {} (expected {})", count, pl.lit(n_fields))),
    )


def _split_csv_lines(lines: pl.DataFrame, plan: _Plan) -> pl.DataFrame:
    """Lines → (line, text, pre-check reason, raw columns), in line order.

    Lines without a quote are split by polars; regularly quoted ones (quotes
    only around whole fields) are counted by a regex and parsed by polars' CSV
    reader; anything else goes through Python's csv module one line at a time.
    """
    has_quote = pl.col("text").str.contains('"', literal=True)
    # Split once into a column: an expression reused in one select would be split again per use.
    plain = lines.filter(~has_quote).with_columns(pl.col("text").str.split(plan.delimiter).alias("__fields"))
    fields = pl.col("__fields")
    frames = [plain.select(
        pl.col("line").alias(_LINE), pl.col("text").alias(_TEXT),
        _line_checks(fields.list.len(), plan.n_fields).alias(_PRE),
        *[fields.list.get(index, null_on_oob=True).alias(column) for column, index in plan.indices.items()],
    )]
    if plain.height < lines.height:
        frames += _split_quoted_lines(lines.filter(has_quote), plan)
    frame = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
    return frame.sort(_LINE) if len(frames) > 1 else frame


def _split_quoted_lines(quoted: pl.DataFrame, plan: _Plan) -> list[pl.DataFrame]:
    delim = f"\\x{{{ord(plan.delimiter):x}}}"
    quoted_field = '"(?:[^"]|"")*"'
    any_field = f'(?:{quoted_field}|[^"{delim}]*)'
    count = pl.col("text").str.replace_all(quoted_field, "").str.count_matches(plan.delimiter, literal=True) + 1
    regular = (pl.col("text").str.contains(f"^{any_field}(?:{delim}{any_field})*$")
               & (count == plan.n_fields) & ~pl.col("undecodable"))
    ok, rest = quoted.filter(regular), quoted.filter(~regular)
    frames = []
    if ok.height:
        text = "\n".join(ok["text"].to_list()) + "\n"
        parsed = pl.read_csv(io.BytesIO(text.encode("utf-8")), has_header=False, separator=plan.delimiter,
                             quote_char='"', infer_schema=False)
        if parsed.height == ok.height and parsed.width == plan.n_fields:
            frames.append(pl.concat([
                ok.select(pl.col("line").alias(_LINE), pl.col("text").alias(_TEXT), pl.lit(None, pl.String).alias(_PRE)),
                parsed.select(pl.col(parsed.columns[index]).alias(column) for column, index in plan.indices.items()),
            ], how="horizontal"))
        else:  # not expected for regular lines; the slow path is always right
            rest = pl.concat([rest, ok])
    if rest.height:
        frames.append(_split_with_csv_module(rest, plan))
    return frames


def _split_with_csv_module(lines: pl.DataFrame, plan: _Plan) -> pl.DataFrame:
    """Python's csv module, one physical line at a time: a quote left open is malformed, not a multi-line field."""
    pre: list[str | None] = []
    values: dict[str, list[str | None]] = {column: [] for column in plan.indices}
    for text, undecodable in zip(lines["text"].to_list(), lines["undecodable"].to_list(), strict=True):
        row: list[str] | None = None
        try:
            row = next(csv.reader((text,), delimiter=plan.delimiter, strict=True))
        except csv.Error as exc:
            problem = ("a quote is not closed on this line (a quoted field may not span lines)"
                       if "unexpected end of data" in str(exc) else str(exc))
        if undecodable:
            pre.append("undecodable bytes (not UTF-8)")
        elif row is None:
            pre.append(f"malformed quoting: {problem}")
        elif len(row) != plan.n_fields:
            pre.append(f"wrong field count: {len(row)} (expected {plan.n_fields})")
        else:
            pre.append(None)
        for column, index in plan.indices.items():
            values[column].append(row[index] if row is not None and index < len(row) else None)
    return pl.DataFrame({
        _LINE: lines["line"], _TEXT: lines["text"], _PRE: pl.Series(pre, dtype=pl.String),
        **{column: pl.Series(column_values, dtype=pl.String) for column, column_values in values.items()},
    })


# ---- Parquet -------------------------------------------------------------------------------
def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise RecsysError(f"{path}: not a readable Parquet file: {str(exc).splitlines()[0]}") from None


def _parquet_plan(path: Path, fields: list[_Field]) -> tuple[_Plan, list[str]]:
    arrow_schema = _open_parquet(path).schema_arrow
    names = list(arrow_schema.names)
    for f in fields:
        if f.source not in names:
            raise _missing_column(path, f, names)
    try:
        dtypes = dict(pl.from_arrow(arrow_schema.empty_table()).schema)  # type: ignore[union-attr]
    except Exception as exc:  # an Arrow type polars cannot hold
        raise RecsysError(f"{path}: unsupported Parquet column types: {str(exc).splitlines()[0]}") from None
    plan = _build_plan(path, fields, dtypes)
    used = set(plan.columns)
    return plan, [name for name in names if name not in used]


def _rows_as_json(bad: pl.DataFrame, columns: list[str]) -> pl.Series:
    """The raw values a Parquet row was rejected for; bad rows are few, so plain json is fine."""
    texts = [json.dumps(row, ensure_ascii=False, default=str) for row in bad.select(columns).iter_rows(named=True)]
    return pl.Series(texts, dtype=pl.String)


def _parquet_parts(plan: _Plan, batch_rows: int) -> Iterator[RawPart]:
    parquet = _open_parquet(plan.path)
    first_row = 1
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=plan.columns):
            frame = pl.from_arrow(pa.Table.from_batches([batch]))
            assert isinstance(frame, pl.DataFrame)
            frame = frame.with_columns(
                pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64).alias(_LINE),
                pl.lit(None, pl.String).alias(_PRE),
            )
            first_row += frame.height
            yield _finish(frame, plan, lambda bad: _rows_as_json(bad, plan.columns))
    except pa.ArrowException as exc:
        raise RecsysError(f"{plan.path}: cannot read Parquet past row {first_row - 1}: {str(exc).splitlines()[0]}") from None
