"""Two stages over real HTTP (`recsys serve --retriever`) and a real Redis: /v1/recommend ranks the retriever's
unseen candidates with the ranker, /v1/retrieve gives the retriever's offline scores, the retriever reloads and
rolls back, and a bad index is refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys import artifact as artifacts
from recsys.data.layout import split_files
from recsys.data.reader import ParquetReader
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.redis_store import RedisFeatureStore
from services.retrieval.vectors import read_item_vectors
from tests.services.ranking.conftest import API_KEY, Server, assert_same_ranking, start_server
from tests.services.retrieval.conftest import RETRIEVER_PREFIX, TwoStage

ADMIN = {"X-API-Key": API_KEY}
CANDIDATES = 50


@pytest.fixture(scope="module")
def two_stage_server(two_stage: TwoStage, two_stage_redis: EmbeddedRedis,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(two_stage.ranker, two_stage_redis.url, tmp_path_factory.mktemp("serve") / "serve.log",
                          "--retriever", str(two_stage.retriever), "--retrieve-candidates", str(CANDIDATES),
                          "--max-candidates", "300")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stores(two_stage_redis: EmbeddedRedis) -> Iterator[tuple[RedisFeatureStore, RedisFeatureStore]]:
    ranker = RedisFeatureStore.from_url(two_stage_redis.url)
    retriever = RedisFeatureStore.from_url(two_stage_redis.url, prefix=RETRIEVER_PREFIX)
    yield ranker, retriever
    ranker.close()
    retriever.close()


def _users(data_dir: Path, count: int = 5) -> list[str]:
    frame = pl.read_parquet(split_files(data_dir, "train"), columns=["user_key"])
    return sorted(set(frame["user_key"].cast(pl.String).to_list()), key=int)[:count]


def _rated(raw_ratings: Path, user: str) -> set[str]:
    frame = pl.read_csv(raw_ratings).filter(pl.col("userId") == int(user))
    return set(frame["movieId"].cast(pl.String).to_list())


def test_recommend_ranks_the_retrievers_unseen_candidates(two_stage: TwoStage, two_stage_server: Server,
                                                          stores: tuple[RedisFeatureStore, RedisFeatureStore]) -> None:
    ranker_store, retriever_store = stores
    raw = two_stage.ranker_data.parent / "raw" / "ratings.csv"
    with two_stage_server.client() as client:
        for user in _users(two_stage.ranker_data):
            response = client.post("/v1/recommend", json={"user_id": user, "k": 10}, headers={"X-Debug-Timing": "1"})
            assert response.status_code == 200, response.text
            body = response.json()
            items = [item["item_id"] for item in body["items"]]
            assert len(items) == 10 and len(set(items)) == 10
            # Nothing the user has seen: neither namespace's seen list, nor any rating in the raw log.
            seen = set(ranker_store.seen(user)) | set(retriever_store.seen(user))
            assert seen and not seen & set(items)
            assert not _rated(raw, user) & set(items)
            # The candidates are the retriever's top CANDIDATES unseen items; the order is the ranker's.
            ranker_seen = set(ranker_store.seen(user))
            retrieved = client.post("/v1/retrieve", json={"user_id": user, "n": CANDIDATES + len(ranker_seen)})
            candidates = [i["item_id"] for i in retrieved.json()["items"] if i["item_id"] not in ranker_seen]
            candidates = candidates[:CANDIDATES]
            ranked = client.post("/v1/rank", json={"user_id": user, "item_ids": candidates, "k": 10}).json()
            assert_same_ranking(body["items"], ranked["items"])
            scores = [item["score"] for item in body["items"]]
            assert scores == sorted(scores, reverse=True)
            assert body["model_version"] == ranked["model_version"]
            assert body["retriever_version"].startswith("mf-")
            assert set(body["stages_ms"]) == {"retrieve", "fetch", "rank"}
            assert all(v >= 0 for v in body["stages_ms"].values())
            assert body["timings_ms"]["retrieve"] == pytest.approx(body["stages_ms"]["retrieve"])


def _offline_user_vectors(data_dir: Path, artifact_dir: Path) -> dict[str, np.ndarray]:
    """Each user's vector from its latest row (the one materialised): ``user_vectors`` on the reader's Batch."""
    loaded = artifacts.load(artifact_dir)
    latest: dict[str, tuple[int, np.ndarray]] = {}
    for split in ("train", "valid", "test"):
        frame = pl.read_parquet(split_files(data_dir, split), columns=["user_key", "timestamp"])
        reader = ParquetReader(data_dir, split, batch_size=1 << 20, schema=loaded.schema)
        with torch.no_grad():
            for batch, row_ids in reader.iter_with_row_ids():
                vectors = loaded.model.user_vectors(batch).numpy()
                for vector, row in zip(vectors, row_ids.tolist(), strict=True):
                    user, when = str(frame["user_key"][row]), int(frame["timestamp"][row])
                    if user not in latest or when >= latest[user][0]:
                        latest[user] = (when, vector)
    return {user: vector for user, (_, vector) in latest.items()}


def test_retrieve_gives_the_retrievers_offline_scores(two_stage: TwoStage, two_stage_server: Server,
                                                      stores: tuple[RedisFeatureStore, RedisFeatureStore]) -> None:
    _, retriever_store = stores
    users = _offline_user_vectors(two_stage.retriever_data, two_stage.retriever)
    catalogue = read_item_vectors(two_stage.retriever)
    model = artifacts.load(two_stage.retriever).model
    with two_stage_server.client() as client:
        for user in _users(two_stage.retriever_data):
            scores = model.score(torch.from_numpy(users[user][None, :]),
                                 torch.from_numpy(catalogue.vectors))[0].numpy()  # (N,)
            seen = set(retriever_store.seen(user))
            order = [i for i in np.argsort(-scores, kind="stable") if catalogue.keys[i] not in seen][:20]
            body = client.post("/v1/retrieve", json={"user_id": user, "n": 20}).json()
            assert body["unknown_user"] is False and body["retriever_version"].startswith("mf-")
            got = {item["item_id"]: item["score"] for item in body["items"]}
            assert len(got) == 20 and not seen & set(got)
            expected = {catalogue.keys[i]: float(scores[i]) for i in order}
            assert set(got) == set(expected)
            for item, score in got.items():
                assert score == pytest.approx(expected[item], rel=1e-5, abs=1e-5)
            # Without exclusion the seen items come back too, with their scores.
            every = client.post("/v1/retrieve", json={"user_id": user, "n": len(catalogue.keys),
                                                      "exclude_seen": False}).json()["items"]
            assert {i["item_id"] for i in every} == set(catalogue.keys)  # the whole (small) catalogue


def test_unknown_users_and_bad_requests(two_stage_server: Server) -> None:
    with two_stage_server.client() as client:
        body = client.post("/v1/retrieve", json={"user_id": "no-such-user", "n": 5}).json()
        assert body["unknown_user"] is True and len(body["items"]) == 5
        recommended = client.post("/v1/recommend", json={"user_id": "no-such-user", "k": 3}).json()
        assert recommended["unknown_user"] is True and len(recommended["items"]) == 3
        for bad, where in (({"user_id": "1", "n": 0}, ["body", "n"]), ({"user_id": "1", "n": "5"}, ["body", "n"]),
                           ({"n": 5}, ["body", "user_id"]), ({"user_id": "1", "extra": 1}, ["body", "extra"])):
            response = client.post("/v1/retrieve", json=bad)
            assert response.status_code == 422, response.text
            assert response.json()["detail"][0]["loc"] == where
        too_many = client.post("/v1/retrieve", json={"user_id": "1", "n": 301})
        assert too_many.status_code == 413 and "--max-candidates" in too_many.json()["detail"]
        ready = client.get("/readyz").json()
        assert ready["retriever_version"].startswith("mf-") and ready["index"] == "exact"
        assert ready["retriever_feature_version"]


def test_retriever_reload_rollback_and_a_bad_index(two_stage: TwoStage, two_stage_redis: EmbeddedRedis,
                                                   tmp_path: Path) -> None:
    """A server started without a retriever: /v1/retrieve is 404 and /v1/recommend ranks popular items; a reload
    adds one, another swaps it, rollback swaps back, and a retriever with a tampered index is refused (400) while
    the current one keeps serving."""
    server = start_server(two_stage.ranker, two_stage_redis.url, tmp_path / "serve.log")
    try:
        with server.client() as client:
            missing = client.post("/v1/retrieve", json={"user_id": "1"})
            assert missing.status_code == 404 and "--retriever" in missing.json()["detail"]
            assert "stages_ms" not in client.post("/v1/recommend", json={"user_id": "1", "k": 3}).json()
            assert client.post("/admin/retriever/rollback", headers=ADMIN).status_code == 404

            first = client.post("/admin/retriever/reload", json={"artifact": str(two_stage.retriever)},
                                headers=ADMIN)
            assert first.status_code == 200, first.text
            assert first.json()["previous_version"] is None
            version_a = first.json()["model_version"]
            assert client.post("/v1/recommend", json={"user_id": "1", "k": 3}).json()["retriever_version"] == \
                version_a
            second = client.post("/admin/retriever/reload", json={"artifact": str(two_stage.second_retriever)},
                                 headers=ADMIN).json()
            version_b = second["model_version"]
            assert version_b != version_a and second["previous_version"] == version_a
            assert client.post("/v1/retrieve", json={"user_id": "1"}).json()["retriever_version"] == version_b
            back = client.post("/admin/retriever/rollback", headers=ADMIN).json()
            assert back == {"model_version": version_a, "previous_version": version_b}
            assert client.post("/v1/retrieve", json={"user_id": "1"}).json()["retriever_version"] == version_a

            bad = tmp_path / "bad"
            shutil.copytree(two_stage.second_retriever, bad)
            index_file = bad / "index" / "index.faiss"
            index_file.write_bytes(index_file.read_bytes()[:-8])
            refused = client.post("/admin/retriever/reload", json={"artifact": str(bad)}, headers=ADMIN)
            assert refused.status_code == 400 and "sha256 differs" in refused.json()["detail"]
            stale = tmp_path / "stale"
            shutil.copytree(two_stage.second_retriever, stale)
            shutil.copytree(two_stage.retriever / "index", stale / "index", dirs_exist_ok=True)
            refused = client.post("/admin/retriever/reload", json={"artifact": str(stale)}, headers=ADMIN)
            assert refused.status_code == 400 and "other item vectors" in refused.json()["detail"]
            not_retriever = client.post("/admin/retriever/reload", json={"artifact": str(two_stage.ranker)},
                                        headers=ADMIN)
            assert not_retriever.status_code == 400
            assert client.post("/v1/retrieve", json={"user_id": "1"}).json()["retriever_version"] == version_a
            assert client.post("/admin/retriever/reload", json={"artifact": str(bad)}).status_code == 401
    finally:
        server.stop()


def test_serve_refuses_a_bad_retriever_in_one_line(two_stage: TwoStage, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    bad = tmp_path / "bad"
    shutil.copytree(two_stage.retriever, bad)
    meta = json.loads((bad / "index" / "meta.json").read_text())
    (bad / "index" / "meta.json").write_text(json.dumps({**meta, "dim": meta["dim"] + 1}))
    result = run_cli("serve", "--artifact", str(two_stage.ranker), "--retriever", str(bad), "--port", "1")
    assert result.returncode == 2 and "meta.json: dim" in result.stderr and "Traceback" not in result.stderr
