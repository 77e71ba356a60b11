"""Online updates: an interaction prepends the item to the user's histories; raw values are re-encoded."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data.layout import split_files
from recsys.errors import RecsysError
from recsys.schema import Entity, Schema
from services.feature_store.codec import RecordCodec
from services.feature_store.encode import RawEncoder
from services.feature_store.materialize import materialize
from services.feature_store.redis_store import RedisFeatureStore
from services.feature_store.upsert import append_event, set_features


@pytest.fixture
def filled(served_artifact: tuple[Path, Path], make_store: Callable[..., RedisFeatureStore]) -> RedisFeatureStore:
    data_dir, artifact_dir = served_artifact
    store = make_store(seen_cap=5)
    materialize(store, data_dir, artifact_dir, popular_k=10, seen_cap=5)
    return store


def _decode(store: RedisFeatureStore, schema: Schema, user: str) -> dict[str, np.ndarray]:
    codec = RecordCodec(schema, Entity.USER)
    blob = store.get_users([user])[0]
    assert blob is not None
    _, ids = codec.decode(blob)
    return dict(zip(codec.keys, ids, strict=True))


def test_append_event(filled: RedisFeatureStore, served_artifact: tuple[Path, Path]) -> None:
    artifact = served_artifact[1]
    schema = Schema.load(artifact / "schema.json")
    item_codec = RecordCodec(schema, Entity.ITEM)
    _, item = filled.popular(2)
    _, item_ids = item_codec.decode(filled.get_items([item[1]])[0])
    item_values = dict(zip(item_codec.keys, item_ids, strict=True))
    user = pl.read_parquet(split_files(served_artifact[0], "train")[0], columns=["user_key"])["user_key"][0]
    before = _decode(filled, schema, user)

    append_event(filled, schema, user, item[1], artifact=artifact)
    after = _decode(filled, schema, user)
    sequences = {f.name: f for f in schema.sequences}
    assert set(sequences) == {"hist_item_id", "hist_category"}
    for name, source in (("hist_item_id", "item_id"), ("hist_category", "item_category")):
        want = np.concatenate([item_values[source], before[name]])[: sequences[name].max_length]
        np.testing.assert_array_equal(after[name], want)
    for name in before:
        if name not in sequences:
            np.testing.assert_array_equal(after[name], before[name])
    assert filled.seen(user)[0] == item[1]

    for _ in range(sequences["hist_item_id"].max_length + 3):  # histories stay capped
        append_event(filled, schema, user, item[0], artifact=artifact)
    capped = _decode(filled, schema, user)
    assert len(capped["hist_item_id"]) == sequences["hist_item_id"].max_length
    assert filled.seen(user)[:2] == [item[0], item[1]]

    new = append_event(filled, schema, "brand-new-user", item[0], artifact=artifact)  # starts from the default record
    dense, ids = RecordCodec(schema, Entity.USER).decode(new)
    np.testing.assert_array_equal(dense, RecordCodec(schema, Entity.USER).default_dense)
    assert filled.seen("brand-new-user") == [item[0]]
    with pytest.raises(RecsysError, match="item 'no-such-item': not in the feature store"):
        append_event(filled, schema, user, "no-such-item", artifact=artifact)


def test_set_features(filled: RedisFeatureStore, served_artifact: tuple[Path, Path]) -> None:
    artifact_dir = served_artifact[1]
    schema = Schema.load(artifact_dir / "schema.json")
    encoder = RawEncoder(schema, artifact_dir)
    codec = RecordCodec(schema, Entity.ITEM)
    dense_name = codec.dense_features[0].name
    sparse_name = next(k for k in codec.keys if k not in codec.sequence_keys)
    _, (item, *_) = filled.popular(1)
    _, before = codec.decode(filled.get_items([item])[0])

    set_features(filled, schema, encoder, "item", item, {dense_name: 7.0, sparse_name: "never-seen-value"})
    dense, after = codec.decode(filled.get_items([item])[0])
    assert dense[0] == pytest.approx(encoder.dense(dense_name, 7.0))
    k = codec.keys.index(sparse_name)
    np.testing.assert_array_equal(after[k], [0])  # out of vocabulary
    for j, (a, b) in enumerate(zip(before, after, strict=True)):
        if j != k:
            np.testing.assert_array_equal(a, b)

    user_dense = next(f.name for f in schema.dense if f.entity is Entity.USER)
    with pytest.raises(RecsysError, match=f"feature '{user_dense}' describes the user, not the item"):
        set_features(filled, schema, encoder, Entity.ITEM, item, {user_dense: 1.0})
    with pytest.raises(RecsysError, match="feature 'bogus': not in the schema"):
        set_features(filled, schema, encoder, Entity.ITEM, item, {"bogus": 1})


def test_updates_encoded_for_another_layout_are_refused(filled: RedisFeatureStore, served_artifact: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    """An artifact whose vocabularies differ from those the active version was materialised with would write other
    ids: refused, naming the version, and nothing is written."""
    artifact = tmp_path / "artifact"
    shutil.copytree(served_artifact[1], artifact)
    vocab = artifact / "vocab" / "C1.parquet"
    pl.read_parquet(vocab).with_columns(pl.col("index").reverse()).write_parquet(vocab)
    schema = Schema.load(artifact / "schema.json")
    version = filled.active_version()
    _, (item, *_) = filled.popular(1)
    user = "some-user"
    before = filled.get_users([user])
    with pytest.raises(RecsysError, match=f"active feature version {version} was materialised for .* whose "
                       "records differ") as refused:
        set_features(filled, schema, RawEncoder(schema, artifact), "user", user, {"C1": "x"})
    assert "\n" not in str(refused.value)
    with pytest.raises(RecsysError, match=f"active feature version {version}"):
        append_event(filled, schema, user, item, artifact=artifact)
    assert filled.get_users([user]) == before and filled.seen(user) == []

    # A version materialised without a recorded layout (before layouts were recorded) is refused too.
    meta = json.loads(filled.client.hget(f"{filled.prefix}:versions", version))
    del meta["layout"]
    filled.client.hset(f"{filled.prefix}:versions", version, json.dumps(meta))
    with pytest.raises(RecsysError, match="layout not recorded"):
        append_event(filled, Schema.load(served_artifact[1] / "schema.json"), user, item,
                     artifact=served_artifact[1])


def test_blank_ids_are_refused_and_nothing_is_written(filled: RedisFeatureStore,
                                                      served_artifact: tuple[Path, Path]) -> None:
    """The library refuses what the CLI refuses: a record under an empty or blank id could never be served."""
    artifact = served_artifact[1]
    schema = Schema.load(artifact / "schema.json")
    _, popular = filled.popular(1)
    user = pl.read_parquet(split_files(served_artifact[0], "train")[0], columns=["user_key"])["user_key"][0]
    for bad_user, bad_item in (("", popular[0]), (" ", popular[0]), (user, "\t")):
        with pytest.raises(RecsysError, match="an id may not be empty or blank"):
            append_event(filled, schema, bad_user, bad_item, artifact=artifact)
    with pytest.raises(RecsysError, match="item '': an id may not be empty or blank"):
        set_features(filled, schema, RawEncoder(schema, artifact), Entity.ITEM, "", {"I5": 1})
    assert filled.get_users(["", " "]) == [None, None] and filled.get_items([""]) == [None]
    assert "\t" not in filled.seen(user)
