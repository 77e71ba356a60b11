"""Ranking-service fixtures: a real Redis with materialised features, `recsys serve` as a real subprocess,
and the offline scores the service must reproduce."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from recsys import artifact as artifacts
from recsys.data.layout import split_files
from recsys.data.reader import ParquetReader
from recsys.schema import Encoding, Entity
from recsys.system import free_port
from recsys.tasks import task_spec
from recsys.zygote import ZygoteProcess
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.encode import RawEncoder
from services.feature_store.materialize import materialize
from services.feature_store.redis_store import RedisFeatureStore
from tests.conftest import cli_process, train_cli

API_KEY = "test-admin-key"


@dataclass
class Server:
    """A `recsys serve` subprocess."""

    process: subprocess.Popen[bytes] | ZygoteProcess
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn's orderly shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(artifact: Path, redis_url: str | None, log: Path, *flags: str, api_key: str | None = API_KEY,
                 wait_ready: bool = True, home: Path | None = None) -> Server:
    """`recsys serve` on a free port against ``redis_url`` (None: the embedded Redis under ``home``); returns
    once /healthz (or /readyz) answers 200."""
    port = free_port()
    env = {**os.environ, "COLUMNS": "200"}
    for name in ("RECSYS_API_KEY", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    if home is not None:
        env["RECSYS_HOME"] = str(home)
    if api_key is not None:
        env["RECSYS_API_KEY"] = api_key
    args = ["serve", "--artifact", str(artifact), "--port", str(port), *flags]
    with log.open("wb") as handle:
        process = cli_process(args, env=env, stdout=handle)
    server = Server(process, port, log)
    deadline = time.monotonic() + 180
    path = "/readyz" if wait_ready else "/healthz"
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"recsys serve exited with {process.returncode}:\n{server.log_tail()}")
            try:
                if client.get(path).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"recsys serve did not answer {path} in time:\n{server.log_tail()}")
            time.sleep(0.2)


def metric_value(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """The sample ``name{labels}`` (exactly those labels) of a /metrics page; ``default`` when absent (a counter
    never incremented), else an AssertionError naming it."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    if default is None:
        raise AssertionError(f"no sample {name}{labels} in /metrics")
    return default


# Scores of one model to float32 rounding: passes batched with other requests, or fewer torch threads under load
# (the service's thread governor), make the forward's GEMMs round differently in the last bits.
FLOAT32_ROUNDING = {"rel": 1e-5, "abs": 1e-7}


def assert_same_ranking(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The same items in the same order with the same scores to ``FLOAT32_ROUNDING`` (seen in CI: 0.20587430894
    against 0.20587432384 for one item)."""
    assert [item["item_id"] for item in got] == [item["item_id"] for item in expected], (got, expected)
    assert [item["score"] for item in got] == pytest.approx([item["score"] for item in expected],
                                                            **FLOAT32_ROUNDING), (got, expected)


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server for the ranking tests that share one server (tests that kill Redis start their own)."""
    server = EmbeddedRedis.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.kill()


@pytest.fixture(scope="session")
def store(redis: EmbeddedRedis, served_artifact: tuple[Path, Path]) -> Iterator[RedisFeatureStore]:
    """The served artifact's data, materialised: one active version (tests that switch versions restore it)."""
    data_dir, artifact_dir = served_artifact
    store = RedisFeatureStore.from_url(redis.url)
    materialize(store, data_dir, artifact_dir)
    yield store
    store.close()


@pytest.fixture(scope="session")
def server(store: RedisFeatureStore, redis: EmbeddedRedis, served_artifact: tuple[Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`recsys serve --artifact A` (fp32, one worker) on the materialised store; tests that swap models swap
    back."""
    _, artifact_dir = served_artifact
    server = start_server(artifact_dir, redis.url, tmp_path_factory.mktemp("serve") / "serve.log",
                          "--max-candidates", "600", "--max-body-bytes", "65536")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def second_artifact(served_artifact: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another model of the same schema (another seed): what a hot reload swaps in."""
    data_dir, _ = served_artifact
    out = tmp_path_factory.mktemp("second") / "run"
    result = train_cli(data_dir, out, "trainer.batch_size=512", "trainer.epochs=1", extra=("--seed", "11"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "artifact"


# ---- offline truth ------------------------------------------------------------------------------

@dataclass
class OfflineRow:
    """A test-split row as a /v1/rank request, and the score the artifact gives it offline."""

    user_id: str
    item_id: str
    context: dict[str, Any]
    score: float


def offline_rows(data_dir: Path, artifact_dir: Path, limit: int = 50) -> list[OfflineRow]:
    """The first ``limit`` test-split rows, every one of them, as raw /v1/rank requests: categorical indices
    inverted through the vocabularies, dense values through their transform (raw counts are integers, so
    ``expm1`` and rounding give the raw value back; the service's encoder must turn it into exactly the stored
    input, which the transform-parity tests guarantee). Scores: the artifact's model on ``ParquetReader``'s
    Batch."""
    loaded = artifacts.load(artifact_dir)
    schema = loaded.schema
    encoder = RawEncoder(schema, artifact_dir)
    reader = ParquetReader(data_dir, "test", batch_size=1 << 20, schema=schema)
    scores = np.empty(reader.total_rows, dtype=np.float32)
    with torch.inference_mode():
        for batch, row_ids in reader.iter_with_row_ids():
            scores[row_ids.numpy()] = task_spec(schema).link(loaded.model(batch)).numpy()
    frame = pl.read_parquet(split_files(data_dir, "test"))
    assert frame.height >= limit, f"{data_dir}: {frame.height} test rows, fewer than the {limit} asked for"
    context_dense = [f for f in schema.dense if f.entity is Entity.CONTEXT]
    context_sparse = [f for f in schema.sparse if f.entity is Entity.CONTEXT]
    inverse = {}
    for feature in context_sparse:
        table = schema.table(feature.table_name)
        assert table.encoding is Encoding.VOCAB, "the synthetic schema's context tables are vocabularies"
        vocab = pl.read_parquet(artifact_dir / (table.vocab_file or f"vocab/{table.name}.parquet"))
        inverse[feature.name] = dict(zip(vocab["index"].to_list(), vocab["value"].to_list(), strict=True))
    rows: list[OfflineRow] = []
    for r, row in enumerate(frame.head(limit).iter_rows(named=True)):
        context: dict[str, Any] = {}
        for feature in context_dense:
            stored = float(np.float32(row[feature.name]))
            mean, std = feature.mean or 0.0, feature.std if feature.std else 1.0
            raw = max(0, round(math.expm1(stored * std + mean)))
            online = encoder.dense(feature.name, raw)
            assert online == stored, f"test row {r}, {feature.name}: raw {raw} encodes to {online}, stored {stored}"
            context[feature.name] = raw
        for feature in context_sparse:
            context[feature.name] = inverse[feature.name].get(row[feature.name])  # index 0 (OOV) → None
        rows.append(OfflineRow(row["user_key"], row["item_key"], context, float(scores[r])))
    assert len(rows) == limit
    return rows


@pytest.fixture(scope="session")
def offline(served_artifact: tuple[Path, Path]) -> list[OfflineRow]:
    return offline_rows(*served_artifact)
