"""Shared state for the routers, through ``Depends``: the app's RankingService and the admin check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from services.ranking.service import RankingService

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the key in the environment variable "
                        "named by --api-key-env (RECSYS_API_KEY by default)")


async def get_service(request: Request) -> RankingService:
    return request.app.state.service


Service = Annotated[RankingService, Depends(get_service)]


async def require_admin(service: Service, key: Annotated[str | None, Security(_api_key)]) -> None:
    """403 when no key is configured (admin disabled), 401 for a missing or wrong key."""
    expected = service.api_key
    if expected is None:
        raise HTTPException(403, f"admin disabled: set {service.settings.api_key_env}")
    if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key", headers={"WWW-Authenticate": "APIKey"})
