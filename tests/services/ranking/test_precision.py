"""Serving precision over real HTTP: int8 / int4 embedding tables (fbgemm rows) score close to fp32 for DLRM
(bag collection) and DIN (un-pooled collection); the precision the artifact records is served unless
``--precision`` or a reload names another; the served tables' bytes follow from their shapes."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from kernels.quantize import SCALE_BIAS_BYTES, dense_bytes, served_embedding_bytes, table_precisions
from recsys.embeddings import embedding_tables
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.materialize import materialize
from services.feature_store.redis_store import RedisFeatureStore
from services.ranking.served import ServedModel
from tests.artifacts import reseal
from tests.conftest import train_cli
from tests.services.ranking.conftest import API_KEY, OfflineRow, Server, offline_rows, start_server

ADMIN = {"X-API-Key": API_KEY}
# Largest |score − fp32 score| allowed (scores are click probabilities). Measured on these artifacts (the
# printed figures): DLRM int8 1.4e-4, int4 2.4e-3; DIN int4 1.8e-3. Bounds: about 6x that.
BOUNDS = {"int8": 1e-3, "int4": 1.5e-2}


def _scores(payload: dict[str, Any]) -> dict[str, float]:
    return {item["item_id"]: item["score"] for item in payload["items"]}


def _bodies(offline: list[OfflineRow], users: int = 10, items: int = 40) -> list[dict[str, Any]]:
    return [{"user_id": row.user_id, "item_ids": [r.item_id for r in offline[:items]], "k": items,
             "context": row.context} for row in offline[:users]]


def _differences(fp32: list[dict[str, float]], other: list[dict[str, float]]) -> np.ndarray:
    return np.array([abs(b[i] - a[i]) for a, b in zip(fp32, other, strict=True) for i in a])


def _recording(artifact: Path, into: Path, precision: str | None) -> Path:
    """A copy of ``artifact`` exported with ``embedding.serving_precision: precision`` (None: without the key, as
    before there was one)."""
    shutil.copytree(artifact, into)
    config = yaml.safe_load((into / "config.yaml").read_text())
    config.setdefault("embedding", {})["serving_precision"] = precision
    if precision is None:
        del config["embedding"]["serving_precision"]
    (into / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    reseal(into, "config.yaml")
    return into


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantised_scores_are_close_to_fp32(server: Server, served_artifact: tuple[Path, Path],
                                            offline: list[OfflineRow], precision: str) -> None:
    _, artifact_dir = served_artifact
    bodies = _bodies(offline)
    with server.client() as client:
        assert client.get("/readyz").json()["precision"] == "fp32"  # what the artifact records
        fp32 = [_scores(client.post("/v1/rank", json=body).json()) for body in bodies]
        reloaded = client.post("/admin/reload", json={"artifact": str(artifact_dir), "precision": precision},
                               headers=ADMIN)
        assert reloaded.status_code == 200, reloaded.text
        try:
            assert client.get("/readyz").json()["precision"] == precision
            assert f'precision="{precision}"' in client.get("/metrics").text
            quantised = [_scores(client.post("/v1/rank", json=body).json()) for body in bodies]
        finally:
            assert client.post("/admin/rollback", headers=ADMIN).status_code == 200
        assert client.get("/readyz").json()["precision"] == "fp32"
    errors = _differences(fp32, quantised)
    print(f"DLRM {precision} vs fp32 |score difference|: mean {errors.mean():.2e}, max {errors.max():.2e}")
    assert 0 < errors.max() < BOUNDS[precision]  # quantised, and close


def test_the_recorded_precision_is_served_unless_one_is_named(server: Server, redis: EmbeddedRedis,
                                                             served_artifact: tuple[Path, Path],
                                                             offline: list[OfflineRow], tmp_path: Path) -> None:
    _, artifact_dir = served_artifact
    int4 = _recording(artifact_dir, tmp_path / "int4-artifact", "int4")
    assert ServedModel.load(int4).precision == "int4" and ServedModel.load(artifact_dir).precision == "fp32"
    assert ServedModel.load(_recording(artifact_dir, tmp_path / "old-artifact", None)).precision == "fp32"
    body = _bodies(offline, users=1)[0]
    with server.client() as client:  # started without --precision
        expected = _scores(client.post("/v1/rank", json=body).json())
        # A reload that names no precision serves the new artifact's; one that names it, that one. Each is rolled
        # back, so the shared server serves what it served before.
        for named, served in ((None, "int4"), ("fp32", "fp32")):
            swap = client.post("/admin/reload", json={"artifact": str(int4), "precision": named}, headers=ADMIN)
            assert swap.status_code == 200, swap.text
            try:
                assert client.get("/readyz").json()["precision"] == served
                scores = _scores(client.post("/v1/rank", json=body).json())
            finally:
                assert client.post("/admin/rollback", headers=ADMIN).status_code == 200
            if served == "fp32":
                assert scores == pytest.approx(expected, abs=1e-6)
            else:
                assert 0 < max(abs(scores[i] - expected[i]) for i in expected) < BOUNDS["int4"]
        assert client.get("/readyz").json()["precision"] == "fp32"

    # `recsys serve` without --precision serves the recorded one; with it, the flag's, also on a reload that
    # names none.
    for flags, served, reloaded in (((), "int4", "fp32"), (("--precision", "int8"), "int8", "int8")):
        started = start_server(int4, redis.url, tmp_path / f"serve-{served}.log", *flags)
        try:
            with started.client() as client:
                assert client.get("/readyz").json()["precision"] == served
                assert _scores(client.post("/v1/rank", json=body).json()).keys() == expected.keys()
                swap = client.post("/admin/reload", json={"artifact": str(artifact_dir)}, headers=ADMIN)
                assert swap.status_code == 200, swap.text
                assert client.get("/readyz").json()["precision"] == reloaded
        finally:
            started.stop()
        assert "(" + served + ")" in started.log.read_text()  # the startup line names the precision served


def test_served_bytes_follow_the_table_shapes(served_artifact: tuple[Path, Path]) -> None:
    _, artifact_dir = served_artifact
    fp32 = ServedModel.load(artifact_dir, "fp32").model
    tables = embedding_tables(fp32)  # weight name → (collection, table)
    shapes = [tuple(weight.shape) for name, weight in fp32.named_parameters() if name in tables]  # (rows, dim)
    assert len(shapes) > 3
    fp32_bytes = served_embedding_bytes(fp32)
    assert fp32_bytes == sum(rows * dim * 4 for rows, dim in shapes)
    dense = dense_bytes(fp32)
    assert dense > 0
    for precision, bits in (("int8", 8), ("int4", 4)):
        model = ServedModel.load(artifact_dir, precision).model
        assert set(table_precisions(model).values()) == {precision}
        rows_bytes = [rows * (dim * bits // 8 + SCALE_BIAS_BYTES) for rows, dim in shapes]  # codes, scale, bias
        assert served_embedding_bytes(model) == sum(math.ceil(b / 128) * 128 for b in rows_bytes)  # 128 B lines
        rows = sum(r for r, _ in shapes)
        assert fp32_bytes * bits / 32 < served_embedding_bytes(model) <= \
            fp32_bytes * bits / 32 + rows * SCALE_BIAS_BYTES + 128 * len(shapes)
        assert dense_bytes(model) == dense  # the MLPs stay fp32


@pytest.fixture(scope="module")
def din_artifact(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIN (its item table and history in an EmbeddingCollection) trained for 10 steps, recording int4."""
    out = tmp_path_factory.mktemp("din") / "run"
    result = train_cli(small_ctr, out, "trainer.max_steps=10", "embedding.serving_precision=int4", model="din")
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "artifact"


