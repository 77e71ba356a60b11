"""HTTP limits of `recsys serve` against the real server over raw sockets: slow or stalled clients are closed,
oversized headers refused, idle connections cannot lock /healthz out, overload answers 503, a client that
leaves mid-body is a quiet 499."""

from __future__ import annotations

import json
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.redis_store import RedisFeatureStore
from tests.services.ranking.conftest import Server, metric_value, start_server

# Generous: the server closes after the flags' timeouts (seconds); this only bounds a test that fails.
WAIT_S = 90.0
JSON = {"content-type": "application/json"}
SERVER_OPEN_FILES = 256  # the limited server's open-file limit (ulimit -n), inherited from this process


def _open(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(WAIT_S)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    """One response (status line, headers, a Content-Length body), however the server's writes arrive."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed by the server after {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert length is not None, head
    while len(body) < int(length[1]):
        chunk = sock.recv(65536)
        assert chunk, f"closed by the server in the body of {head!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (recv gives b'')."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.fixture(scope="module")
def limited(store: RedisFeatureStore, redis: EmbeddedRedis, served_artifact: tuple[Path, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`recsys serve` with short header/body timeouts and a 16 KiB header limit, started under an open-file
    limit of 256 (as if ~20k connections had been held against the usual limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_OPEN_FILES, hard))  # the server process inherits it
    try:
        server = start_server(served_artifact[1], redis.url, tmp_path_factory.mktemp("limited") / "serve.log",
                              "--header-timeout-s", "2", "--body-timeout-s", "2", "--max-header-bytes", "16384")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    yield server
    server.stop()


def test_a_connection_stalling_in_its_headers_is_closed(limited: Server) -> None:
    silent = _open(limited)  # connects and sends nothing
    partial = _open(limited)
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1")  # ... and never the rest
    kept_alive = _open(limited)
    kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(kept_alive).startswith(b"HTTP/1.1 200")
    kept_alive.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request, stalled mid-headers
    for sock in (silent, partial, kept_alive):
        with sock:
            assert _read_until_closed(sock) == b""  # closed by the server, without an answer


def test_a_stalled_body_is_closed_and_counted_as_499(limited: Server) -> None:
    with limited.client() as client:
        before = _rank_counts(client)
    with _open(limited) as sock:
        sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"user_id\": ")
        assert _read_until_closed(sock) == b""
    with limited.client() as client:
        after = _poll_counts(client, before)
    assert after["499"] == before["499"] + 1 and after["500"] == before["500"], (before, after)


def test_an_oversized_header_answers_431_and_closes(limited: Server) -> None:
    with _open(limited) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"--max-header-bytes" in answer
    with limited.client() as client:  # a header just under the limit is fine
        assert client.get("/healthz", headers={"X-Big": "a" * 15_000}).status_code == 200


def test_idle_connections_cannot_lock_out_healthz(limited: Server) -> None:
    """More idle and half-sent connections than the server has file descriptors: the ones idle longest are
    closed to make room, and /healthz on a new connection answers."""
    held: list[socket.socket] = []
    try:
        for i in range(SERVER_OPEN_FILES + 100):
            sock = _open(limited)
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        with httpx.Client(base_url=limited.url, timeout=30.0) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
def one_at_a_time(store: RedisFeatureStore, redis: EmbeddedRedis, served_artifact: tuple[Path, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(served_artifact[1], redis.url, tmp_path_factory.mktemp("busy") / "serve.log",
                          "--limit-concurrency", "1", "--body-timeout-s", "600")
    yield server
    server.stop()


def test_past_the_concurrency_limit_requests_answer_503_at_once(one_at_a_time: Server) -> None:
    body = json.dumps({"user_id": "1", "item_ids": ["1", "2"], "k": 2}).encode()
    with _open(one_at_a_time) as held, one_at_a_time.client() as client:
        # A request in progress that the server cannot finish: its body is incomplete.
        held.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
        # Until the server has read the held request's headers, requests pass; then they answer 503.
        deadline = time.monotonic() + WAIT_S
        while (busy := client.post("/v1/rank", content=body, headers=JSON)).status_code == 200:
            assert time.monotonic() < deadline, "no 503 with one request in progress and --limit-concurrency 1"
        assert busy.status_code == 503, busy.text
        assert "--limit-concurrency" in busy.json()["detail"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200  # liveness is exempt

        held.sendall(body[5:])
        assert _read_response(held).startswith(b"HTTP/1.1 200")
        while (after := client.post("/v1/rank", content=body, headers=JSON)).status_code == 503:  # until its task is done
            assert time.monotonic() < deadline
        assert after.status_code == 200


def test_a_client_leaving_mid_body_is_a_quiet_499(server: Server) -> None:
    """The session's server: other modules' tests may have answered 500s on purpose; only this one's count."""
    with server.client() as client:
        before = _rank_counts(client)
    with _open(server) as sock:
        sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"user_id\"")
    with server.client() as client:
        after = _poll_counts(client, before)
    assert after["499"] == before["499"] + 1 and after["500"] == before["500"], (before, after)
    assert "Exception in ASGI application" not in server.log.read_text(errors="replace")


def _rank_counts(client: httpx.Client) -> dict[str, float]:
    """{"499": n, "500": n}: POST /v1/rank requests ended with that status so far, from /metrics."""
    text = client.get("/metrics").text
    return {status: metric_value(text, "recsys_http_requests_total", 0.0, method="POST", route="/v1/rank",
                                 status=status) for status in ("499", "500")}


def _poll_counts(client: httpx.Client, before: dict[str, float]) -> dict[str, float]:
    """The counts once either has moved (the server counts a request when it ends)."""
    deadline = time.monotonic() + WAIT_S
    while (counts := _rank_counts(client)) == before:
        assert time.monotonic() < deadline, f"no 499 or 500 counted after {before}"
        time.sleep(0.1)
    return counts
