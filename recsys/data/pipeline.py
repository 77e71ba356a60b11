"""The prepare engine: raw row chunks → quarantine, vocabularies, dense stats, splits → Parquet.

Every input format is a ``Source`` that yields ``RawPart``s (good rows with raw
typed columns, and bad rows with their file, line and reason). The engine is
format-agnostic and streams in two passes so inputs larger than memory work:

1. parse: spool good rows to Parquet in the temporary output folder, each with
   its global row ordinal and a seeded uniform number for the random split;
   quarantine bad rows; stop if the bad fraction is over the limit.
2. fit on train rows only (polars streaming engine, or Ray Data with ``--engine ray``):
   vocabularies per table, log1p/standardisation statistics per dense feature,
   time-split cut points.
   The split (``--split``) is one of: ``random`` (a seeded uniform per row),
   ``time`` (cut points on the timestamp, else file order), ``loo`` (leave one
   out: per user, the newest interaction to test and the next to valid) or
   ``given`` (the source's own train/test split, valid carved from train);
   ``protocol`` records which in stats.json.
3. encode each spooled part and write it to its split folders.

All of it happens in a temporary sibling of the output folder that is renamed
into place only on success (``atomic_output_dir``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from recsys.data import layout
from recsys.data.progress import row_progress
from recsys.data.transforms import build_vocab, dense_expr, encode_expr, uniform_from_rows
from recsys.errors import BadDataError, RecsysError
from recsys.schema import Encoding, Schema

log = logging.getLogger(__name__)

BAD_ROW_COLUMNS = {"source": pl.String, "line": pl.Int64, "reason": pl.String, "raw": pl.String}
# A field longer than this quarantines its row (``--max-field-bytes``): one 50 MB cell once became a 209 MB
# vocabulary entry copied into every artifact. Real ids, texts and lists of ids are far shorter.
MAX_FIELD_BYTES = 64 << 10
# Characters of a bad row's raw text kept in the quarantine file; the rest is cut (its length is noted).
QUARANTINE_RAW_CHARS = 4096
_ROW = "_row"
_UNIFORM = "_u"
_SPLIT = "_split"
# A source with its own split (``--format interactions``) names each row's split in this column: 0 train,
# 1 valid, 2 test; ``--split given`` keeps it, carving valid from train by ``--valid-fraction``.
GIVEN_SPLIT = "_given_split"
LOO_MIN_INTERACTIONS = 3  # leave-one-out: users with fewer interactions stay whole in train
SPLITS_HELP = {
    "random": "by a seeded uniform number per row",
    "time": "by timestamp cut points (file order when there is no timestamp)",
    "loo": f"leave one out: per user, the newest interaction to test, the next to valid (users with fewer "
           f"than {LOO_MIN_INTERACTIONS} interactions stay in train)",
    "given": "the input's own train/test split; valid is --valid-fraction of the train rows (seeded, per row)",
}


@dataclass
class RawPart:
    """Good rows (raw typed columns named as in the schema) and the bad rows found beside them.

    ``filtered`` counts well-formed rows the source dropped on purpose (e.g. negatives
    in an implicit form), so ``rows_read`` stays the number of input rows.
    """

    rows: pl.DataFrame
    bad: pl.DataFrame | None = None
    filtered: int = 0


class Source(Protocol):
    """A raw input: its (unresolved) schema and a stream of parts."""

    schema: Schema

    def parts(self) -> Iterator[RawPart]: ...


class Executor(Protocol):
    """Where the prepare steps run: in this process (``LocalExecutor``, the polars engine) or on a Ray cluster
    (``recsys.data.ray_engine.RayExecutor``: Ray tasks and Ray Data), with the same answers."""

    name: str

    def map(self, fn: Callable[..., Any], args: list[tuple[Any, ...]], label: str) -> list[Any]:
        """``fn`` over many inputs (input files, spool parts); the results in input order."""
        ...

    def count_values(self, parts: list[Path], split_of: pl.Expr, columns: dict[str, list[tuple[str, bool]]],
                     min_counts: dict[str, int]) -> dict[str, pl.DataFrame]:
        """Per vocabulary table, the (value, count) of its columns' values over the train rows of ``parts``,
        only the values seen at least ``min_counts[table]`` times."""
        ...

    def dense_moments(self, parts: list[Path], pre: list[pl.Expr],
                      split_of: pl.Expr) -> tuple[int, np.ndarray, np.ndarray]:
        """Count, mean and sample std of each of ``pre`` over the train rows of ``parts``."""
        ...


class LocalExecutor:
    """One after the other, in this process; the aggregations as polars queries."""

    name = "polars"

    def map(self, fn: Callable[..., Any], args: list[tuple[Any, ...]], label: str) -> list[Any]:
        return [fn(*arg) for arg in args]

    def count_values(self, parts: list[Path], split_of: pl.Expr, columns: dict[str, list[tuple[str, bool]]],
                     min_counts: dict[str, int]) -> dict[str, pl.DataFrame]:
        """One streaming polars query per table."""
        train = pl.scan_parquet(parts).filter(split_of == 0)
        queries = [_value_counts(train, table_columns).filter(pl.col("count") >= min_counts[table])
                   for table, table_columns in columns.items()]
        return dict(zip(columns, pl.collect_all(queries, engine="streaming"), strict=True))

    def dense_moments(self, parts: list[Path], pre: list[pl.Expr],
                      split_of: pl.Expr) -> tuple[int, np.ndarray, np.ndarray]:
        """Merged part by part in file order (Chan et al.'s pairwise update), so the same data always gives
        bit-identical statistics, which a parallel streaming sum does not."""
        return merge_moments([train_moments(pl.scan_parquet(part), pre, split_of) for part in parts], len(pre))


def merge_moments(partials: list[tuple[int, np.ndarray, np.ndarray]], width: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, sample std) from per-part (count, mean, sum of squared deviations), merged in the given
    order by Chan et al.'s pairwise update: numerically stable, and bit-identical for the same order."""
    count, mean, m2 = 0, np.zeros(width), np.zeros(width)
    for part_count, part_mean, part_m2 in partials:
        if part_count == 0:
            continue
        total = count + part_count
        delta = part_mean - mean
        mean = mean + delta * (part_count / total)
        m2 = m2 + part_m2 + delta**2 * (count * part_count / total)
        count = total
    std = np.sqrt(m2 / (count - 1)) if count > 1 else np.ones(width)
    return count, mean, std


@dataclass
class PrepareOptions:
    split: Literal["random", "time", "loo", "given"] = "random"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    max_bad_fraction: float = 0.01
    row_group_size: int = 1 << 16
    overwrite: bool = False
    passthrough: tuple[str, ...] = ()  # extra raw columns kept as they are (e.g. synthetic truth)

    def __post_init__(self) -> None:
        if self.split not in SPLITS_HELP:
            raise RecsysError(f"--split must be one of {', '.join(SPLITS_HELP)}, got '{self.split}'")
        if not (0 <= self.valid_fraction < 1 and 0 <= self.test_fraction < 1):
            raise RecsysError("--valid-fraction and --test-fraction must be in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise RecsysError("--valid-fraction + --test-fraction must leave rows for train")
        if not 0 <= self.max_bad_fraction <= 1:
            raise RecsysError(f"--max-bad-fraction must be in [0, 1], got {self.max_bad_fraction}")


@dataclass
class PrepareResult:
    out: Path
    schema: Schema
    stats: dict[str, Any] = field(default_factory=dict)


def bad_rows(source: str, lines: pl.Series, reasons: pl.Series, raw: pl.Series) -> pl.DataFrame:
    return pl.DataFrame(
        {"source": pl.repeat(source, len(lines), eager=True, dtype=pl.String), "line": lines, "reason": reasons, "raw": raw}
    ).cast(BAD_ROW_COLUMNS)  # type: ignore[arg-type]


def too_long(label: str, size: pl.Expr, limit: int) -> pl.Expr:
    """The bad-row reason for a field of ``size`` bytes over ``limit``, e.g. "field 'C3' is N bytes, over ..."."""
    # concat_str, not pl.format: polars 1.35's format panics on some multi-chunk columns.
    return pl.concat_str(pl.lit(f"{label} is "), size.cast(pl.String),
                         pl.lit(f" bytes, over the limit of {limit} (--max-field-bytes)"))


def _shortened(raw: str | None) -> str | None:
    if raw is None or len(raw) <= QUARANTINE_RAW_CHARS:
        return raw
    return f"{raw[:QUARANTINE_RAW_CHARS]}... [cut: {len(raw)} characters in all]"


class _Quarantine:
    """Appends bad rows to one JSON-lines file and keeps the first few for the summary."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.count = 0
        self.examples: list[dict[str, Any]] = []
        self._file = path.open("w")

    def add(self, bad: pl.DataFrame) -> None:
        if bad.height == 0:
            return
        for record in bad.select(list(BAD_ROW_COLUMNS)).iter_rows(named=True):
            record["raw"] = _shortened(record["raw"])  # a row quarantined for its size stays small here
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            if len(self.examples) < 5:
                self.examples.append(record)
        self.count += bad.height

    def close(self) -> None:
        self._file.close()


def run(source: Source, out: str | Path, options: PrepareOptions,
        extra_stats: Callable[[Path, Schema], dict[str, Any]] | None = None,
        executor: Executor | None = None) -> PrepareResult:
    """Prepare ``source`` into ``out`` (atomically); returns the resolved schema and stats.

    ``executor``: where the per-file and per-part work runs (default: this process, the polars engine; a
    ``recsys.data.ray_engine.RayExecutor`` runs it on a Ray cluster with the same answers)."""
    started = time.perf_counter()
    schema = source.schema
    executor = executor or LocalExecutor()
    with layout.atomic_output_dir(out, overwrite=options.overwrite) as tmp:
        spool = tmp / "_spool"
        spool.mkdir()
        quarantine = _Quarantine(tmp / layout.QUARANTINE_FILE)
        try:
            if isinstance(executor, LocalExecutor):
                good, filtered = _spool_parts(source, spool, quarantine, options)
            else:
                from recsys.data.ray_engine import spool_distributed

                good, filtered = spool_distributed(source, spool, quarantine, options, executor)
        finally:
            quarantine.close()
        rows_read = good + quarantine.count + filtered
        _check_bad_fraction(rows_read, good, filtered, quarantine, options, Path(out))
        split_of, protocol = _split_expr(schema, spool, options)
        vocabs, schema = _fit(schema, spool, split_of, executor)
        split_counts = _write_splits(schema, spool, tmp, vocabs, split_of, options, executor)
        shutil.rmtree(spool)
        (tmp / layout.VOCAB_DIR).mkdir()
        for table_name, vocab in vocabs.items():
            vocab.write_parquet(tmp / layout.VOCAB_DIR / f"{table_name}.parquet")
        schema.save(tmp)
        elapsed = time.perf_counter() - started
        stats: dict[str, Any] = {
            "rows_read": rows_read,
            "rows_written": sum(c["rows"] for c in split_counts.values()),
            "bad_rows": quarantine.count,
            "rows_filtered": filtered,
            "bad_fraction": quarantine.count / rows_read if rows_read else 0.0,
            "split": options.split,
            "protocol": protocol,
            "engine": executor.name,
            "seed": options.seed,
            "splits": split_counts,
            "cardinalities": {t.name: t.cardinality for t in schema.tables},
            "vocab_sizes": {name: vocab.height for name, vocab in vocabs.items()},
            "dense": {f.name: {"mean": f.mean, "std": f.std} for f in schema.dense},
            # Hash encoding uses polars' hash, stable for one polars version: serve with the same one.
            "polars_version": pl.__version__,
            "seconds": round(elapsed, 3),
            "rows_per_s": round(rows_read / elapsed, 1) if elapsed > 0 else None,
        }
        if extra_stats is not None:
            stats.update(extra_stats(tmp, schema))
        layout.write_json(tmp / layout.STATS_FILE, stats)
    log.info("wrote %s: %d rows (%d bad) in %.1fs", out, stats["rows_written"], stats["bad_rows"], elapsed)
    return PrepareResult(out=Path(out), schema=schema, stats=stats)


def _spool_parts(source: Source, spool: Path, quarantine: _Quarantine, options: PrepareOptions) -> tuple[int, int]:
    wanted = [*source.schema.columns, *options.passthrough]
    good = filtered = 0
    given = False
    with row_progress("parsing") as advance:
        for index, part in enumerate(source.parts()):
            if part.bad is not None:
                quarantine.add(part.bad)
            rows = part.rows
            if rows.height:
                given = given or GIVEN_SPLIT in rows.columns
                if given and GIVEN_SPLIT not in rows.columns:
                    raise RecsysError(f"input part {index} has no {GIVEN_SPLIT} column but an earlier one had")
                rows = numbered(rows.select(wanted + ([GIVEN_SPLIT] if given else [])), good, options.seed)
                rows.write_parquet(spool / f"part-{index:05d}.parquet")
                good += rows.height
            filtered += part.filtered
            advance(rows.height + part.filtered + (part.bad.height if part.bad is not None else 0))
    return good, filtered


def numbered(rows: pl.DataFrame, first_row: int, seed: int) -> pl.DataFrame:
    """``rows`` with their global ordinals (``_row``, from ``first_row``) and seeded uniforms (``_u``)."""
    ordinals = np.arange(first_row, first_row + rows.height, dtype=np.uint64)
    return rows.with_columns(pl.Series(_ROW, ordinals.astype(np.int64)),
                             pl.Series(_UNIFORM, uniform_from_rows(ordinals, seed)))


def _check_bad_fraction(rows_read: int, good: int, filtered: int, quarantine: _Quarantine, options: PrepareOptions,
                        out: Path) -> None:
    """Warn about any bad rows; fail (keeping them beside OUT) past the limit or with nothing usable left."""
    fraction = quarantine.count / rows_read if rows_read else 0.0
    first = quarantine.examples[0] if quarantine.examples else None
    where = f"first at {first['source']}:{first['line']}: {first['reason']}" if first else ""
    if first:
        log.warning("%d malformed rows (%.3f%%); %s", quarantine.count, 100 * fraction, where)
    too_many = fraction > options.max_bad_fraction
    if good > 0 and not too_many:
        return
    kept = ""
    if quarantine.count:
        path = out.resolve().with_name(out.name + ".bad_rows.jsonl")
        shutil.copyfile(quarantine.path, path)
        kept = f"; all bad rows kept in {path}"
    if too_many:
        raise BadDataError(
            f"{quarantine.count} of {rows_read} rows are malformed ({100 * fraction:.2f}%, above "
            f"--max-bad-fraction {options.max_bad_fraction:g}); {where}{kept}; nothing written to {out}"
        )
    raise BadDataError(f"no usable rows: {rows_read} read, {quarantine.count} malformed, {filtered} filtered out"
                       f"{kept}; nothing written to {out}")


def _split_expr(schema: Schema, spool: Path, options: PrepareOptions) -> tuple[pl.Expr, dict[str, Any]]:
    """0 = train, 1 = valid, 2 = test, as an expression over spooled rows; and the protocol, for stats.json."""
    protocol: dict[str, Any] = {"split": options.split, "description": SPLITS_HELP[options.split]}
    if options.split == "loo":
        return _leave_one_out(schema, spool, protocol)
    if options.split == "given":
        if GIVEN_SPLIT not in pl.read_parquet_schema(next(spool.glob("*.parquet"))):
            raise RecsysError("--split given needs an input that comes with its own split (--format interactions)")
        given = pl.col(GIVEN_SPLIT).cast(pl.Int8)
        protocol.update(valid_fraction=options.valid_fraction,
                        valid=(f"{options.valid_fraction:g} of the given train rows, by a seeded uniform per row"
                               if options.valid_fraction else "none (--valid-fraction 0)"))
        carve = (given == 0) & (pl.col(_UNIFORM) < options.valid_fraction)
        return pl.when(carve).then(pl.lit(1, pl.Int8)).otherwise(given), protocol
    train_cut = 1.0 - options.valid_fraction - options.test_fraction
    valid_cut = 1.0 - options.test_fraction
    protocol.update(valid_fraction=options.valid_fraction, test_fraction=options.test_fraction)
    if options.split == "random":
        key, first, second = pl.col(_UNIFORM), pl.lit(train_cut), pl.lit(valid_cut)
    else:
        # Without a timestamp column the file order is the time order (Criteo day files).
        column = schema.timestamp.name if schema.timestamp is not None else _ROW
        cuts = pl.scan_parquet(spool / "*.parquet").select(
            pl.col(column).quantile(train_cut, "lower").alias("a"),
            pl.col(column).quantile(valid_cut, "lower").alias("b"),
        ).collect()
        key, first, second = pl.col(column), pl.lit(cuts["a"][0]), pl.lit(cuts["b"][0])
        protocol["order"] = column if schema.timestamp is not None else "file order"
    compare = (lambda k, c: k < c) if options.split == "random" else (lambda k, c: k <= c)
    return (
        pl.when(compare(key, first)).then(pl.lit(0, pl.Int8))
        .when(compare(key, second)).then(pl.lit(1, pl.Int8))
        .otherwise(pl.lit(2, pl.Int8))
    ), protocol


def _leave_one_out(schema: Schema, spool: Path, protocol: dict[str, Any]) -> tuple[pl.Expr, dict[str, Any]]:
    """Per user, its newest row to test and the one before to valid, when it has at least
    ``LOO_MIN_INTERACTIONS`` rows. Newest by timestamp, ties (and inputs without one) by file order.

    A row's split depends on the user's other rows, wherever they are in the input, so the held-out rows
    are found in one pass over the spool and named by row ordinal."""
    if schema.user_key is None:
        raise RecsysError("--split loo needs a schema with a user_key (whose interactions to leave out)")
    user = schema.user_key.name
    order = [schema.timestamp.name, _ROW] if schema.timestamp is not None else [_ROW]
    newest = (
        pl.scan_parquet(spool / "*.parquet")
        .group_by(user)
        .agg(pl.col(_ROW).sort_by(order, descending=True).head(2).alias("rows"), pl.len().alias("n"))
        .filter(pl.col("n") >= LOO_MIN_INTERACTIONS)
        .select(pl.col("rows").list.get(0).alias("test"), pl.col("rows").list.get(1).alias("valid"))
        .collect(engine="streaming")
    )
    protocol.update(order=schema.timestamp.name if schema.timestamp is not None else "file order",
                    min_interactions=LOO_MIN_INTERACTIONS, held_out_users=newest.height)
    expr = (pl.when(pl.col(_ROW).is_in(newest["test"].implode())).then(pl.lit(2, pl.Int8))
            .when(pl.col(_ROW).is_in(newest["valid"].implode())).then(pl.lit(1, pl.Int8))
            .otherwise(pl.lit(0, pl.Int8)))
    return expr, protocol


def _fit(schema: Schema, spool: Path, split_of: pl.Expr,
         executor: Executor) -> tuple[dict[str, pl.DataFrame], Schema]:
    """Vocabularies and dense statistics from the train rows; returns the resolved schema."""
    parts = _parts(spool)
    spooled = pl.read_parquet_schema(parts[0])
    features_by_table: dict[str, list[str]] = {}
    for feature in [*schema.sparse, *schema.sequences]:
        features_by_table.setdefault(feature.table_name, []).append(feature.name)

    vocab_tables = [t for t in schema.tables if t.encoding is Encoding.VOCAB]
    columns = {table.name: [(name, isinstance(spooled[name], pl.List)) for name in features_by_table[table.name]]
               for table in vocab_tables}
    # The dense moments first: a pass of a few numbers per part, so a split without train rows fails before the
    # vocabularies' shuffle; on Ray the shuffle's own workers then no longer hold the CPUs the moments wait for.
    dense = list(schema.dense)
    if dense:
        pre = [dense_expr(f, standardize=False).cast(pl.Float64) for f in schema.dense]
        count, mean, std = executor.dense_moments(parts, pre, split_of)
        if count == 0:
            raise BadDataError("no rows fall in the train split; lower --valid-fraction/--test-fraction")
        dense = [
            f.model_copy(update={"mean": float(mean[j]), "std": float(std[j]) if std[j] > 0 else 1.0})
            if f.transform.standardizes else f
            for j, f in enumerate(schema.dense)
        ]
    counts = executor.count_values(parts, split_of, columns, {t.name: t.min_count for t in vocab_tables}) \
        if vocab_tables else {}
    vocabs = {table.name: build_vocab(counts[table.name], table.min_count) for table in vocab_tables}
    tables = [
        t.model_copy(update={"cardinality": vocabs[t.name].height + 1, "vocab_file": f"{layout.VOCAB_DIR}/{t.name}.parquet"})
        if t.name in vocabs else t
        for t in schema.tables
    ]
    resolved = schema.model_copy(update={"tables": tables, "dense": dense})
    return vocabs, Schema.model_validate(resolved.model_dump())


def _value_counts(frame: pl.LazyFrame, columns: list[tuple[str, bool]]) -> pl.LazyFrame:
    """(value, count) of every non-null value of ``columns`` ((name, is a list) pairs) in ``frame``."""
    per_feature = []
    for name, is_list in columns:
        column = pl.col(name).explode() if is_list else pl.col(name)
        per_feature.append(frame.select(column.cast(pl.String).alias("value")).drop_nulls()
                           .group_by("value").agg(pl.len().alias("count")))
    return pl.concat(per_feature).group_by("value").agg(pl.col("count").sum().cast(pl.Int64))


def train_moments(frame: pl.LazyFrame, pre: list[pl.Expr], split_of: pl.Expr) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, sum of squared deviations) of each of ``pre`` over ``frame``'s train rows: a spool part's
    here, a Ray Data block's on the Ray engine. Lazy, so a Parquet scan reads only the columns they need."""
    values = frame.filter(split_of == 0).select(pre).collect().to_numpy()  # (rows, len(pre))
    if len(values) == 0:
        return 0, np.zeros(len(pre)), np.zeros(len(pre))
    mean = values.mean(axis=0)
    return len(values), mean, ((values - mean) ** 2).sum(axis=0)


def _parts(spool: Path) -> list[Path]:
    return sorted(spool.glob("part-*.parquet"))


def _write_splits(schema: Schema, spool: Path, out: Path, vocabs: dict[str, pl.DataFrame], split_of: pl.Expr,
                  options: PrepareOptions, executor: Executor) -> dict[str, dict[str, Any]]:
    spooled = pl.read_parquet_schema(next(spool.glob("*.parquet")))
    exprs = [dense_expr(f) for f in schema.dense]
    for feature in schema.sparse:
        table = schema.table(feature.table_name)
        exprs.append(encode_expr(feature.name, table, vocabs.get(table.name), isinstance(spooled[feature.name], pl.List)))
    for feature in schema.sequences:
        table = schema.table(feature.table)
        exprs.append(encode_expr(feature.name, table, vocabs.get(table.name), is_list=True))
    # Histories are newest first: keep the max_length most recent ids before encoding.
    truncate = [pl.col(f.name).list.head(f.max_length) for f in schema.sequences]
    exprs += [pl.col(label.name).cast(pl.Float32) for label in schema.labels]
    exprs += [pl.col(c.name).cast(pl.String) for c in (schema.user_key, schema.item_key) if c is not None]
    if schema.timestamp is not None:
        exprs.append(pl.col(schema.timestamp.name).cast(pl.Int64))
    exprs += [pl.col(c) for c in options.passthrough]

    for split in layout.SPLITS:
        (out / split).mkdir()
    counts = {split: {"rows": 0, "positives": 0.0} for split in layout.SPLITS}
    first_label = schema.labels[0].name if schema.labels else None
    parts = _parts(spool)
    if isinstance(executor, LocalExecutor):
        with row_progress("writing splits") as advance:
            written = []
            for part in parts:
                written.append(write_part(part, out, exprs, truncate, split_of, options.row_group_size, first_label))
                advance(sum(rows for rows, _ in written[-1].values()))
    else:
        written = executor.map(write_part, [(part, out, exprs, truncate, split_of, options.row_group_size,
                                             first_label) for part in parts], "writing splits")
    for part_counts in written:
        for split, (rows, positives) in part_counts.items():
            counts[split]["rows"] += rows
            counts[split]["positives"] += positives
    return {
        split: {"rows": c["rows"], "positive_rate": (c["positives"] / c["rows"]) if c["rows"] and first_label else None}
        for split, c in counts.items()
    }


def write_part(part: Path, out: Path, exprs: list[pl.Expr], truncate: list[pl.Expr], split_of: pl.Expr,
               row_group_size: int, first_label: str | None) -> dict[str, tuple[int, float]]:
    """Encode one spool part and write its rows to ``out/<split>/<part name>``; per split, (rows, positives)."""
    frame = pl.read_parquet(part).with_columns(*truncate, split_of.alias(_SPLIT))
    encoded = frame.select(*exprs, pl.col(_SPLIT))
    counts: dict[str, tuple[int, float]] = {}
    for code, split in enumerate(layout.SPLITS):
        rows = encoded.filter(pl.col(_SPLIT) == code).drop(_SPLIT)
        if rows.height == 0:
            continue
        # Page checksums let the reader tell a corrupted page from data: without them most flipped
        # bytes decode to wrong values silently.
        pq.write_table(rows.to_arrow(), out / split / part.name, row_group_size=row_group_size,
                       write_page_checksum=True)
        counts[split] = (rows.height, float(rows[first_label].sum()) if first_label is not None else 0.0)
    return counts
