"""``POST /v1/retrieve``: the retriever's top items for a user, with its scores (no ranking).

Answered like the ranking routes by ``retrieve_body`` (``routers.ranking.HOT_ROUTES``, through
``fastpath.HotRoutes``); its own tag, as a server without a retriever answers it 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.ranking.payloads import ERROR_RESPONSES, RetrieveRequest, RetrieveResponse
from services.ranking.routers.ranking import _openapi, answer_request, retrieve_body

router = APIRouter(prefix="/v1", tags=["retrieval"])


@router.post("/retrieve", response_model=RetrieveResponse, responses=ERROR_RESPONSES,
             summary="The retriever's top items for a user", openapi_extra=_openapi(RetrieveRequest))
async def retrieve(request: Request) -> Response:
    """The user's vector from the retriever's features, then its n nearest items in the ANN index (seen items
    left out unless `exclude_seen` is false), with the retriever's scores. Unknown users get the vector of
    default features and `unknown_user: true`. 404 when the server has no retriever (`recsys serve
    --retriever`, or `POST /admin/retriever/reload`)."""
    return await answer_request(request, retrieve_body)
