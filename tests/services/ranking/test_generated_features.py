"""Generated features end to end: `features generate` offline → train → artifact → materialize → `recsys serve`
→ /v1/rank, over real HTTP on a real Redis. The service computes every generated feature (every operator, inputs
from the user, the item and the context) exactly as the generated Parquet holds it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys.data.layout import split_files
from recsys.errors import RecsysError
from recsys.schema import DerivedOp, Entity, Schema, SparseFeature
from services.feature_store.codec import RecordCodec, record_layouts
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.materialize import check_compatible
from services.feature_store.redis_store import RedisFeatureStore
from services.feature_store.upsert import set_features
from services.ranking.features import ContextError, merge
from services.ranking.served import ServedModel
from tests.conftest import run_cli
from tests.generated import RECIPES, generated_run
from tests.services.ranking.conftest import OfflineRow, Server, offline_rows, start_server


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return generated_run(tmp_path_factory.mktemp("generated"))


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """This module's own real Redis (the shared one holds the other tests' active version)."""
    server = EmbeddedRedis.start(tmp_path_factory.mktemp("redis-generated"))
    yield server
    server.kill()


@pytest.fixture(scope="module")
def store(redis: EmbeddedRedis, run: tuple[Path, Path, Path]) -> Iterator[RedisFeatureStore]:
    """`recsys features materialize` of the generated data for its artifact, as a separate process."""
    _, data_dir, artifact_dir = run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", redis.url)
        result = run_cli("-q", "features", "materialize", "--data", str(data_dir), "--artifact", str(artifact_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    store = RedisFeatureStore.from_url(redis.url)
    assert store.active_version() is not None
    yield store
    store.close()


@pytest.fixture(scope="module")
def server(store: RedisFeatureStore, redis: EmbeddedRedis, run: tuple[Path, Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(run[2], redis.url, tmp_path_factory.mktemp("serve-generated") / "serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def offline(run: tuple[Path, Path, Path]) -> list[OfflineRow]:
    return offline_rows(run[1], run[2], limit=40)


def test_schema_covers_every_operator_and_records_hold_no_generated_feature(run: tuple[Path, Path, Path]) -> None:
    schema = Schema.load(run[2] / "schema.json")
    generated = {f.name: f for f in schema.derived_features}
    assert set(generated) == set(RECIPES)
    assert {f.derived.op for f in generated.values() if f.derived is not None} == set(DerivedOp)
    layouts = record_layouts(schema, run[2])
    stored = {entry[1] for entity in (Entity.USER, Entity.ITEM) for entry in layouts[entity]}
    assert stored and not stored & set(generated)
    for entity in (Entity.USER, Entity.ITEM):
        codec = RecordCodec(schema, entity)
        assert not {*codec.keys, *(f.name for f in codec.dense_features)} & set(generated)
    # materialize's check: the generated data and its artifact, and the data it was generated from, all agree
    check_compatible(Schema.load(run[1]), schema)
    check_compatible(Schema.load(run[0]), schema)


def test_the_service_layout_computes_the_parquet_values_bit_for_bit(
        run: tuple[Path, Path, Path], store: RedisFeatureStore, offline: list[OfflineRow]) -> None:
    """Every column of the block the service assembles (stored, sent and generated) equals the generated Parquet
    row's, bit for bit; and the generated columns move the scores (the check below has teeth)."""
    _, data_dir, artifact_dir = run
    served = ServedModel.load(artifact_dir, "fp32")
    schema = served.schema
    frame = pl.read_parquet(split_files(data_dir, "test"))
    single = [f for f in schema.sparse if f.separator is None]
    generated_dense = [i for i, f in enumerate(schema.dense) if f.entity is Entity.DERIVED]
    assert len(offline) == 40
    checked = 0
    for row in offline:
        fetched = store.fetch(row.user_id, [row.item_id])
        block = served.features.block(fetched.user, fetched.items, served.features.encode_context(row.context))
        candidates = frame.filter((pl.col("user_key") == row.user_id) & (pl.col("item_key") == row.item_id))
        matches = []
        for parquet in candidates.iter_rows(named=True):
            dense = np.array([parquet[f.name] for f in schema.dense], dtype=np.float32)
            ids = np.array([parquet[f.name] for f in single], dtype=np.int64)
            ours = np.array([block.values[served.keys.index(f.name)][0] for f in single], dtype=np.int64)
            if dense.view(np.uint32).tolist() == block.dense[0].view(np.uint32).tolist() and (ids == ours).all():
                matches.append(parquet)
        assert matches, f"no test row of user {row.user_id}, item {row.item_id} equals the served block"
        checked += 1
    assert checked == len(offline)
    # The generated columns matter to the model: zeroing them changes scores.
    fetched = store.fetch(offline[0].user_id, [r.item_id for r in offline])
    block = served.features.block(fetched.user, fetched.items, served.features.encode_context(offline[0].context))
    with torch.inference_mode():
        scores = served.model(merge([block], served.keys)).numpy()
        block.dense[:, generated_dense] = 0.0
        zeroed = served.model(merge([block], served.keys)).numpy()
    assert np.abs(scores - zeroed).max() > 1e-4


