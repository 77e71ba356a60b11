"""`recsys serve --workers N`: workers do not outlive a `recsys serve` process killed with SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.redis_store import RedisFeatureStore
from tests.services.ranking.conftest import start_server

WAIT_S = 120.0


def _workers(pid: int) -> list[int]:
    """The running uvicorn workers of ``pid``: its children started by multiprocessing's spawn (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == pid and _running(int(entry.name)):
            with contextlib.suppress(OSError):
                if b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _stat(pid: int) -> list[str] | None:
    """(state, ppid, ...) of ``pid`` from /proc/PID/stat, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces


def _running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has exited (its reaper may not wait)


def _port_free(port: int) -> bool:
    """Whether a restarted server could listen on ``port`` (uvicorn binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def test_workers_exit_when_the_serve_process_is_killed(store: RedisFeatureStore, redis: EmbeddedRedis,
                                                        served_artifact: tuple[Path, Path], tmp_path: Path) -> None:
    server = start_server(served_artifact[1], redis.url, tmp_path / "serve.log", "--workers", "2")
    workers: list[int] = []
    try:
        deadline = time.monotonic() + WAIT_S
        while len(workers := _workers(server.process.pid)) < 2:
            assert time.monotonic() < deadline, f"2 workers did not start:\n{server.log_tail()}"
            time.sleep(0.2)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()

        deadline = time.monotonic() + WAIT_S
        while any(_running(p) for p in workers) or not _port_free(server.port):
            assert time.monotonic() < deadline, (
                f"workers {[p for p in workers if _running(p)]} still running, or port {server.port} still taken, "
                f"{WAIT_S:.0f} s after SIGKILL of recsys serve:\n{server.log_tail()}")
            time.sleep(0.2)
    finally:
        for pid in workers:  # a failed test must not leave them serving
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        server.stop()

