"""ASGI middleware: request metrics by route and status, and the request-body size limit.

Plain ASGI (no ``BaseHTTPMiddleware``, which costs a task and a stream per request).
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ranking.metrics import ServiceMetrics


class RequestMetrics:
    """Counts every response by route template and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, paths: frozenset[str] = frozenset()) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths  # paths: the app's routes (no path parameters)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before starting a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = _route(scope, self.paths)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def _route(scope: dict[str, Any], paths: frozenset[str]) -> str:
    """The route's path template; unmatched paths are one label, so random URLs cannot grow the metrics.

    A request answered before routing (413 on its size) is labelled by its path when that is a route's.
    """
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    return scope["path"] if scope.get("path") in paths else "unmatched"


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once a body passes the limit; ``BodyLimit`` answers it."""


_TOO_LARGE_HEADERS = [(b"content-type", b"application/json")]


class BodyLimit:
    """413 for a request body over ``max_bytes``, in the API's error shape (``{"detail": ...}``, as the OpenAPI
    document says): at once when Content-Length declares more, else as soon as the bytes received pass it; the
    app never reads past the limit. (Starlette's own limit answers plain text.)"""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        detail = f"request body larger than {max_bytes} bytes (--max-body-bytes)"
        self._body = json.dumps({"detail": detail}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received, started = 0, False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 413,
                    "headers": [*_TOO_LARGE_HEADERS, (b"content-length", str(len(self._body)).encode())]})
        await send({"type": "http.response.body", "body": self._body})
