"""``"explain": true`` on /v1/rank: the top-k rows' contributions, from the model thread, over real HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys import artifact as artifacts
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.materialize import materialize
from services.feature_store.redis_store import RedisFeatureStore
from services.ranking.features import RowBlock
from services.ranking.service import EXPLAIN_TOP
from tests.conftest import REPO_ROOT, train_cli
from tests.services.ranking.conftest import offline_rows, start_server


def test_take_keeps_each_rows_jagged_ids() -> None:
    # two keys: one id per row, and a history of lengths 2, 0, 3
    block = RowBlock(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([[1, 1, 1], [2, 0, 3]], np.int32),
                     [np.array([10, 11, 12]), np.array([1, 2, 5, 6, 7])])
    taken = block.take([2, 0])
    assert taken.dense.tolist() == [[4, 5], [0, 1]]
    assert taken.lengths.tolist() == [[1, 1], [3, 2]]
    assert [v.tolist() for v in taken.values] == [[12, 10], [5, 6, 7, 1, 2]]
    assert taken.take([]).rows == 0


@pytest.fixture(scope="module")
def autoint_artifact(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("explain") / "run"
    result = train_cli(small_ctr, out, "trainer.max_steps=10", model="autoint",
                       extra=("--config", str(REPO_ROOT / "configs" / "autoint.yaml")))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "artifact"


@pytest.mark.slow
def test_explain_returns_the_models_top_pairs_per_returned_item(
        autoint_artifact: Path, served_artifact: tuple[Path, Path], small_ctr: Path, redis_server: EmbeddedRedis,
        tmp_path: Path) -> None:
    store = RedisFeatureStore.from_url(redis_server.url)
    try:
        materialize(store, small_ctr, autoint_artifact)
    finally:
        store.close()
    rows = offline_rows(small_ctr, autoint_artifact, limit=3)
    fields = set(artifacts.load(autoint_artifact).model.field_names)
    server = start_server(autoint_artifact, redis_server.url, tmp_path / "serve.log")
    try:
        with server.client() as client:
            for row in rows:
                candidates = [row.item_id, *[r.item_id for r in rows if r.item_id != row.item_id]]
                body = {"user_id": row.user_id, "item_ids": candidates, "k": 2, "context": row.context}
                plain = client.post("/v1/rank", json=body).json()
                explained = client.post("/v1/rank", json={**body, "explain": True})
                assert explained.status_code == 200, explained.text
                items = explained.json()["items"]
                # Explaining changes no score, and every returned item says which field pairs it attended to.
                assert [(i["item_id"], i["score"]) for i in items] == \
                    [(i["item_id"], i["score"]) for i in plain["items"]]
                assert "explanation" not in plain["items"][0]
                for item in items:
                    weights = [c["weight"] for c in item["explanation"]]
                    assert len(weights) == EXPLAIN_TOP and weights == sorted(weights, reverse=True)
                    for contribution in item["explanation"]:
                        a, b = contribution["name"].split("×")
                        assert {a, b} <= fields and a != b and 0 < contribution["weight"] <= 1
        # A model that cannot explain refuses, naming the field.
        dlrm = start_server(served_artifact[1], redis_server.url, tmp_path / "dlrm.log")
        try:
            with dlrm.client() as client:
                refused = client.post("/v1/rank", json={"user_id": rows[0].user_id, "item_ids": [rows[0].item_id],
                                                        "explain": True})
            assert refused.status_code == 422
            assert refused.json()["detail"][0]["loc"] == ["body", "explain"]
            assert "cannot explain" in refused.json()["detail"][0]["msg"]
        finally:
            dlrm.stop()
    finally:
        server.stop()
