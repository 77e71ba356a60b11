"""The two hot routes as plain ASGI, in front of FastAPI's routing.

FastAPI's per-request machinery (exception and exit-stack middleware, routing,
dependency solving, Request and Response objects) cost about 0.2 ms per request
here, a tenth of a 100-candidate ``/v1/rank``. This middleware answers ``POST
/v1/rank`` and ``POST /v1/recommend`` itself with the very functions the FastAPI
routes call (``routers.ranking.HOT_ROUTES``), and turns any exception into a
response with the app's own exception handlers, as Starlette's ExceptionMiddleware
would: one implementation of every answer, success or error. Everything else goes
on to FastAPI. It sits inside the body-size limit and the request metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ranking.routers.ranking import DEBUG_HEADER, HOT_ROUTES

_HEADERS = [(b"content-type", b"application/json")]
_DEBUG = DEBUG_HEADER.encode()


class HotRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = HOT_ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
            debug = any(name == _DEBUG and value == b"1" for name, value in scope["headers"])
            content = await answer(scope["app"].state.service, body, debug)
        except Exception as exc:
            handler = _handler(scope, exc)
            if handler is None:
                raise  # a bug: ServerErrorMiddleware answers 500
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_HEADERS, (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()  # the app's handler counts a 499; nothing is sent
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _handler(scope: Scope, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    """The app's handler for ``exc`` (by class, most specific first), as Starlette looks it up."""
    handlers = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