def test_din_tables_quantised_and_served(din_artifact: Path, small_ctr: Path, redis_server: EmbeddedRedis,
                                         tmp_path: Path) -> None:
    served = ServedModel.load(din_artifact)
    assert served.precision == "int4"
    kinds = {type(m).__name__ for m in served.model.modules()}
    assert {"EmbeddingCollection", "EmbeddingBagCollection"} <= kinds  # torchrec's quantised ones ...
    assert all(type(m).__module__ == "torchrec.quant.embedding_modules" for m in served.model.modules()
               if type(m).__name__ in {"EmbeddingCollection", "EmbeddingBagCollection"})  # ... and only those
    assert set(table_precisions(served.model).values()) == {"int4"}

    store = RedisFeatureStore.from_url(redis_server.url)
    try:
        materialize(store, small_ctr, din_artifact)
    finally:
        store.close()
    offline = offline_rows(small_ctr, din_artifact, limit=30)  # fp32 scores, offline
    bodies = _bodies(offline, users=8, items=30)
    server = start_server(din_artifact, redis_server.url, tmp_path / "serve.log")  # no flag: the recorded int4
    try:
        with server.client() as client:
            assert client.get("/readyz").json()["precision"] == "int4"
            answers = [client.post("/v1/rank", json=body).json() for body in bodies]
            swap = client.post("/admin/reload", json={"artifact": str(din_artifact), "precision": "fp32"},
                               headers=ADMIN)
            assert swap.status_code == 200, swap.text
            exact = [_scores(client.post("/v1/rank", json=body).json()) for body in bodies]
    finally:
        server.stop()
    errors = _differences(exact, [_scores(a) for a in answers])
    print(f"DIN int4 vs fp32 |score difference|: mean {errors.mean():.2e}, max {errors.max():.2e}")
    assert 0 < errors.max() < BOUNDS["int4"]
    # The fp32 reload reproduces the offline scores of the rows' own (user, item, context).
    for row, scores in zip(offline[:8], exact, strict=True):
        assert scores[row.item_id] == pytest.approx(row.score, abs=1e-5)
