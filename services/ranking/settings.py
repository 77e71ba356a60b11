"""The ranking service's settings: one typed object, from ``recsys serve`` flags or from the environment.

``recsys serve`` builds a ``ServeSettings`` from its flags and hands it to each
uvicorn worker through the environment (``RECSYS_SERVE_SETTINGS``, JSON), because
workers are separate processes that build the app with ``app_from_env``. A
benchmark or a test creates the app in-process with ``create_app(ServeSettings(...))``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys.config import ServingPrecision as Precision  # fp32, bf16, int8, int4: one enum for config and service
from recsys.errors import RecsysError
from recsys.schema import describe_validation_error
from recsys.system import cpu_share

if TYPE_CHECKING:
    from services.ranking.http import HttpLimits

SETTINGS_ENV = "RECSYS_SERVE_SETTINGS"


class ServeSettings(BaseModel):
    """Everything a ranking worker needs to start."""

    model_config = ConfigDict(extra="forbid")

    artifact: Path = Field(description="artifact directory to serve at start")
    precision: Precision | None = Field(None, description="embedding tables' precision; default: the artifact's "
                                       "embedding.serving_precision")
    retriever: Path | None = Field(None, description="retriever artifact (with its index/): /v1/recommend ranks its "
                                   "top candidates, /v1/retrieve answers; none: popular items minus seen")
    retriever_prefix: str = Field("recsys-retriever", description="key prefix of the retriever's features in the "
                                  "same Redis (materialised with --redis-prefix)")
    retrieve_candidates: int = Field(200, ge=1, description="/v1/recommend with a retriever ranks this many "
                                     "retrieved items (at least k, at most max_candidates)")
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
    supervisor_pid: int | None = Field(None, description="under --workers N, the `recsys serve` process: a worker "
                                       "exits when it dies")
    # HTTP limits (services.ranking.http); per worker process
    header_timeout_s: float = Field(10.0, gt=0, description="a request line and headers must be complete within "
                                    "this of connecting (or of the request's first byte); else the connection closes")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must be complete within this of its "
                                  "headers; else the connection closes")
    max_header_bytes: int = Field(32 * 1024, ge=1024, description="a longer request line and headers answer 431")
    keep_alive_s: float = Field(5.0, gt=0, description="an idle keep-alive connection closes after this")
    max_connections: int = Field(2048, ge=1, description="past this many open connections the ones idle longest "
                                 "are closed")
    limit_concurrency: int = Field(512, ge=1, description="past this many requests in progress a request answers "
                                   "503 at once (/healthz exempt)")

    @property
    def torch_threads(self) -> int:
        return self.threads or cpu_share(self.workers)

    def http_limits(self) -> HttpLimits:
        from services.ranking.http import HttpLimits  # uvicorn: not needed by `recsys --help`

        return HttpLimits(header_timeout_s=self.header_timeout_s, body_timeout_s=self.body_timeout_s,
                          max_header_bytes=self.max_header_bytes, max_connections=self.max_connections,
                          limit_concurrency=self.limit_concurrency)

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
