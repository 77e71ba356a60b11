"""Materialisation against a trained artifact: every record equals its entity's latest row, exactly."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import load_file

from recsys import artifact as artifacts
from recsys.data.layout import split_files
from recsys.embeddings import embedding_tables
from recsys.errors import RecsysError
from recsys.schema import Entity, Schema
from services.feature_store.codec import RecordCodec, layout_fingerprint, record_layouts
from services.feature_store.materialize import encode_records, id_table, materialize
from services.feature_store.redis_store import RedisFeatureStore, RedisVersionWriter


def _all_rows(data_dir: Path) -> pl.DataFrame:
    files = [f for split in ("train", "valid", "test") for f in split_files(data_dir, split)]
    return pl.concat([pl.read_parquet(f) for f in files]).with_row_index("ordinal")


def _latest(rows: pl.DataFrame, key: str) -> pl.DataFrame:
    return rows.sort(["timestamp", "ordinal"]).group_by(key).last()


def _expected(codec: RecordCodec, row: dict) -> bytes:
    dense = np.array([row[f.name] for f in codec.dense_features], dtype=np.float32)
    return codec.encode(dense, [np.atleast_1d(np.asarray(row[k], dtype=np.int64)) for k in codec.keys])


def test_records_popular_seen_and_embeddings(served_artifact: tuple[Path, Path],
                                             make_store: Callable[..., RedisFeatureStore]) -> None:
    data_dir, artifact_dir = served_artifact
    store = make_store()
    summary = materialize(store, data_dir, artifact_dir, chunk_rows=1000, popular_k=50, seen_cap=7, version="m1")
    schema = Schema.load(artifact_dir / "schema.json")
    rows = _all_rows(data_dir)
    assert summary["version"] == "m1" == store.active_version()
    assert summary["rows"] == rows.height == 12_000

    for entity, key, read in ((Entity.USER, "user_key", store.get_users), (Entity.ITEM, "item_key", store.get_items)):
        codec = RecordCodec(schema, entity)
        latest = _latest(rows, key)
        assert summary["users" if entity is Entity.USER else "items"] == latest.height
        records = read(latest[key].to_list())
        expected = [_expected(codec, row) for row in latest.iter_rows(named=True)]
        assert records == expected, f"{entity} records differ from their latest rows"
    user_codec = RecordCodec(schema, Entity.USER)
    assert user_codec.sequence_keys, "the synthetic schema has histories: variable-length records are covered"

    counts = (rows.filter(pl.col("ordinal") < sum(pl.scan_parquet(f).select(pl.len()).collect().item()
                                                  for f in split_files(data_dir, "train")))
              .group_by("item_key").len().sort(["len", "item_key"], descending=[True, False]))
    assert store.popular(50) == ("m1", counts["item_key"].head(50).to_list())

    for user in rows["user_key"].unique().head(20).to_list():
        mine = rows.filter(pl.col("user_key") == user).sort(["timestamp", "ordinal"], descending=True)
        assert store.seen(user) == mine["item_key"].unique(maintain_order=True).head(7).to_list()

    weights = load_file(str(artifact_dir / "weights.safetensors"))
    model = artifacts.load(artifact_dir).model
    table_weight = {table: name for name, (_, table) in embedding_tables(model).items()}
    for entity, key in ((Entity.USER, "user_key"), (Entity.ITEM, "item_key")):
        found = id_table(schema, entity)
        assert found is not None
        feature, table = found
        assert feature == ("user_id" if entity is Entity.USER else "item_id")
        table_weights = weights[table_weight[table]]  # user_id: a bag table; item_id: unpooled (histories)
        latest = _latest(rows, key)
        vectors = store.get_embeddings(entity.value, latest[key].to_list())
        for index, vector in zip(latest[feature].to_list(), vectors, strict=True):
            if index == 0:
                assert vector is None  # the shared out-of-vocabulary row is nobody's embedding
            else:
                np.testing.assert_array_equal(vector, table_weights[index])
        assert summary["embeddings"][entity.value] == int((latest[feature] > 0).sum())
    meta = store.versions()["m1"]
    assert meta["artifact"] == json.loads((artifact_dir / "manifest.json").read_text())["version"]
    assert meta["data_dir"] == str(data_dir.resolve())
    assert meta["layout"] == layout_fingerprint(record_layouts(schema, artifact_dir))  # what readers compare


def test_failure_aborts_and_keeps_the_active_version(served_artifact: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                     make_store: Callable[..., RedisFeatureStore],
                                                     keys_of: Callable[..., list[str]]) -> None:
    data_dir, artifact_dir = served_artifact
    store = make_store()
    materialize(store, data_dir, artifact_dir, version="good", seen_cap=0, popular_k=0)

    def broken(self: RedisVersionWriter, *args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(RedisVersionWriter, "put_popular", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        materialize(store, data_dir, artifact_dir, version="bad")
    assert store.active_version() == "good"
    assert keys_of(store, "bad") == [] and set(store.versions()) == {"good"}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s["tables"][0].update(cardinality=s["tables"][0]["cardinality"] + 1),
     r"table '\w+' has cardinality \d+ in the data but \d+ in the artifact"),
    (lambda s: s["sparse"][1].update(entity="context" if s["sparse"][1]["entity"] != "context" else "user"),
     r"sparse feature '\w+' has entity"),
    (lambda s: s["dense"].append({"name": "extra", "entity": "user", "mean": 0.0, "std": 1.0}),
     r"dense feature 'extra' is in the artifact but not in the data"),
])
def test_schema_mismatch_is_one_line(served_artifact: tuple[Path, Path], tmp_path: Path, store: RedisFeatureStore,
                                     edit: Callable[[dict], None], message: str) -> None:
    data_dir, artifact_dir = served_artifact
    other = tmp_path / "artifact"
    shutil.copytree(artifact_dir, other)
    schema = json.loads((other / "schema.json").read_text())
    edit(schema)
    (other / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(RecsysError, match=message) as failed:
        materialize(store, data_dir, other)
    assert "\n" not in str(failed.value) and str(other / "schema.json") in str(failed.value)
    assert store.active_version() is None


def test_other_vocabularies_of_the_same_size_are_refused(served_artifact: tuple[Path, Path], tmp_path: Path,
                                                         store: RedisFeatureStore) -> None:
    """Data prepared again (same schema and sizes, other rows for the same values) is not the artifact's."""
    data_dir, artifact_dir = served_artifact
    other = tmp_path / "artifact"
    shutil.copytree(artifact_dir, other)
    vocab = other / "vocab" / "item_id.parquet"
    pl.read_parquet(vocab).with_columns(pl.col("index").reverse()).write_parquet(vocab)
    with pytest.raises(RecsysError, match=r"does not match .*\(table=item_id, vocab, ") as failed:
        materialize(store, data_dir, other)
    assert "\n" not in str(failed.value)
    assert store.active_version() is None


