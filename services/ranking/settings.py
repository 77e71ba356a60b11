"""The ranking service's settings: one typed object, from ``recsys serve`` flags or from the environment.

``recsys serve`` builds a ``ServeSettings`` from its flags and hands it to each
uvicorn worker through the environment (``RECSYS_SERVE_SETTINGS``, JSON), because
workers are separate processes that build the app with ``app_from_env``. A
benchmark or a test creates the app in-process with ``create_app(ServeSettings(...))``.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys.errors import RecsysError
from recsys.schema import describe_validation_error

SETTINGS_ENV = "RECSYS_SERVE_SETTINGS"


class Precision(StrEnum):
    FP32 = "fp32"
    INT8 = "int8"  # embedding tables quantised by torchrec (fbgemm int8 rows); MLPs stay fp32


class ServeSettings(BaseModel):
    """Everything a ranking worker needs to start."""

    model_config = ConfigDict(extra="forbid")

    artifact: Path = Field(description="artifact directory to serve at start")
    precision: Precision = Precision.FP32
    redis_url: str | None = Field(None, description="feature store; default: the REDIS_URL environment variable")
    redis_prefix: str = "recsys"
    max_candidates: int = Field(1000, ge=1, description="more item_ids in one request answer 413")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies answer 413 before parsing")
    max_batch_rows: int = Field(4096, ge=1, description="rows one forward pass may score (requests batched together)")
    batch_wait_ms: float = Field(0.0, ge=0, le=100, description="extra wait for more requests to batch; 0: none")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: cores / workers)")
    workers: int = Field(1, ge=1, description="uvicorn worker processes sharing the cores")
    io_threads: int = Field(8, ge=1, description="threads doing feature-store round trips and tensor building")
    recommend_oversample: int = Field(4, ge=1, description="/v1/recommend ranks this many × k popular items")
    api_key_env: str = Field("RECSYS_API_KEY", description="environment variable holding the admin API key")
    control_file: Path | None = Field(None, description="shared by the workers of one `recsys serve`: the admin "
                                      "endpoints write the wanted artifact here and every worker follows it")

    @property
    def torch_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def api_key(self) -> str | None:
        """The admin key, read when asked (not stored in the settings, which travel through the environment)."""
        return os.environ.get(self.api_key_env) or None

    def to_env(self) -> dict[str, str]:
        return {SETTINGS_ENV: self.model_dump_json()}

    @classmethod
    def from_env(cls) -> ServeSettings:
        raw = os.environ.get(SETTINGS_ENV)
        if not raw:
            raise RecsysError(f"{SETTINGS_ENV} is not set: start the service with `recsys serve`")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise RecsysError(f"{SETTINGS_ENV}: {describe_validation_error(exc, None)}") from None
