"""Materialisation: a prepared data set + a trained artifact → a new feature-store version, made active.

What it writes (see ``redis_store`` for the keys):

- one record per user and per item: that entity's features (``schema.features_of``) from
  its **latest** row (largest timestamp; the later row in file order on ties, or when the
  schema has no timestamp), packed by ``codec.RecordCodec`` of the artifact's schema;
- the popular list: item ids by descending count of rows in the train split (ties by id);
- seen lists: per user, the distinct items of their rows, newest first, at most ``seen_cap``;
- in the version's meta: the artifact it was made for and the fingerprint of the records'
  layout (``codec.layout_fingerprint``: features, transforms, tables, vocabularies), which
  readers (the ranking service, online upserts) compare with their own before reading;
- embeddings of users and items: the rows of each entity's *id table*, i.e. the table of
  the entity's sparse feature with the largest cardinality (``user_id`` / ``item_id`` in
  the synthetic and MovieLens schemas), read from the artifact's weights
  (the weight the model's embedding modules hold for that table), float32. Entities whose id is out of
  vocabulary (row 0, shared) get none. A table that a compressing scheme embeds (hash, QR,
  unified, ...) has no plain weight: its vectors are computed by the artifact's embedding
  module, id by id, exactly as the model sees them.

The data is read twice, column-pruned: the key columns of every row (to find latest
rows, counts and seen lists), then the feature columns in ``chunk_rows`` batches, of
which only the latest rows are kept. Records are built for a whole chunk in numpy. The
version is committed only when everything is written; on any error, or Ctrl-C, it is
aborted and the active version stays as it was.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.layout import split_files
from recsys.data.progress import row_progress
from recsys.errors import RecsysError
from recsys.schema import SCHEMA_FILE, Entity, Schema
from services.feature_store.codec import RecordCodec, layout_difference, layout_fingerprint, record_layouts
from services.feature_store.store import LAYOUT_META, FeatureStore, VersionWriter

log = logging.getLogger("recsys.feature_store")

_ROW = "__row"  # global row ordinal over the files read, in split then file order


# ---- schema compatibility ------------------------------------------------------------------
def check_compatible(data: Schema, artifact: Schema, data_where: str = "data", artifact_where: str = "artifact") -> None:
    """Raise a one-line RecsysError naming the first difference that would make the records wrong for the model.

    The artifact may use fewer features and tables than the data holds (a schema pruned by ``features select``),
    never others or differently encoded ones."""

    def differ(what: str) -> RecsysError:
        return RecsysError(f"{data_where} does not match {artifact_where}: {what}")

    # Generated features (and their tables) are in no record: the service computes them with the artifact's
    # recipes and lookups, so only the features records hold are compared (a generated data set and the
    # artifact trained on it compare equal, and so does the data set it was generated from).
    sections = (
        ("dense feature", _stored(data.dense), _stored(artifact.dense), ("entity", "transform", "clip_min",
                                                                          "fill_value")),
        ("sparse feature", _stored(data.sparse), _stored(artifact.sparse), ("entity", "table_name", "separator")),
        ("sequence feature", data.sequences, artifact.sequences, ("entity", "table_name", "max_length")),
        ("table", _stored_tables(data), _stored_tables(artifact), ("encoding", "cardinality", "hash_buckets")),
    )
    for label, ours, theirs, fields in sections:
        mine, other = {f.name: f for f in ours}, {f.name: f for f in theirs}
        for name in other:
            if name not in mine:
                raise differ(f"{label} '{name}' is in the artifact but not in the data")
        for name, feature in mine.items():
            if name not in other:
                continue  # a model trained on a pruned schema (features select) reads fewer columns
            for field in fields:
                a, b = getattr(feature, field), getattr(other[name], field)
                if a != b:
                    raise differ(f"{label} '{name}' has {field} {a!r} in the data but {b!r} in the artifact")
            if label == "dense feature":
                for stat in ("mean", "std"):
                    a, b = getattr(feature, stat), getattr(other[name], stat)
                    if (a is None) != (b is None) or (a is not None and not np.isclose(a, b, rtol=1e-6, atol=0)):
                        raise differ(f"dense feature '{name}' has {stat} {a} in the data but {b} in the artifact "
                                     "(prepared again since training?)")
    for key in ("user_key", "item_key", "timestamp"):
        a, b = getattr(data, key), getattr(artifact, key)
        if (a and a.name) != (b and b.name):
            raise differ(f"{key} is {a and a.name!r} in the data but {b and b.name!r} in the artifact")


def _stored(features: list[Any]) -> list[Any]:
    return [f for f in features if f.entity is not Entity.DERIVED]


def _stored_tables(schema: Schema) -> list[Any]:
    used = {f.table_name for f in _stored(schema.sparse)} | {f.table for f in schema.sequences}
    return [t for t in schema.tables if t.name in used]


# ---- vectorised record encoding ------------------------------------------------------------
def _id_lists(column: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A sparse/sequence column → (lengths int32 (n,), flat int64 values); nulls → OOV / empty."""
    if column.dtype == pl.List or isinstance(column.dtype, pl.List):
        array = column.to_arrow()
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int32)
        flat = pc.fill_null(array.flatten(), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        return lengths, flat
    return np.ones(len(column), np.int32), column.fill_null(0).cast(pl.Int64).to_numpy().astype(np.int64)


def encode_records(codec: RecordCodec, frame: pl.DataFrame) -> list[bytes]:
    """Every row of ``frame`` (columns named like the codec's features) → its record, as ``codec.encode`` packs it."""
    n = frame.height
    if n == 0:
        return []
    dense = np.empty((n, codec.n_dense), dtype="<f4")
    for j, feature in enumerate(codec.dense_features):
        dense[:, j] = frame[feature.name].cast(pl.Float32).fill_null(float(codec.default_dense[j])).to_numpy()
    lengths = np.empty((n, codec.n_keys), dtype="<i4")
    flats = []
    for k, key in enumerate(codec.keys):
        lengths[:, k], flat = _id_lists(frame[key])
        flats.append(flat)
    head = codec.n_dense * 4 + codec.n_keys * 4
    totals = lengths.sum(axis=1, dtype=np.int64)  # int64 values per record
    value_start = np.concatenate([[0], np.cumsum(totals)])  # (n + 1,) in values
    # Row-major values: record r holds key 0's ids, then key 1's, ...
    values = np.empty(int(value_start[-1]), dtype="<i8")
    key_start = np.cumsum(lengths, axis=1, dtype=np.int64) - lengths  # (n, K) offset of key k inside record r
    for k, flat in enumerate(flats):
        per_row = lengths[:, k].astype(np.int64)
        first = np.cumsum(per_row) - per_row  # where row r's ids start in flat
        dest = np.repeat(value_start[:-1] + key_start[:, k] - first, per_row) + np.arange(len(flat))
        values[dest] = flat
    header = np.concatenate([dense.view(np.uint8).reshape(n, -1), lengths.view(np.uint8).reshape(n, -1)], axis=1)
    if (totals == totals[0]).all():  # every record the same size: one (n, width) byte matrix
        matrix = np.concatenate([header, values.view(np.uint8).reshape(n, -1)], axis=1)
        blob, width = matrix.tobytes(), matrix.shape[1]
        return [blob[r * width : (r + 1) * width] for r in range(n)]
    heads, body, bounds = header.tobytes(), values.tobytes(), (value_start * 8).tolist()
    return [heads[r * head : (r + 1) * head] + body[bounds[r] : bounds[r + 1]] for r in range(n)]


# ---- reading -------------------------------------------------------------------------------
def _files(data_dir: Path, splits: Sequence[str]) -> list[Path]:
    files = [f for split in splits for f in split_files(data_dir, split)]
    if not files:
        raise RecsysError(f"{data_dir}: no Parquet parts in split(s) {', '.join(splits)}")
    return files


def _read_keys(files: list[Path], schema: Schema) -> pl.DataFrame:
    """(user key, item key, time, row ordinal) of every row; time is the row ordinal without a timestamp."""
    assert schema.user_key is not None and schema.item_key is not None
    uk, ik = schema.user_key.name, schema.item_key.name
    ts = schema.timestamp.name if schema.timestamp else None
    frames, offset = [], 0
    for path in files:
        try:
            part = pl.read_parquet(path, columns=[uk, ik, *([ts] if ts else [])])
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise RecsysError(f"{path}: unreadable ({str(exc).splitlines()[0]})") from None
        part = part.with_columns(pl.int_range(offset, offset + part.height, dtype=pl.Int64).alias(_ROW))
        frames.append(part.select(pl.col(uk).cast(pl.String).alias("user"), pl.col(ik).cast(pl.String).alias("item"),
                                  (pl.col(ts) if ts else pl.col(_ROW)).cast(pl.Int64).alias("time"), pl.col(_ROW)))
        offset += part.height
    return pl.concat(frames).filter(pl.col("user").is_not_null() & pl.col("item").is_not_null())


@dataclass
class _Plan:
    """What to write, found from the key columns: latest rows per user/item, seen lists."""

    user_ids: list[str]
    user_rows: np.ndarray  # row ordinal of each user's latest row
    item_ids: list[str]
    item_rows: np.ndarray
    seen_users: list[str]
    seen_items: list[list[str]]


def _plan(keys: pl.DataFrame, seen_cap: int) -> _Plan:
    """Latest row per user and per item, and each user's distinct items newest first (numpy, on integer codes)."""
    codes = keys.select(pl.col("user").cast(pl.Categorical).to_physical().alias("u"),
                        pl.col("item").cast(pl.Categorical).to_physical().alias("i"))
    user, item = codes["u"].to_numpy().astype(np.int64), codes["i"].to_numpy().astype(np.int64)
    ordinal = keys[_ROW].to_numpy()
    newest_first = np.lexsort((ordinal, keys["time"].to_numpy()))[::-1]  # ties: the later row is newer
    _, first = np.unique(user[newest_first], return_index=True)  # mergesort: the first is the newest
    latest_users = newest_first[first]
    _, first = np.unique(item[newest_first], return_index=True)
    latest_items = newest_first[first]

    seen_users: list[str] = []
    seen_items: list[list[str]] = []
    if seen_cap > 0:
        by_user = newest_first[np.argsort(user[newest_first], kind="stable")]  # grouped, newest first within
        _, first = np.unique(user[by_user] * (int(item.max()) + 1) + item[by_user], return_index=True)
        distinct = by_user[np.sort(first)]  # each (user, item) at its newest row, order kept
        owners = user[distinct]
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        rank = np.arange(len(distinct)) - np.repeat(starts, np.diff(np.r_[starts, len(distinct)]))
        kept = distinct[rank < seen_cap]
        bounds = np.r_[np.flatnonzero(np.r_[True, user[kept][1:] != user[kept][:-1]]), len(kept)].tolist()
        items = keys["item"].gather(kept).to_list()
        seen_users = keys["user"].gather(kept[bounds[:-1]]).to_list()
        seen_items = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return _Plan(keys["user"].gather(latest_users).to_list(), ordinal[latest_users],
                 keys["item"].gather(latest_items).to_list(), ordinal[latest_items], seen_users, seen_items)


def _gather_rows(files: list[Path], columns: list[str], wanted: np.ndarray, chunk_rows: int,
                 total_rows: int) -> pl.DataFrame:
    """The ``columns`` of the rows whose ordinals are in ``wanted`` (sorted), streamed in ``chunk_rows`` batches."""
    parts, offset = [], 0
    with row_progress("reading features", total=total_rows) as advance:
        for path in files:
            handle = pq.ParquetFile(path)
            for batch in handle.iter_batches(batch_size=chunk_rows, columns=columns):
                lo, hi = np.searchsorted(wanted, [offset, offset + batch.num_rows])
                if hi > lo:
                    local = pa.array(wanted[lo:hi] - offset)
                    frame = pl.from_arrow(batch.take(local))
                    assert isinstance(frame, pl.DataFrame)
                    parts.append(frame.with_columns(pl.Series(_ROW, wanted[lo:hi])))
                offset += batch.num_rows
                advance(batch.num_rows)
    if not parts:
        return pl.DataFrame({c: [] for c in [*columns, _ROW]})
    return pl.concat(parts, how="vertical_relaxed")


# ---- embeddings ----------------------------------------------------------------------------
def id_table(schema: Schema, entity: Entity) -> tuple[str, str] | None:
    """(feature, table) of the entity's sparse feature with the largest cardinality: its id table."""
    candidates = [(schema.table(f.table_name).cardinality or 0, f.name, f.table_name)
                  for f in schema.sparse if f.entity is entity and not f.separator]
    if not candidates:
        return None
    _, feature, table = max(candidates, key=lambda c: c[0])
    return feature, table


def _embedding_table(artifact_dir: Path, schema: Schema, model_name: str, table: str) -> np.ndarray:
    """The (rows, dim) float32 vectors of ``table``'s ids as the model embeds them: its weights when the table is a
    plain one (which weight is the table's is read from the model's modules, built with its tables on ``meta``),
    else computed by the loaded artifact's embedding module for every id."""
    from safetensors import safe_open

    from recsys.config import TrainConfig
    from recsys.embeddings import embedding_tables
    from recsys.models import build_model

    config = TrainConfig.read(artifact_dir / "config.yaml")
    model = build_model(model_name, schema, config.model, config.embedding, embedding_device="meta")
    names = [name for name, (_, owner) in embedding_tables(model).items() if owner == table]
    if len(names) != 1:
        return _scheme_vectors(artifact_dir, table)
    with safe_open(str(artifact_dir / "weights.safetensors"), framework="numpy") as weights:
        if names[0] not in weights.keys():  # noqa: SIM118 (safe_open has no __contains__)
            raise RecsysError(f"{artifact_dir / 'weights.safetensors'}: no '{names[0]}' (the weights of table "
                              f"'{table}')")
        return np.asarray(weights.get_tensor(names[0]), dtype=np.float32)


def _scheme_vectors(artifact_dir: Path, table: str, chunk: int = 1 << 16) -> np.ndarray:
    """Every id's vector of ``table`` through the artifact's embedding module (any scheme)."""
    import torch

    from recsys import artifact
    from recsys.embeddings import table_vectors

    loaded = artifact.load(artifact_dir)
    module = next(m for m in loaded.model.modules() if table in (getattr(m, "physical_tables", None) or {}))
    rows = next(t.cardinality for t in loaded.schema.tables if t.name == table)
    assert rows is not None  # a trained schema is resolved
    parts = [table_vectors(module, table, torch.arange(start, min(rows, start + chunk)))
             for start in range(0, rows, chunk)]
    return torch.cat(parts).numpy().astype(np.float32)


# ---- the job -------------------------------------------------------------------------------
def _write_entities(writer: VersionWriter, entity: Entity, codec: RecordCodec, frame: pl.DataFrame,
                    chunk_rows: int) -> None:
    put = writer.put_users if entity is Entity.USER else writer.put_items
    with row_progress(f"writing {entity} records", total=frame.height) as advance:
        for start in range(0, frame.height, chunk_rows):
            chunk = frame.slice(start, chunk_rows)
            put(chunk["id"].to_list(), encode_records(codec, chunk))
            advance(chunk.height)


def materialize(store: FeatureStore, data_dir: str | Path, artifact_dir: str | Path, *,
                splits: Sequence[str] = ("train", "valid", "test"), chunk_rows: int = 20_000,
                popular_k: int = 1000, seen_cap: int = 200, version: str | None = None,
                embeddings: bool = True) -> dict[str, Any]:
    """Write a new version from ``data_dir`` for the model in ``artifact_dir`` and make it active; a summary."""
    started = time.perf_counter()
    data_dir, artifact_dir = Path(data_dir), Path(artifact_dir)
    if chunk_rows < 1 or popular_k < 0 or seen_cap < 0:
        raise RecsysError("chunk_rows must be >= 1, popular_k and seen_cap >= 0")
    data_schema = Schema.load(data_dir)
    schema = Schema.load(artifact_dir / SCHEMA_FILE)
    check_compatible(data_schema, schema, str(data_dir / SCHEMA_FILE), str(artifact_dir / SCHEMA_FILE))
    layouts = record_layouts(schema, artifact_dir)
    used = {entity: {entry[1] for entry in entries} for entity, entries in layouts.items()}
    data_layouts = {entity: [entry for entry in entries if entry[1] in used[entity]]
                    for entity, entries in record_layouts(data_schema, data_dir).items()}
    different = layout_difference(data_layouts, layouts)
    if different:  # same sizes, other vocabularies: the data's ids are not the artifact's rows
        raise RecsysError(f"{data_dir} does not match {artifact_dir}: {different} (prepared again since training?)")
    if schema.user_key is None or schema.item_key is None:
        raise RecsysError(f"{artifact_dir / SCHEMA_FILE}: the feature store needs user_key and item_key columns")
    manifest_path = artifact_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        raise RecsysError(f"{manifest_path}: missing or not valid JSON (not an artifact?)") from None
    files = _files(data_dir, splits)
    train_files = split_files(data_dir, "train") if "train" in splits else []

    keys = _read_keys(files, schema)
    rows = keys.height
    if rows == 0:
        raise RecsysError(f"{data_dir}: no rows with both a user and an item key in split(s) {', '.join(splits)}")
    plan = _plan(keys, seen_cap)
    del keys
    popular: list[str] = []
    if train_files and popular_k:
        item = schema.item_key.name
        popular = (pl.scan_parquet(train_files).select(pl.col(item).cast(pl.String)).drop_nulls().group_by(item)
                   .len().sort(["len", item], descending=[True, False]).head(popular_k)
                   .collect()[item].to_list())

    user_codec, item_codec = RecordCodec(schema, Entity.USER), RecordCodec(schema, Entity.ITEM)
    columns = list(dict.fromkeys([*(f.name for f in user_codec.dense_features), *user_codec.keys,
                                  *(f.name for f in item_codec.dense_features), *item_codec.keys]))
    gathered = _gather_rows(files, columns, np.union1d(plan.user_rows, plan.item_rows), chunk_rows, rows)
    users = pl.DataFrame({"id": plan.user_ids, _ROW: plan.user_rows}).join(gathered, on=_ROW, how="left")
    items = pl.DataFrame({"id": plan.item_ids, _ROW: plan.item_rows}).join(gathered, on=_ROW, how="left")
    read_seconds = time.perf_counter() - started

    writer = store.begin_version(version)
    try:
        _write_entities(writer, Entity.USER, user_codec, users, chunk_rows)
        _write_entities(writer, Entity.ITEM, item_codec, items, chunk_rows)
        writer.put_popular(popular)
        with row_progress("writing seen lists", total=len(plan.seen_users)) as advance:
            for start in range(0, len(plan.seen_users), chunk_rows):
                chunk = plan.seen_users[start : start + chunk_rows]
                writer.put_seen(chunk, plan.seen_items[start : start + chunk_rows])
                advance(len(chunk))
        written_embeddings = (_write_embeddings(writer, schema, artifact_dir, str(manifest.get("model")), users, items)
                              if embeddings else {})
        seconds = time.perf_counter() - started
        meta = {
            "artifact": str(manifest.get("version", "")), "artifact_dir": str(artifact_dir.resolve()),
            LAYOUT_META: layout_fingerprint(layouts),
            "data_dir": str(data_dir.resolve()), "splits": ",".join(splits), "rows": str(rows),
            "users": str(users.height), "items": str(items.height), "popular": str(len(popular)),
            "embeddings": json.dumps(written_embeddings), "seconds": f"{seconds:.1f}",
        }
        writer.commit(meta)
    except BaseException:
        try:
            writer.abort()
        except Exception as exc:  # noqa: BLE001 (the original error matters more)
            log.warning("feature store: could not remove the partial version %s: %s", writer.version, exc)
        raise
    seconds = time.perf_counter() - started
    summary = {"version": writer.version, "users": users.height, "items": items.height, "popular": len(popular),
               "seen_users": len(plan.seen_users), "embeddings": written_embeddings, "rows": rows,
               "seconds": round(seconds, 2), "read_seconds": round(read_seconds, 2),
               "rows_per_s": round(rows / seconds) if seconds > 0 else rows, "artifact": meta["artifact"]}
    log.info("feature store: materialised %s: %d users, %d items from %d rows in %.1f s",
             writer.version, users.height, items.height, rows, seconds)
    return summary


def _write_embeddings(writer: VersionWriter, schema: Schema, artifact_dir: Path, model_name: str,
                      users: pl.DataFrame, items: pl.DataFrame) -> dict[str, int]:
    written = {}
    for entity, frame in ((Entity.USER, users), (Entity.ITEM, items)):
        found = id_table(schema, entity)
        if found is None:
            continue
        feature, table = found
        weights = _embedding_table(artifact_dir, schema, model_name, table)
        index = frame[feature].fill_null(0).to_numpy().astype(np.int64)
        keep = (index > 0) & (index < len(weights))  # row 0 is the shared out-of-vocabulary row
        ids = frame["id"].filter(pl.Series(keep)).to_list()
        writer.put_embeddings(entity.value, ids, weights[index[keep]])
        written[entity.value] = len(ids)
    return written
