"""``POST /admin/reload`` and ``POST /admin/rollback``: swap models without dropping a request."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from services.ranking.deps import Service, require_admin
from services.ranking.payloads import ErrorBody, ModelSwap, ReloadRequest, RetrieverReloadRequest

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses={401: {"model": ErrorBody, "description": "missing or wrong X-API-Key"},
                              403: {"model": ErrorBody, "description": "admin disabled: no API key configured"}})


@router.post("/reload", response_model=ModelSwap, summary="Load and swap in another artifact",
             responses={400: {"model": ErrorBody, "description": "the artifact cannot be loaded"},
                        409: {"model": ErrorBody, "description": "its schema cannot read the feature store's "
                              "records"}})
async def reload(body: ReloadRequest, service: Service) -> ModelSwap:
    """Loads the artifact off the event loop, checks its user and item features match the records the
    current model reads, warms it up and swaps it in atomically: requests already running finish on the model
    they started with. The current model keeps serving if anything fails."""
    swap = await service.reload(body.artifact, body.precision)
    return ModelSwap(model_version=swap.model_version, previous_version=swap.previous_version)


@router.post("/rollback", response_model=ModelSwap, summary="Swap back to the previous model",
             responses={409: {"model": ErrorBody, "description": "no previous model"}})
async def rollback(service: Service) -> ModelSwap:
    """The previous model (kept loaded) becomes current again; the current one becomes previous."""
    swap = await service.rollback()
    return ModelSwap(model_version=swap.model_version, previous_version=swap.previous_version)


@router.post("/retriever/reload", response_model=ModelSwap, summary="Load and swap in another retriever",
             responses={400: {"model": ErrorBody, "description": "the artifact or its index cannot be loaded"},
                        409: {"model": ErrorBody, "description": "no version of the retriever's feature namespace "
                              "has records it reads"}})
async def reload_retriever(body: RetrieverReloadRequest, service: Service) -> ModelSwap:
    """Loads the retriever artifact and its index (checked against its item vectors) off the event loop, checks
    the retriever's feature namespace has records it reads, warms it up and swaps it in atomically; the current
    retriever keeps serving if anything fails. `model_version` / `previous_version` name retrievers here."""
    swap = await service.reload_retriever(body.artifact)
    return ModelSwap(model_version=swap.model_version, previous_version=swap.previous_version)


@router.post("/retriever/rollback", response_model=ModelSwap, summary="Swap back to the previous retriever",
             responses={404: {"model": ErrorBody, "description": "no retriever served"},
                        409: {"model": ErrorBody, "description": "no previous retriever"}})
async def rollback_retriever(service: Service) -> ModelSwap:
    """The previous retriever (kept loaded, with its index) becomes current again."""
    swap = await service.rollback_retriever()
    return ModelSwap(model_version=swap.model_version, previous_version=swap.previous_version)
