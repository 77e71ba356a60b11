"""The process that starts the embedded Redis restarts it when it dies: on the same port, with its data, while
other commands wait for it rather than start a second server; `recsys serve` recovers without a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.feature_store import embedded
from services.feature_store.embedded import open_store
from services.feature_store.materialize import materialize
from tests.conftest import REPO_ROOT
from tests.services.feature_store.conftest import wait_until_in_aof
from tests.services.ranking.conftest import start_server


def _server_info(home: Path) -> dict[str, int]:
    return json.loads((home / "redis" / "server.json").read_text())


def _wait_for_new_server(home: Path, old_pid: int, timeout: float = 120.0) -> dict[str, int]:
    """server.json once it names a live server other than ``old_pid`` that answers its admin user."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = _server_info(home)
        except (OSError, ValueError):
            info = {}
        if info.get("pid", old_pid) != old_pid:
            admin = embedded.Credentials.load(home / "redis").url(info["port"], admin=True)
            if embedded._ping(admin):
                return info
        assert time.monotonic() < deadline, f"the embedded redis was not restarted within {timeout:.0f} s"
        time.sleep(0.05)


def _supervisors() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("redis-supervisor-")]


def test_a_killed_server_is_restarted_with_its_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    with open_store() as store:
        writer = store.begin_version("v1")
        writer.put_users(["u1"], [b"U1"])
        writer.commit()
        store.put_user("u2", b"upserted")
        first = _server_info(tmp_path)
        assert first["supervisor"] == os.getpid()
        admin = embedded.Credentials.load(tmp_path / "redis").url(first["port"], admin=True)
        wait_until_in_aof(embedded._client(admin, 5.0))

        with embedded._locked(tmp_path / "redis"):  # the supervisor restarts under this lock: hold it back
            os.kill(first["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 60
            while embedded._ping(admin):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # What another command finds now: no server to attach to, but one to wait for, not to replace.
            assert embedded._running_server(tmp_path / "redis") == (None, True)
            other = subprocess.Popen([sys.executable, "-m", "recsys.cli.main", "features", "versions"],
                                     cwd=REPO_ROOT, env={**os.environ, "COLUMNS": "200"},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        second = _wait_for_new_server(tmp_path, first["pid"])
        assert second["port"] == first["port"] and second["supervisor"] == os.getpid()
        out, err = other.communicate(timeout=120)
        assert other.returncode == 0, err
        assert "v1" in out and _server_info(tmp_path)["pid"] == second["pid"]  # it attached to the same server
        fetched = store.fetch("u2", [])  # the same store object reconnects
        assert (fetched.version, fetched.user) == ("v1", b"upserted")
        assert store.get_users(["u1"]) == [b"U1"]
        assert [t.name for t in _supervisors()] == [f"redis-supervisor-{first['port']}"]
    for thread in _supervisors():  # a deliberate stop ends the supervisor instead of restarting the server
        thread.join(60)
    assert not _supervisors()
    assert not (tmp_path / "redis" / "server.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(second["pid"], 0)


def test_serve_recovers_from_a_redis_crash_without_a_restart(served_artifact: tuple[Path, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, artifact_dir = served_artifact
    home = tmp_path / "home"
    server = start_server(artifact_dir, None, tmp_path / "serve.log", api_key=None, wait_ready=False, home=home)
    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.delenv("REDIS_URL", raising=False)
    body = {"user_id": "1", "item_ids": ["1", "2", "3"], "k": 2}
    try:
        with open_store() as store:  # attaches to the server `recsys serve` started
            version = materialize(store, data_dir, artifact_dir)["version"]
            wait_until_in_aof(embedded._client(embedded.Credentials.load(home / "redis").url(
                _server_info(home)["port"], admin=True), 5.0))
        first = _server_info(home)
        assert first["supervisor"] == server.process.pid
        with server.client() as client:
            assert client.get("/readyz").json()["feature_version"] == version
            assert client.post("/v1/rank", json=body).status_code == 200

            with embedded._locked(home / "redis"):  # hold the restart back until the outage is seen
                os.kill(first["pid"], signal.SIGKILL)
                deadline = time.monotonic() + 60
                while (down := client.post("/v1/rank", json=body)).status_code != 503:
                    assert down.status_code == 200 and time.monotonic() < deadline, down.text
                    time.sleep(0.05)
                assert down.json()["detail"].startswith("feature store unavailable: ")
                assert client.get("/readyz").status_code == 503

            second = _wait_for_new_server(home, first["pid"])
            assert second["port"] == first["port"]
            deadline = time.monotonic() + 60
            while (up := client.post("/v1/rank", json=body)).status_code != 200:
                assert up.status_code == 503 and time.monotonic() < deadline, up.text
                time.sleep(0.05)
            assert up.json()["feature_version"] == version  # its data came back with it: nothing re-materialised
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["feature_version"] == version
        assert server.process.poll() is None  # the same `recsys serve`
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log_tail()
    assert "restarted the embedded redis-server" in server.log.read_text()
    assert not (home / "redis" / "server.json").exists()  # stopped, and not restarted after the deliberate stop
    with pytest.raises(ProcessLookupError):
        os.kill(second["pid"], 0)
