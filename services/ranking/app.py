"""The FastAPI app: routers, error mapping, middleware, and the service's lifespan.

    app = create_app(ServeSettings(artifact="runs/dlrm/artifact", redis_url="redis://127.0.0.1:6379/0"))

The artifact is loaded and the store connected when the app starts (its lifespan),
so ``uvicorn --factory services.ranking.app:app_from_env`` workers and in-process
clients (``fastapi.testclient.TestClient(app)``, ``uvicorn.Server``) do the same.
After start, ``app.state.service`` is the ``RankingService``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from recsys import __version__
from recsys.errors import RecsysError
from recsys.models import explains
from services.feature_store.store import FeatureStore, FeatureStoreUnavailable
from services.ranking.fastpath import HotRoutes
from services.ranking.features import ContextError
from services.ranking.metrics import ServiceMetrics
from services.ranking.middleware import BodyLimit, RequestMetrics
from services.ranking.payloads import RankRequest, context_schema
from services.ranking.routers import admin, operations, ranking, retrieval
from services.ranking.service import (
    CannotExplain, ModelConflict, NoFeatureVersion, NonFiniteScores, NoRetriever, RankingService, RecordMismatch,
    TooManyCandidates,
)
from services.ranking.settings import ServeSettings
from services.ranking.workers import exit_with_parent

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away before its request was complete

_DESCRIPTION = """Ranks candidate items for a user with a trained recsys artifact.

Per request the service fetches the user's and the items' features from the Redis
feature store in one round trip (one consistent feature version), scores every
candidate in one forward pass (concurrent requests are micro-batched) and returns
the top k by predicted probability. Errors are one line in `detail`; invalid input
answers 4xx, never 5xx.
"""

_TAGS = [
    {"name": "ranking", "description": "Score candidates and recommend items."},
    {"name": "retrieval", "description": "The retriever's top items (servers started with `--retriever`)."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics."},
    {"name": "admin", "description": "Swap models at run time; needs the `X-API-Key` header."},
]


def create_app(settings: ServeSettings, store: FeatureStore | None = None) -> FastAPI:
    """The ranking app; ``store`` defaults to a Redis store on ``settings.redis_url`` or ``$REDIS_URL``."""
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with RankingService.serving(settings, store, metrics) as service:
            app.state.service = service
            follower = asyncio.create_task(service.follow_control_file())
            try:
                yield
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower

    app = FastAPI(title="recsys ranking", version=__version__, description=_DESCRIPTION, openapi_tags=_TAGS,
                  lifespan=lifespan)
    app.include_router(ranking.router)
    app.include_router(retrieval.router)
    app.include_router(operations.router)
    app.include_router(admin.router)
    _error_handlers(app, metrics)
    _document_request_models(app)
    # Metric labels: the API's paths (included routers are not flattened into app.routes) and the docs'.
    documented = [*app.openapi()["paths"], *(getattr(route, "path", "{") for route in app.routes)]
    paths = frozenset(path for path in documented if "{" not in path)
    # Outermost first: the request metrics count every answer, the body limit's 413 and the hot routes' too.
    app.add_middleware(HotRoutes)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=paths)
    return app


def _document_request_models(app: FastAPI) -> None:
    """Put the request models the hot routes parse themselves into the OpenAPI components, with ``context`` as
    the served model takes it (its context features, no others): a ``Context`` component, rewritten when a
    model swap changes them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in ranking.REQUEST_MODELS:
                schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
                if "context" not in schemas[model.__name__]["properties"]:  # /v1/retrieve takes none
                    continue
                # Before the app starts (no model yet), Context is the request model's own: any feature name.
                schemas["Context"] = schemas[model.__name__]["properties"]["context"]
                schemas[model.__name__]["properties"]["context"] = {"$ref": "#/components/schemas/Context"}
            app.openapi_schema = spec
        service: RankingService | None = getattr(app.state, "service", None)
        if service is not None:
            served = service.slot.current
            schemas = app.openapi_schema["components"]["schemas"]
            schemas["Context"] = context_schema(served.schema)
            # "explain": true is valid only for a model that can explain (the others answer 422).
            explain = {key: value for key, value in schemas[RankRequest.__name__]["properties"]["explain"].items()
                       if key != "enum"}
            schemas[RankRequest.__name__]["properties"]["explain"] = \
                explain if explains(served.model) else {**explain, "enum": [False]}
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """The uvicorn ``--factory`` entry point of ``recsys serve`` workers: settings from the environment."""
    settings = ServeSettings.from_env()
    if settings.supervisor_pid is not None:
        exit_with_parent(settings.supervisor_pid)  # a worker of --workers N: not left serving if it is killed
    return create_app(settings)


def _error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def detail(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(FeatureStoreUnavailable)
    async def _store_down(request: Request, exc: FeatureStoreUnavailable) -> JSONResponse:
        metrics.store_errors.inc()
        return detail(503, f"feature store unavailable: {exc}")

    @app.exception_handler(NoFeatureVersion)
    async def _no_version(request: Request, exc: NoFeatureVersion) -> JSONResponse:
        return detail(503, str(exc))

    @app.exception_handler(NoRetriever)
    async def _no_retriever(request: Request, exc: NoRetriever) -> JSONResponse:
        return detail(404, str(exc))

    @app.exception_handler(TooManyCandidates)
    async def _too_many(request: Request, exc: TooManyCandidates) -> JSONResponse:
        return detail(413, str(exc))

    @app.exception_handler(ContextError)
    async def _bad_context(request: Request, exc: ContextError) -> JSONResponse:
        # The shape of FastAPI's own 422s, so clients parse one format.
        error = {"type": "value_error", "loc": ["body", "context", exc.feature], "msg": str(exc),
                 "input": exc.value}
        return _unprocessable(RequestValidationError([error]))

    @app.exception_handler(CannotExplain)
    async def _cannot_explain(request: Request, exc: CannotExplain) -> JSONResponse:
        error = {"type": "value_error", "loc": ["body", "explain"], "msg": str(exc), "input": True}
        return _unprocessable(RequestValidationError([error]))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _unprocessable(exc)

    @app.exception_handler(ModelConflict)
    async def _conflict(request: Request, exc: ModelConflict) -> JSONResponse:
        return detail(409, str(exc))

    @app.exception_handler(RecsysError)
    async def _bad_artifact(request: Request, exc: RecsysError) -> JSONResponse:
        return detail(400, str(exc))  # only the admin routes raise it: a bad artifact

    @app.exception_handler(RecordMismatch)
    async def _mismatch(request: Request, exc: RecordMismatch) -> JSONResponse:
        return detail(500, str(exc))

    @app.exception_handler(NonFiniteScores)
    async def _nonfinite(request: Request, exc: NonFiniteScores) -> JSONResponse:
        return detail(500, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client closed the connection before its body was complete: nothing reaches it (uvicorn drops what
        # is sent), and the request metrics count it as nginx logs it, 499 "client closed request".
        return Response(status_code=CLIENT_CLOSED_REQUEST)


def _unprocessable(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, made safe to encode: the echoed input may hold NaN (Python's JSON parser takes it),
    lone surrogates or huge numbers, on which the default handler fails with a 500."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
