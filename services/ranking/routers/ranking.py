"""``POST /v1/rank`` and ``POST /v1/recommend``: scored items, best first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from services.ranking.deps import Service
from services.ranking.payloads import ERROR_RESPONSES, RankRequest, RankResponse, RecommendRequest

router = APIRouter(prefix="/v1", tags=["ranking"])

DebugTiming = Annotated[str | None, Header(alias="X-Debug-Timing", description="1: add per-stage timings_ms "
                                           "to the response")]


@router.post("/rank", response_model=RankResponse, responses=ERROR_RESPONSES, summary="Rank candidates for a user")
async def rank(body: RankRequest, service: Service, debug: DebugTiming = None) -> Response:
    """Fetch the user's and the candidates' features (one feature-store round trip, one version), score all
    candidates in one forward pass and return the k best. Unknown users and items are scored with default
    features and reported."""
    content = await service.rank(body.user_id, body.item_ids, body.k, body.context, debug == "1")
    return Response(content, media_type="application/json")


@router.post("/recommend", response_model=RankResponse, responses=ERROR_RESPONSES,
             summary="Recommend items to a user")
async def recommend(body: RecommendRequest, service: Service, debug: DebugTiming = None) -> Response:
    """Candidates are the most popular items (a few times k) minus the ones the user has seen, ranked like
    /v1/rank."""
    content = await service.recommend(body.user_id, body.k, body.context, debug == "1")
    return Response(content, media_type="application/json")
