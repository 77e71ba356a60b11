"""ASGI middleware counting and timing every request by route and status.

Plain ASGI (no ``BaseHTTPMiddleware``, which costs a task and a stream per request). The
body limit is FastAPI's own (``FastAPI(max_body_size=...)``): it raises a 413
``HTTPException`` through this middleware, which counts it as a 413.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.exceptions import HTTPException
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
        except HTTPException as exc:  # answered by a middleware further out (the body limit's 413)
            status = exc.status_code
            raise
        finally:
            route = _route(scope, self.paths)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def _route(scope: dict[str, Any], paths: frozenset[str]) -> str:
    """The route's path template; unmatched paths are one label, so random URLs cannot grow the metrics.

    A request refused before routing (413 on its size) is labelled by its path when that is a route's.
    """
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    return scope["path"] if scope.get("path") in paths else "unmatched"
