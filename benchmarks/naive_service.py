"""The naive baseline of ``bench_serve.py``: the ranking API as a first version would write it.

Same artifact, same records, same tensor building as ``services/ranking``, but one
Redis GET per item (and one for the user), one forward pass per request, run in
FastAPI's thread pool (a plain ``def`` route), and the response through pydantic.
Started by the benchmark as ``uvicorn naive_service:app`` with ``NAIVE_ARTIFACT``,
``REDIS_URL`` and ``REDIS_PREFIX`` in the environment.
"""

from __future__ import annotations

import os

import redis
import torch
from fastapi import FastAPI
from pydantic import BaseModel, Field

from services.ranking.features import merge
from services.ranking.served import ServedModel

served = ServedModel.load(os.environ["NAIVE_ARTIFACT"])
client = redis.Redis.from_url(os.environ["REDIS_URL"])
prefix = os.environ.get("REDIS_PREFIX", "recsys")
app = FastAPI()


class RankRequest(BaseModel):
    user_id: str
    item_ids: list[str]
    k: int = Field(10, ge=1)
    context: dict[str, float | int | str | None] = {}


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RankResponse(BaseModel):
    model_version: str
    items: list[ScoredItem]
    unknown_user: bool
    unknown_items: list[str]


@app.post("/v1/rank")
def rank(request: RankRequest) -> RankResponse:
    version = client.get(f"{prefix}:active").decode()
    user = client.get(f"{prefix}:{version}:u:{request.user_id}")
    items = [client.get(f"{prefix}:{version}:i:{item}") for item in request.item_ids]
    features = served.features
    batch = merge([features.block(user, items, features.encode_context(request.context))], features.keys)
    with torch.inference_mode():
        scores = torch.sigmoid(served.model(batch)).tolist()
    ranked = sorted(zip(request.item_ids, scores, strict=True), key=lambda pair: -pair[1])[: request.k]
    return RankResponse(model_version=served.version, items=[ScoredItem(item_id=i, score=s) for i, s in ranked],
                        unknown_user=user is None,
                        unknown_items=[i for i, blob in zip(request.item_ids, items, strict=True) if blob is None])
