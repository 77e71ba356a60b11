"""`recsys serve` over real HTTP on a real Redis: offline agreement, errors, health, metrics, OpenAPI, fuzz."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.schema import Entity, Schema
from services.feature_store.redis_store import RedisFeatureStore
from tests.services.ranking.conftest import API_KEY, OfflineRow, Server


def test_scores_equal_the_offline_model_on_the_same_rows(server: Server, offline: list[OfflineRow]) -> None:
    assert len(offline) == 50  # every test row asked for: none is dropped for its context
    others = [row.item_id for row in offline]
    rng = random.Random(0)
    with server.client() as client:
        for row in offline:
            # The row's item among 12 candidates: it must score as offline whatever it is ranked with.
            candidates = rng.sample([i for i in others if i != row.item_id], 11) + [row.item_id]
            rng.shuffle(candidates)
            response = client.post("/v1/rank", json={"user_id": row.user_id, "item_ids": candidates, "k": 12,
                                                     "context": row.context})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["unknown_user"] is False and body["unknown_items"] == []
            scores = [item["score"] for item in body["items"]]
            assert scores == sorted(scores, reverse=True) and len(scores) == 12
            served = next(item["score"] for item in body["items"] if item["item_id"] == row.item_id)
            assert abs(served - row.score) < 1e-5, (row, served)


def test_top_k_unknown_entities_duplicates_and_recommend(server: Server, store: RedisFeatureStore) -> None:
    _, popular = store.popular(30)
    user = next(u for u in map(str, range(200)) if store.seen(u))
    with server.client() as client:
        body = client.post("/v1/rank", json={"user_id": user, "item_ids": [*popular[:8], "no-such-item",
                                                                            popular[0]], "k": 3}).json()
        assert len(body["items"]) == 3 and body["unknown_items"] == ["no-such-item"]
        assert body["feature_version"] == store.active_version()
        # duplicates are scored each (not deduplicated): the same item twice, the same score up to float
        # reordering (the two rows may fall in different blocks of the forward's matrix products)
        both = client.post("/v1/rank", json={"user_id": user, "item_ids": [popular[0], popular[0]], "k": 5}).json()
        assert [i["item_id"] for i in both["items"]] == [popular[0]] * 2
        assert both["items"][0]["score"] == pytest.approx(both["items"][1]["score"], rel=1e-5)
        cold = client.post("/v1/rank", json={"user_id": "never-seen-user", "item_ids": popular[:4]}).json()
        assert cold["unknown_user"] is True and len(cold["items"]) == 4

        recommended = client.post("/v1/recommend", json={"user_id": user, "k": 5},
                                  headers={"X-Debug-Timing": "1"}).json()
        ids = [i["item_id"] for i in recommended["items"]]
        assert len(ids) == 5 and not set(ids) & set(store.seen(user))
        assert set(recommended["timings_ms"]) == {"fetch", "tensors", "queue", "model", "serialize", "total"}


BAD_BODIES: list[tuple[Any, str]] = [
    ({"user_id": "", "item_ids": ["1"]}, "user_id"),
    ({"user_id": 7, "item_ids": ["1"]}, "user_id"),
    ({"user_id": "1", "item_ids": [1, 2]}, "item_ids"),
    ({"user_id": "1", "item_ids": []}, "item_ids"),
    ({"user_id": "1", "item_ids": "1"}, "item_ids"),
    ({"user_id": "1", "item_ids": ["1"], "k": 0}, "k"),
    ({"user_id": "1", "item_ids": ["1"], "k": "3"}, "k"),
    ({"user_id": "1", "item_ids": ["1"], "k": 10**40}, "k"),
    ({"user_id": "1", "item_ids": ["1"], "k": 2.5}, "k"),
    ({"user_id": "1", "item_ids": ["1"], "k": True}, "k"),
    ({"user_id": "1", "item_ids": ["1"], "context": {"no_such_feature": 1}}, "no_such_feature"),
    ({"user_id": "1", "item_ids": ["1"], "context": {"I9": "many"}}, "I9"),
    ({"user_id": "1", "item_ids": ["1"], "context": {"I9": 10**400}}, "I9"),
    ({"user_id": "1", "item_ids": ["1"], "context": {"C3": ["a", "b"]}}, "C3"),
    ({"user_id": "1", "item_ids": ["1"], "contxt": {}}, "contxt"),
    ([1, 2, 3], "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_invalid_bodies_answer_422_naming_the_field(server: Server, body: Any, field: str) -> None:
    with server.client() as client:
        response = client.post("/v1/rank", json=body)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])


def test_k_may_be_an_integral_number(server: Server) -> None:
    """JSON Schema's integer (the OpenAPI document's type of k) admits 2.0: so does the server."""
    with server.client() as client:
        for path, body in (("/v1/rank", {"user_id": "1", "item_ids": ["1", "2", "3"], "k": 2.0}),
                           ("/v1/recommend", {"user_id": "1", "k": 2.0})):
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            assert len(response.json()["items"]) == 2


def test_size_limits_answer_413(server: Server) -> None:
    with server.client() as client:
        too_many = client.post("/v1/rank", json={"user_id": "1", "item_ids": [str(i) for i in range(601)]})
        assert too_many.status_code == 413 and "--max-candidates" in too_many.json()["detail"]
        body = b'{"user_id": "' + b"x" * 70_000 + b'"}'
        too_big = client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
        # The API's error shape, as the OpenAPI document says (Starlette's own limit answers plain text).
        assert too_big.status_code == 413 and "--max-body-bytes" in too_big.json()["detail"], too_big.text
        streamed = client.post("/v1/rank", content=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]),
                               headers={"content-type": "application/json"})  # chunked: no Content-Length
        assert streamed.status_code == 413 and "--max-body-bytes" in streamed.json()["detail"], streamed.text
        assert 'recsys_http_requests_total{method="POST",route="/v1/rank",status="413"}' in client.get("/metrics").text
        nan = client.post("/v1/rank", content=b'{"user_id": "1", "item_ids": ["1"], "context": {"I9": NaN}}',
                          headers={"content-type": "application/json"})
        assert nan.status_code == 422
        assert client.get("/healthz").json() == {"status": "ok"}


def test_admin_needs_the_key_and_a_bad_artifact_keeps_the_model(server: Server, tmp_path: Path) -> None:
    with server.client() as client:
        version = client.get("/readyz").json()["model_version"]
        assert client.post("/admin/rollback").status_code == 401
        assert client.post("/admin/reload", json={"artifact": "x"}, headers={"X-API-Key": "wrong"}).status_code == 401
        missing = client.post("/admin/reload", json={"artifact": str(tmp_path / "nope")},
                              headers={"X-API-Key": API_KEY})
        assert missing.status_code == 400 and "artifact directory not found" in missing.json()["detail"]
        assert "\n" not in missing.json()["detail"]
        assert client.get("/readyz").json()["model_version"] == version
        assert client.post("/v1/rank", json={"user_id": "1", "item_ids": ["1"]}).status_code == 200


def test_readyz_metrics_and_openapi(server: Server) -> None:
    with server.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["feature_version"]
        client.post("/v1/rank", json={"user_id": "1", "item_ids": ["1", "2"]})
        client.post("/v1/rank", json={"user_id": "1"})
        text = client.get("/metrics").text
        for stage in ("fetch", "tensors", "queue", "model", "serialize", "total"):
            assert f'recsys_rank_stage_seconds_count{{stage="{stage}"}}' in text
        assert 'recsys_http_requests_total{method="POST",route="/v1/rank",status="200"}' in text
        assert 'recsys_http_requests_total{method="POST",route="/v1/rank",status="422"}' in text
        assert "recsys_batch_rows_bucket" in text and "recsys_http_request_duration_seconds_bucket" in text
        assert 'precision="fp32"' in text and "recsys_model_info" in text

        spec = client.get("/openapi.json").json()
        assert {"/v1/rank", "/v1/recommend", "/healthz", "/readyz", "/metrics", "/admin/reload",
                "/admin/rollback"} <= set(spec["paths"])
        assert {t["name"] for t in spec["tags"]} == {"ranking", "retrieval", "operations", "admin"}
        schemas = spec["components"]["schemas"]
        assert schemas["RankRequest"]["examples"] and schemas["RankResponse"]["examples"]
        assert "feature_version" in schemas["RankResponse"]["properties"]
        assert {"413", "503", "422"} <= set(spec["paths"]["/v1/rank"]["post"]["responses"])


# ---- fuzz ----------------------------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                                            inner, max_size=4),
                     max_leaves=12)


def _shaped(context_names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    ids = st.text(min_size=0, max_size=20) | st.integers() | st.none()
    names = st.sampled_from([*context_names, "bogus"]) | st.text(max_size=8)
    return st.fixed_dictionaries({}, optional={
        "user_id": ids | st.sampled_from(["1", "2", "3"]),
        "item_ids": st.lists(ids | st.sampled_from(["1", "2", "3"]), max_size=30) | _json,
        "k": st.integers(min_value=-5, max_value=10**20) | _json,
        "context": st.dictionaries(names, _scalars | st.lists(_scalars, max_size=3), max_size=5) | _json,
        "extra": _json,
    })


@pytest.fixture(scope="module")
def context_names(served_artifact: tuple[Path, Path]) -> list[str]:
    return Schema.load(served_artifact[1] / "schema.json").features_of(Entity.CONTEXT)


def test_fuzzed_bodies_never_answer_5xx(server: Server, context_names: list[str]) -> None:
    client = server.client()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(path=st.sampled_from(["/v1/rank", "/v1/recommend"]),
           body=_shaped(context_names) | _json | st.binary(max_size=40).map(lambda b: b"\x00raw" + b))
    def check(path: str, body: Any) -> None:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()  # NaN/Infinity as Python writes
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert response.status_code < 500, (body, response.status_code, response.text)
        if response.status_code == 200:
            payload = response.json()
            assert {"model_version", "feature_version", "items", "unknown_user", "unknown_items"} <= set(payload)

    try:
        check()
    finally:
        client.close()
