"""A small closed-loop HTTP/1.1 load generator for loopback benchmarks.

Each of ``concurrency`` threads keeps one keep-alive connection and sends the next
request as soon as the previous answer is read (closed loop), for at most
``requests`` requests in all or ``seconds``, whichever ends first. Requests are
prebuilt bytes and answers are parsed only for status, length and body, so the
client costs tens of microseconds per request and the server's time dominates.
"""

from __future__ import annotations

import itertools
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection that sends raw requests and reads (status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith(b"content-length:")), 0)
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


@dataclass
class LoadResult:
    latencies_ms: list[float]
    seconds: float
    statuses: dict[int, int]
    bodies: list[bytes] = field(default_factory=list)

    def merge(self, other: LoadResult) -> LoadResult:
        """Both runs as one: their latencies pooled, their times added."""
        statuses = dict(self.statuses)
        for status, count in other.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
        return LoadResult(self.latencies_ms + other.latencies_ms, self.seconds + other.seconds, statuses,
                          self.bodies + other.bodies)

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]

        return {"requests": len(lat), "seconds": round(self.seconds, 3),
                "throughput_rps": round(len(lat) / self.seconds, 1),
                "p50_ms": round(pct(50), 3), "p95_ms": round(pct(95), 3), "p99_ms": round(pct(99), 3),
                "mean_ms": round(statistics.fmean(lat), 3),
                "non_200": sum(n for s, n in self.statuses.items() if s != 200)}


def run_load(host: str, port: int, requests: Sequence[bytes], *, concurrency: int, max_requests: int,
             seconds: float, keep_body: Callable[[int], bool] = lambda i: False) -> LoadResult:
    """Send ``requests`` (cycled) from ``concurrency`` closed-loop clients; latencies in ms."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    bodies: list[bytes] = []
    deadline = time.perf_counter() + seconds

    def client() -> None:
        conn = Connection(host, port)
        mine: list[float] = []
        try:
            while time.perf_counter() < deadline:
                i = next(counter)
                if i >= max_requests:
                    break
                start = time.perf_counter()
                status, body = conn.request(requests[i % len(requests)])
                mine.append((time.perf_counter() - start) * 1e3)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if keep_body(i):
                        bodies.append(body)
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(latencies, time.perf_counter() - start, statuses, bodies)