def test_rank_scores_equal_the_offline_model_on_the_generated_parquet(server: Server,
                                                                       offline: list[OfflineRow]) -> None:
    """/v1/rank computes the generated features online; its scores equal the artifact's model on the Batch that
    ParquetReader reads from the generated data set (the values `features generate` wrote)."""
    others = [row.item_id for row in offline]
    rng = random.Random(0)
    with server.client() as client:
        for row in offline:
            candidates = rng.sample([i for i in others if i != row.item_id], 7) + [row.item_id]
            rng.shuffle(candidates)
            response = client.post("/v1/rank", json={"user_id": row.user_id, "item_ids": candidates, "k": 8,
                                                     "context": row.context})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["unknown_user"] is False and body["unknown_items"] == []
            served = next(item["score"] for item in body["items"] if item["item_id"] == row.item_id)
            assert abs(served - row.score) < 1e-5, (row, served)


@pytest.mark.parametrize("name", ["g_add", "g_cross", "g_freq_context"])
def test_context_that_sets_a_generated_feature_is_a_422_naming_it(server: Server, offline: list[OfflineRow],
                                                                  name: str) -> None:
    row = offline[0]
    with server.client() as client:
        response = client.post("/v1/rank", json={"user_id": row.user_id, "item_ids": [row.item_id],
                                                 "context": {**row.context, name: 1}})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "context", name]
    assert "generated feature" in error["msg"] and "\n" not in error["msg"]


def test_a_generated_feature_is_never_set_by_an_upsert(run: tuple[Path, Path, Path], store: RedisFeatureStore,
                                                       redis: EmbeddedRedis, offline: list[OfflineRow],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, artifact_dir = run
    served = ServedModel.load(artifact_dir, "fp32")
    with pytest.raises(RecsysError, match="'g_add' is generated"):
        set_features(store, served.schema, served.features.encoder, Entity.USER, offline[0].user_id, {"g_add": 1.0})
    with pytest.raises(ContextError, match="generated feature"):
        served.features.encode_context({"g_bin": 3})
    monkeypatch.setenv("REDIS_URL", redis.url)
    result = run_cli("-q", "features", "upsert", "--artifact", str(artifact_dir), "--item", offline[0].item_id,
                     "--set", "g_square=2")
    assert result.returncode != 0
    message = result.stderr.strip()
    assert "'g_square' is generated" in message and len(message.splitlines()) == 1, result.stderr


def test_sparse_generated_ids_fit_their_tables(run: tuple[Path, Path, Path], store: RedisFeatureStore,
                                               offline: list[OfflineRow]) -> None:
    served = ServedModel.load(run[2], "fp32")
    fetched = store.fetch(offline[1].user_id, [r.item_id for r in offline])
    block = served.features.block(fetched.user, fetched.items, served.features.encode_context(offline[1].context))
    for feature in served.schema.derived_features:
        if isinstance(feature, SparseFeature):
            ids = block.values[served.keys.index(feature.name)]
            rows = served.schema.table(feature.table_name).cardinality or 0
            assert len(ids) == block.rows and ids.min() >= 0 and ids.max() < rows and ids.max() > 0
