"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from services.ranking.deps import Service
from services.ranking.payloads import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The process is up and its event loop answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Readiness",
            responses={503: {"model": Readiness, "description": "not ready; status says why"}})
async def readyz(service: Service) -> JSONResponse:
    """Ready when a model is loaded, the feature store answers, a feature version materialised for the model's
    record layout is readable (the active one, or the newest earlier one while the active version was made for
    another model: then `incompatible_feature_version` names it), and the active version is not older than the
    newest one this service or the store saw activated (a store back from an old dump is not ready)."""
    ready, details = await service.readiness()
    return JSONResponse(details, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(service: Service) -> Response:
    """Requests by route and status, per-stage latency histograms, batch sizes, the model and feature version
    served, whether the active feature version is incompatible, requests refused for non-finite scores."""
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
