"""uvicorn's httptools protocol with the limits a server facing untrusted clients needs.

uvicorn's own protocol closes a connection only when it stays idle after a response
(``--keep-alive-s``). A client that connects and sends nothing, or a header byte a
second, keeps its connection for as long as it likes, and a 100 MB header is buffered
whole by the parser: enough of them exhaust the worker's file descriptors or memory, and
nobody, /healthz included, gets in. ``LimitedHttpProtocol`` adds, per worker process:

- header timeout: the request line and headers of a connection's first request must be
  complete within ``header_timeout_s`` of connecting, those of a later request within
  ``header_timeout_s`` of its first byte (the keep-alive timeout bounds the wait for that
  byte); else the connection is closed (slowloris).
- body timeout: a body must be complete within ``body_timeout_s`` of its headers (not
  enforced while the server itself has stopped reading: flow control, pipelining).
- header size: a request line and headers over ``max_header_bytes`` answer 431 and the
  connection closes; the parser never holds more than that (a pipelined request's head
  that shares a read with the previous body: that read's size more at most).
- connections: past ``max_connections`` open connections, the ones idle longest (no request
  in progress: kept alive, or headers not yet complete) are closed to make room, so the
  process never reaches its file-descriptor limit and a new client always gets in.
- concurrency: past ``limit_concurrency`` requests in progress, a request answers 503 at
  once. Unlike uvicorn's own ``limit_concurrency``, idle connections do not count, and
  ``GET /healthz`` is exempt (liveness, not load).

Cost on the hot path: a request whose headers and body arrive in one read (the common
case) arms no timer beyond uvicorn's keep-alive one; the header and body deadlines are
armed only for requests that arrive in pieces (and one per connection at connect).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("uvicorn.error")

_HEALTHZ = b"/healthz"
_WARN_EVERY_S = 10.0  # a flood of refused connections or headers logs one line per this many seconds


@dataclass(frozen=True)
class HttpLimits:
    """The limits of one worker (see the module docstring); ``recsys serve`` flags, through ServeSettings."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    max_connections: int
    limit_concurrency: int

    def protocol(self) -> Callable[..., asyncio.Protocol]:
        """What uvicorn's ``http=`` takes: a partial of a module-level class, so it pickles to the workers."""
        return functools.partial(LimitedHttpProtocol, limits=self)


class _Connections:
    """What the connections of one server (one per worker process) share."""

    def __init__(self) -> None:
        self.idle: dict[LimitedHttpProtocol, None] = {}  # no request in progress, longest idle first
        self.warned_at: dict[str, float] = {}  # by message: when it was last logged


_SERVERS: weakref.WeakKeyDictionary[ServerState, _Connections] = weakref.WeakKeyDictionary()


class LimitedHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, limits: HttpLimits) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.limit_concurrency = None  # uvicorn's check counts idle connections; ours is in on_headers_complete
        self._shared = _SERVERS.setdefault(server_state, _Connections())
        self._idle = self._shared.idle
        # Bytes the current request's line and headers may still take; None once they are complete.
        self._header_room: int | None = limits.max_header_bytes
        self._body_pending = False  # headers complete, body not yet
        self._deadline: asyncio.TimerHandle | None = None  # the header or the body deadline
        self._refused = False  # answered 431: what still comes is read and dropped until the client closes

    # ---- connections ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle[self] = None
        self._arm(self.limits.header_timeout_s)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._idle.pop(self, None)
        self._disarm()

    def _make_room(self) -> None:
        """Close the connections idle longest until the count is back at the cap; this new one if none is idle."""
        while len(self.connections) > self.limits.max_connections:
            oldest = next(iter(self._idle))  # this connection is idle, so there is one
            if oldest is self:
                self._warn("Refused a connection: %d open, all with a request in progress (--max-connections).",
                           len(self.connections) - 1)
            oldest._drop()
            if oldest is self:
                return

    def _drop(self) -> None:
        self._idle.pop(self, None)
        self.connections.discard(self)  # now, not when the close completes: the count is what _make_room checks
        self.transport.close()

    # ---- reading ---------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        room = self._header_room
        if room is not None:
            if len(data) > room:
                self._receive_bounded(data, room)
                return
            self._header_room = room - len(data)
        super().data_received(data)
        if self._deadline is None and not self.transport.is_closing():
            if self._body_pending:
                self._arm(self.limits.body_timeout_s)
            elif self._header_room is not None and self._header_room < self.limits.max_header_bytes \
                    and self in self._idle:  # part of the next request's head, and no request running
                self._arm(self.limits.header_timeout_s)

    def _receive_bounded(self, data: bytes, room: int) -> None:
        """Parse only as much as the headers may still take; if they are not complete by then, 431."""
        if self._refused:  # room is 0 from then on, so every read comes here
            return
        view = memoryview(data)
        self._header_room = 0
        super().data_received(view[:room])  # type: ignore[arg-type]  # httptools parses any buffer
        if self.transport.is_closing():  # the parser refused the request (400)
            return
        if self._header_room == 0:  # still in the same request's head: over the limit
            self._refuse_headers()
            return
        self.data_received(view[room:])  # type: ignore[arg-type]

    def _refuse_headers(self) -> None:
        """431, then a lingering close: closing with the rest of the request unread would send a reset, which
        can destroy the 431 before the client reads it. So the answer is followed by a FIN, and the rest is read
        and dropped until the client closes, for at most the header timeout."""
        limit = self.limits.max_header_bytes
        self._warn("Request line and headers over %d bytes: answered 431 and closed the connection.", limit)
        if self.cycle is not None and not self.cycle.response_complete:  # another response is being written
            self.transport.close()
            return
        self._refused = True
        self.transport.write(self._error(431, f"request line and headers larger than {limit} bytes "
                                              "(--max-header-bytes)"))
        self.transport.write_eof()
        self._disarm()
        self._arm(self.limits.header_timeout_s)

    def _warn(self, message: str, *args: Any) -> None:
        """Log ``message`` at most once every few seconds: a flood of bad connections must not flood the log."""
        now = self.loop.time()
        if now - self._shared.warned_at.get(message, float("-inf")) >= _WARN_EVERY_S:
            self._shared.warned_at[message] = now
            log.warning(message, *args)

    def _error(self, status: int, detail: str) -> bytes:
        body = json.dumps({"detail": detail}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                    % len(body))
        return b"".join([*head, body])

    # ---- parser callbacks ------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._header_room = None
        self._body_pending = True
        self._idle.pop(self, None)
        self._disarm()
        if len(self.tasks) >= self.limits.limit_concurrency and self.url != _HEALTHZ:
            self.app = _busy  # the app uvicorn's on_headers_complete starts for this request
            try:
                super().on_headers_complete()
            finally:
                self.app = self.config.loaded_app
        else:
            super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_pending = False
        self._header_room = self.limits.max_header_bytes  # what follows is the next request's head
        self._disarm()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()  # starts the next pipelined request, or arms the keep-alive timer
        if pipelined or self.transport.is_closing():
            return
        self._idle[self] = None
        if self._deadline is None and self._header_room is not None \
                and self._header_room < self.limits.max_header_bytes:  # part of the next head came meanwhile
            self._arm(self.limits.header_timeout_s)

    # ---- deadlines -------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused and not self._refused:  # the server is not reading: not the client's delay
            self._arm(self.limits.body_timeout_s if self._body_pending else self.limits.header_timeout_s)
            return
        self.transport.close()  # a running request sees http.disconnect


_BUSY_BODY = json.dumps({"detail": "server busy: too many requests in progress (--limit-concurrency); "
                                   "retry later"}).encode()
_BUSY_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BUSY_BODY)).encode()),
                 (b"retry-after", b"1")]


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """The answer past --limit-concurrency: 503 at once, without reading the body or running the app."""
    await send({"type": "http.response.start", "status": 503, "headers": _BUSY_HEADERS})
    await send({"type": "http.response.body", "body": _BUSY_BODY})

