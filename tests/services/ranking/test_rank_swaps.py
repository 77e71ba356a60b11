"""Swaps under load, over real HTTP: feature versions, models (reload/rollback, int8; quantised scores are in
test_precision), Redis dying and returning, and several workers following one swap."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys.schema import Entity, Schema
from services.feature_store.codec import RecordCodec
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.local_cluster import LocalRedisCluster
from services.feature_store.materialize import materialize
from services.feature_store.redis_store import RedisFeatureStore
from tests.artifacts import reseal
from tests.services.ranking.conftest import API_KEY, FLOAT32_ROUNDING, OfflineRow, Server, metric_value, start_server

ADMIN = {"X-API-Key": API_KEY}


WAIT_S = 120.0  # only how long a test waits before it reports a hang: no outcome depends on it


@dataclass
class _Answer:
    status: int
    payload: dict[str, Any]  # the JSON of a 200, else {}
    index: int  # of the body sent
    epoch: int  # the changes the test had made when the request was sent


class _Traffic:
    """What threads sending requests under load have been answered, and how a test waits for a given answer."""

    def __init__(self) -> None:
        self.answers: list[_Answer] = []
        self.epoch = 0
        self.changed = threading.Condition()

    def next_epoch(self) -> None:
        """A change (a swap, Redis killed or back) is made: requests sent from now on are of the next epoch."""
        with self.changed:
            self.epoch += 1

    def send(self, client: httpx.Client, body: dict[str, Any], index: int = 0) -> None:
        with self.changed:
            epoch = self.epoch
        response = client.post("/v1/rank", json=body)
        payload = response.json() if response.status_code == 200 else {}
        with self.changed:
            self.answers.append(_Answer(response.status_code, payload, index, epoch))
            self.changed.notify_all()

    def wait_for(self, accept: Callable[[_Answer], bool]) -> None:
        """Until a request sent since the last change is answered as ``accept`` wants: each change is seen served."""
        with self.changed:
            epoch, checked = self.epoch, 0

            def answered() -> bool:
                nonlocal checked
                new, checked = self.answers[checked:], len(self.answers)
                return any(a.epoch == epoch and accept(a) for a in new)

            assert self.changed.wait_for(answered, WAIT_S), f"no such answer since change {epoch}"


def _hammer(server: Server, bodies: list[dict[str, Any]], while_running: Callable[[_Traffic], None],
            threads: int = 3) -> list[_Answer]:
    """Threads send ``bodies`` round-robin over keep-alive connections until ``while_running(traffic)`` returns;
    returns every answer."""
    done = threading.Event()
    traffic = _Traffic()

    def worker(offset: int) -> None:
        with server.client() as client:
            i = offset
            while not done.is_set():
                traffic.send(client, bodies[i % len(bodies)], i % len(bodies))
                i += 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    try:
        while_running(traffic)
    finally:
        done.set()
        for thread in pool:
            thread.join(60)
    return traffic.answers


def _outage(traffic: _Traffic, client: httpx.Client, body: dict[str, Any], take_down: Callable[[], None],
            bring_back: Callable[[], None]) -> None:
    """The feature store goes down under ``traffic`` (``take_down``): requests, and /readyz, answer 503 while
    /healthz stays 200; once ``bring_back`` returns, requests are answered 200 again."""
    traffic.wait_for(lambda a: a.status == 200)
    take_down()
    traffic.next_epoch()
    traffic.wait_for(lambda a: a.status == 503)
    down = client.post("/v1/rank", json=body)
    assert down.status_code == 503 and down.json()["detail"].startswith("feature store unavailable: ")
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    bring_back()
    traffic.next_epoch()
    traffic.wait_for(lambda a: a.status == 200)


def _scores(payload: dict[str, Any]) -> dict[str, float]:
    return {item["item_id"]: item["score"] for item in payload["items"]}


def test_feature_version_switches_under_load_never_mix(server: Server, store: RedisFeatureStore,
                                                      served_artifact: tuple[Path, Path],
                                                      offline: list[OfflineRow]) -> None:
    data_dir, artifact_dir = served_artifact
    v1 = store.active_version()
    assert v1 is not None
    v2 = materialize(store, data_dir, artifact_dir)["version"]  # the same data, then users altered online
    bodies = [{"user_id": row.user_id, "item_ids": [r.item_id for r in offline[:20]], "k": 20,
               "context": row.context} for row in offline[:8]]
    codec = RecordCodec(Schema.load(artifact_dir / "schema.json"), Entity.USER)
    for body in bodies:
        dense, ids = codec.decode(store.get_users([body["user_id"]])[0])
        store.put_user(body["user_id"], codec.encode(dense + 0.75, ids))  # v2 only: it is the active one
    try:
        expected: dict[str, list[dict[str, float]]] = {}
        with server.client() as client:
            for version in (v1, v2):
                store.activate(version)
                answers = [client.post("/v1/rank", json=body).json() for body in bodies]
                assert {a["feature_version"] for a in answers} == {version}
                expected[version] = [_scores(a) for a in answers]
        for a, b in zip(expected[v1], expected[v2], strict=True):
            assert max(abs(a[i] - b[i]) for i in a) > 1e-3  # the versions are told apart by their scores

        def switch(traffic: _Traffic) -> None:
            for n in range(10):  # each switch is waited for: the version is served before the next one
                version = v1 if n % 2 else v2
                store.activate(version)
                traffic.next_epoch()
                traffic.wait_for(lambda a, version=version: a.payload.get("feature_version") == version)

        results = _hammer(server, bodies, switch)
    finally:
        store.activate(v1)
    assert results and all(a.status == 200 for a in results)
    versions = Counter(a.payload["feature_version"] for a in results)
    assert set(versions) == {v1, v2}, versions
    for a in results:
        want = expected[a.payload["feature_version"]][a.index]
        got = _scores(a.payload)
        # Within float rounding of batch composition (requests are micro-batched), never the other version's.
        assert max(abs(got[i] - want[i]) for i in want) < 1e-6


def test_hot_reload_and_rollback_under_load_drop_nothing(server: Server, second_artifact: Path,
                                                         offline: list[OfflineRow], tmp_path: Path) -> None:
    bodies = [{"user_id": row.user_id, "item_ids": [r.item_id for r in offline[:50]], "k": 5,
               "context": row.context} for row in offline[:10]]
    with server.client() as client:
        first = client.get("/readyz").json()["model_version"]
        second = json.loads((second_artifact / "manifest.json").read_text())["version"]
        assert first != second
        swaps: list[dict[str, Any]] = []

        def swap(traffic: _Traffic) -> None:
            # Each swap is waited for until a request sent after it is answered by the model it swapped in.
            for n in range(3):
                reloaded = client.post("/admin/reload", json={"artifact": str(second_artifact),
                                                              "precision": "int8" if n == 1 else "fp32"},
                                       headers=ADMIN)
                assert reloaded.status_code == 200, reloaded.text
                swaps.append(reloaded.json())
                traffic.next_epoch()
                traffic.wait_for(lambda a: a.payload.get("model_version") == second)
                rolled = client.post("/admin/rollback", headers=ADMIN)
                assert rolled.status_code == 200, rolled.text
                swaps.append(rolled.json())
                traffic.next_epoch()
                traffic.wait_for(lambda a: a.payload.get("model_version") == first)

        results = _hammer(server, bodies, swap)
        assert client.get("/readyz").json()["model_version"] == first
        assert client.post("/admin/rollback").status_code == 401

        # An artifact whose user records differ (a dense feature standardised differently) is refused: 409.
        odd = tmp_path / "odd-artifact"
        shutil.copytree(second_artifact, odd)
        schema = json.loads((odd / "schema.json").read_text())
        user_dense = next(f for f in schema["dense"] if f["entity"] == "user")
        user_dense["mean"] += 1.0
        (odd / "schema.json").write_text(json.dumps(schema))
        reseal(odd, "schema.json")  # as if exported with that schema
        refused = client.post("/admin/reload", json={"artifact": str(odd)}, headers=ADMIN)
        assert refused.status_code == 409 and user_dense["name"] in refused.json()["detail"]
        assert client.get("/readyz").json()["model_version"] == first
    statuses = Counter(a.status for a in results)
    assert set(statuses) == {200}, statuses
    assert {a.payload["model_version"] for a in results} == {first, second}
    assert swaps[0] == {"model_version": second, "previous_version": first}
    assert swaps[1] == {"model_version": first, "previous_version": second}


def test_redis_down_then_back_is_503_then_200_without_restart(redis_server: EmbeddedRedis,
                                                              served_artifact: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    data_dir, artifact_dir = served_artifact
    redis = redis_server  # fresh and empty
    server = start_server(artifact_dir, redis.url, tmp_path / "serve.log", "--precision", "int8",
                          api_key=None, wait_ready=False)
    store = RedisFeatureStore.from_url(redis.url)
    body = {"user_id": "1", "item_ids": ["1", "2", "3"], "k": 2}
    try:
        with server.client() as client:
            # Nothing materialised yet: not ready, and ranking says what to run.
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "recsys features materialize" in ready.json()["status"]
            empty = client.post("/v1/rank", json=body)
            assert empty.status_code == 503 and "recsys features materialize" in empty.json()["detail"]
            assert client.post("/admin/rollback").status_code == 403
            assert "admin disabled" in client.post("/admin/rollback").json()["detail"]

            materialize(store, data_dir, artifact_dir)
            assert client.get("/readyz").status_code == 200
            assert client.post("/v1/rank", json=body).status_code == 200

            # Traffic throughout: answered 200, then 503 once Redis is gone, then 200 once it is back.
            def back() -> None:
                redis.restart()  # the same port and data directory; nothing was saved, so materialise again
                materialize(store, data_dir, artifact_dir)

            answers = _hammer(server, [body], lambda traffic: _outage(traffic, client, body, redis.kill, back),
                              threads=1)  # redis.kill: SIGKILL, as a crash; returns once the process is gone
            assert client.post("/v1/rank", json=body).status_code == 200
            assert client.get("/readyz").status_code == 200
            assert server.process.poll() is None  # the same process recovered by itself
            metrics = client.get("/metrics").text
        statuses = [a.status for a in answers]
        assert set(statuses) <= {200, 503}, Counter(statuses)
        assert statuses[-1] == 200
        assert "recsys_feature_store_errors_total" in metrics
    finally:
        store.close()
        server.stop()


def test_a_cluster_master_killed_under_load_is_503_then_200_without_restart(
        served_artifact: tuple[Path, Path], offline: list[OfflineRow], tmp_path: Path) -> None:
    """REDIS_URL names a 3-master Redis Cluster; one master is killed (SIGKILL) under traffic and started again:
    the service answers 503 while its slots are down, then the same scores, without being restarted."""
    data_dir, artifact_dir = served_artifact
    cluster = LocalRedisCluster.start(tmp_path / "cluster")
    store = RedisFeatureStore.from_url(cluster.url)
    server: Server | None = None
    try:
        version = materialize(store, data_dir, artifact_dir)["version"]
        server = start_server(artifact_dir, cluster.url, tmp_path / "serve.log", api_key=None)
        body = {"user_id": offline[0].user_id, "item_ids": [r.item_id for r in offline[:30]], "k": 30,
                "context": offline[0].context}
        with server.client() as client:
            healthy = client.post("/v1/rank", json=body)
            assert healthy.status_code == 200 and healthy.json()["feature_version"] == version
            expected = _scores(healthy.json())
            killed = cluster.node_of(f"recsys:{version}:u:{offline[0].user_id}")

            def kill_and_restart(traffic: _Traffic) -> None:
                # restart: its port, AOF and nodes.conf, so the slots come back with their data
                _outage(traffic, client, body, lambda: cluster.kill(killed), lambda: cluster.restart(killed))

            answers = _hammer(server, [body], kill_and_restart, threads=2)
            assert client.get("/readyz").status_code == 200
            after = client.post("/v1/rank", json=body)
            assert server.process.poll() is None  # the same process recovered by itself
        assert after.status_code == 200 and _scores(after.json()) == pytest.approx(expected, **FLOAT32_ROUNDING)
        statuses = Counter(a.status for a in answers)
        assert set(statuses) <= {200, 503} and statuses[503] > 0, statuses
        served = [_scores(a.payload) for a in answers if a.status == 200]
        assert all(scores == pytest.approx(expected, **FLOAT32_ROUNDING) for scores in served)
    finally:
        if server is not None:
            server.stop()
        store.close()
        cluster.stop()


def test_serve_starts_and_stops_the_embedded_redis(served_artifact: tuple[Path, Path], tmp_path: Path) -> None:
    _, artifact_dir = served_artifact
    home = tmp_path / "home"
    server = start_server(artifact_dir, None, tmp_path / "serve.log", wait_ready=False, home=home)
    try:
        info = json.loads((home / "redis" / "server.json").read_text())
        assert info["owner"] == server.process.pid
        with server.client() as client:  # the workers got the embedded server's URL: the store answers
            assert "recsys features materialize" in client.get("/readyz").json()["status"]
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log_tail()
    assert (home / "redis" / "dump.rdb").is_file() and not (home / "redis" / "server.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(info["pid"], 0)


def test_workers_follow_one_swap_and_share_metrics(store: RedisFeatureStore, redis: EmbeddedRedis,
                                                   served_artifact: tuple[Path, Path], second_artifact: Path,
                                                   tmp_path: Path) -> None:
    _, artifact_dir = served_artifact
    server = start_server(artifact_dir, redis.url, tmp_path / "serve.log", "--workers", "2")
    second = json.loads((second_artifact / "manifest.json").read_text())["version"]
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection per request: both workers answer
    try:
        with server.client(limits=fresh) as client:
            for _ in range(10):
                assert client.post("/v1/rank", json={"user_id": "1", "item_ids": ["1", "2"]}).status_code == 200
            swapped = client.post("/admin/reload", json={"artifact": str(second_artifact)}, headers=ADMIN)
            assert swapped.status_code == 200 and swapped.json()["model_version"] == second
            deadline, streak = time.monotonic() + 60, 0
            while streak < 20 and time.monotonic() < deadline:
                version = client.post("/v1/rank", json={"user_id": "1", "item_ids": ["1"]}).json()["model_version"]
                streak = streak + 1 if version == second else 0
                time.sleep(0.02)
            assert streak == 20, "the other worker did not follow the swap"
            text = client.get("/metrics").text
        served = metric_value(text, "recsys_http_requests_total", method="POST", route="/v1/rank", status="200")
        assert served >= 30  # every worker's requests, aggregated
    finally:
        server.stop()
