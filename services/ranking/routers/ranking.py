"""``POST /v1/rank`` and ``POST /v1/recommend``: scored items, best first.

Each route is one function from the raw body to the response bytes (``rank_body``,
``recommend_body``), shared by the FastAPI routes below (which the OpenAPI schema
documents) and by ``services.ranking.fastpath``, which answers the same paths in
front of FastAPI's routing. Bodies are parsed by pydantic's own JSON parser in one
call (``model_validate_json``); errors keep FastAPI's 422 shape (``loc`` starting
with ``"body"``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from services.ranking.payloads import (
    ERROR_RESPONSES, RankRequest, RankResponse, RecommendRequest, RetrieveRequest,
)
from services.ranking.service import RankingService

router = APIRouter(prefix="/v1", tags=["ranking"])
Body = TypeVar("Body", bound=BaseModel)
Answer = Callable[[RankingService, bytes, bool], Awaitable[bytes]]

# Parsed by the routes themselves; the app adds their schemas to the OpenAPI components (``app.py``).
REQUEST_MODELS: tuple[type[BaseModel], ...] = (RankRequest, RecommendRequest, RetrieveRequest)
DEBUG_HEADER = "x-debug-timing"  # "1": add per-stage timings_ms to the response
_DEBUG_PARAMETER = {"name": "X-Debug-Timing", "in": "header", "required": False,
                    "description": "1: add per-stage timings_ms to the response", "schema": {"type": "string"}}


def _openapi(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body and header of a route that parses ``model`` and the header itself."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
            "parameters": [_DEBUG_PARAMETER]}


def parse(model: type[Body], body: bytes) -> Body:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"]), "input": _printable(error.get("input"))}
                  for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _printable(value: object) -> object:
    """Undecodable JSON comes back as its raw bytes; echo them as text (\\x.. escapes) in the 422."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


async def rank_body(service: RankingService, body: bytes, debug: bool) -> bytes:
    request = parse(RankRequest, body)
    return await service.rank(request.user_id, request.item_ids, request.k, request.context, debug, request.explain)


async def recommend_body(service: RankingService, body: bytes, debug: bool) -> bytes:
    request = parse(RecommendRequest, body)
    return await service.recommend(request.user_id, request.k, request.context, debug)


async def retrieve_body(service: RankingService, body: bytes, debug: bool) -> bytes:
    request = parse(RetrieveRequest, body)
    return await service.retrieve(request.user_id, request.n, request.exclude_seen, debug)


HOT_ROUTES: Mapping[str, Answer] = {"/v1/rank": rank_body, "/v1/recommend": recommend_body,
                                    "/v1/retrieve": retrieve_body}


# Requests to these paths (and /v1/retrieve, ``routers.retrieval``) are answered by ``fastpath.HotRoutes`` before
# routing; the routes declare the API
# (OpenAPI) and answer when the router is used without that middleware, e.g. included in another app.
async def answer_request(request: Request, answer: Answer) -> Response:
    service: RankingService = request.app.state.service
    content = await answer(service, await request.body(), request.headers.get(DEBUG_HEADER) == "1")
    return Response(content, media_type="application/json")


@router.post("/rank", response_model=RankResponse, responses=ERROR_RESPONSES, summary="Rank candidates for a user",
             openapi_extra=_openapi(RankRequest))
async def rank(request: Request) -> Response:
    """Fetch the user's and the candidates' features (one feature-store round trip, one version), score all
    candidates in one forward pass and return the k best. Unknown users and items are scored with default
    features and reported."""
    return await answer_request(request, rank_body)


@router.post("/recommend", response_model=RankResponse, responses=ERROR_RESPONSES,
             summary="Recommend items to a user", openapi_extra=_openapi(RecommendRequest))
async def recommend(request: Request) -> Response:
    """Candidates are the retriever's top items (`--retrieve-candidates`, the user's seen items left out) when
    the server has a retriever, else the most popular items (a few times k) minus the ones the user has seen;
    ranked like /v1/rank. With a retriever the response adds `retriever_version`, `retriever_feature_version`
    and `stages_ms` (retrieve, fetch, rank)."""
    return await answer_request(request, recommend_body)

