"""Checks the contract suites share (models: tests/models/test_contract.py, embedding schemes:
tests/embeddings/test_scheme_contract.py): an unsharded model learns from a real batch; a 2-process run learned;
its artifact reloads in a fresh process with the trained model's predictions, and ``recsys serve`` over HTTP,
from a real Redis (``contract_redis`` in tests/conftest.py), gives the offline scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from recsys import artifact as artifacts
from recsys.data.layout import load_schema
from recsys.data.reader import ParquetReader
from recsys.tasks import task_spec
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.materialize import materialize
from services.feature_store.redis_store import RedisFeatureStore
from tests.conftest import run_python
from tests.services.ranking.conftest import Server, offline_rows, start_server


def train_losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if line["split"] == "train"]


def assert_learns_from_a_batch(model: nn.Module, data: Path, label: str) -> None:
    """On 64 training rows of ``data``: one finite float32 logit per row, and the task's loss backward reaches
    every parameter with a non-zero gradient."""
    batch = next(iter(ParquetReader(data, "train", 64)))
    logits = model(batch)
    assert logits.shape == (64,) and logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
    task_spec(load_schema(data)).loss(logits, batch.labels).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not silent, f"{label}: no gradient reaches {silent}"


def assert_two_process_run_learned(run: Path, steps: int, label: str) -> None:
    """``steps`` finite losses, the last 5 below the first 5 on average, tables on both processes."""
    losses = train_losses(run)
    assert len(losses) == steps and all(np.isfinite(losses)), losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), f"{label}: the loss did not decrease: {losses}"
    plan = (run / "plan.txt").read_text()
    assert "rank 0" in plan and "rank 1" in plan, plan  # tables on both processes



_SCORE = """
import sys, numpy as np, torch
from recsys import artifact
from recsys.data.layout import load_schema
from recsys.data.reader import ParquetReader
from recsys.tasks import task_spec
loaded = artifact.load(sys.argv[1])
reader = ParquetReader(sys.argv[2], "test", 4096, schema=loaded.schema)
scores, labels = [], []
with torch.inference_mode():
    for batch in reader:
        scores.append(task_spec(loaded.schema).link(loaded.model(batch)).numpy())
        labels.append(batch.labels.numpy())
np.save(sys.argv[3], np.stack([np.concatenate(scores), np.concatenate(labels)]))
"""


def assert_reloads_with_the_same_predictions(run: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.npy"
    result = run_python(_SCORE, str(run / "artifact"), str(data), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    scores, labels = np.load(out)
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    # The sharded model's test AUC, measured during training, from the reloaded model's predictions.
    assert roc_auc_score(labels, scores) == pytest.approx(metrics["test.auc"], abs=1e-6)
    loaded = artifacts.load(run / "artifact")
    batch = next(iter(ParquetReader(data, "test", 4096, schema=loaded.schema)))
    with torch.inference_mode():
        here = task_spec(loaded.schema).link(loaded.model(batch)).numpy()
    np.testing.assert_allclose(here, scores[:len(here)], rtol=0, atol=1e-6)


def assert_served_with_the_offline_scores(name: str, run: Path, data: Path, redis: EmbeddedRedis,
                                          tmp_path: Path) -> None:
    store = RedisFeatureStore.from_url(redis.url)
    try:
        materialize(store, data, run / "artifact")
    finally:
        store.close()
    server: Server = start_server(run / "artifact", redis.url, tmp_path / "serve.log")
    try:
        rows = offline_rows(data, run / "artifact", limit=20)
        assert len(rows) >= 10
        with server.client() as client:
            for row in rows:
                others = [r.item_id for r in rows if r.item_id != row.item_id][:7]
                response = client.post("/v1/rank", json={"user_id": row.user_id, "item_ids": [row.item_id, *others],
                                                         "k": 8, "context": row.context})
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["model_version"].startswith(name)
                served = next(item["score"] for item in body["items"] if item["item_id"] == row.item_id)
                assert abs(served - row.score) < 1e-5, (name, row, served)
    finally:
        server.stop()