def test_encode_records_matches_the_codec_with_nulls_and_ragged_lists(served_artifact: tuple[Path, Path]) -> None:
    schema = Schema.load(served_artifact[1] / "schema.json")
    codec = RecordCodec(schema, Entity.USER)
    frame = _all_rows(served_artifact[0]).head(50)
    sequences = sorted(codec.sequence_keys)
    dense = codec.dense_features[0].name
    sparse = next(k for k in codec.keys if k not in codec.sequence_keys)
    frame = frame.with_columns(
        pl.when(pl.col("ordinal") % 3 == 0).then(None).otherwise(pl.col(dense)).alias(dense),
        pl.when(pl.col("ordinal") % 4 == 0).then(None).otherwise(pl.col(sparse)).alias(sparse),
        pl.when(pl.col("ordinal") % 5 == 0).then(None).otherwise(pl.col(sequences[0])).alias(sequences[0]),
    )
    fill = dict(zip((f.name for f in codec.dense_features), codec.default_dense, strict=True))
    expected = []
    for row in frame.iter_rows(named=True):
        row = {**row, dense: fill[dense] if row[dense] is None else row[dense], sparse: row[sparse] or 0,
               sequences[0]: row[sequences[0]] or []}
        expected.append(_expected(codec, row))
    assert encode_records(codec, frame) == expected
    assert encode_records(codec, frame.head(0)) == []
