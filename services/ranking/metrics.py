"""Prometheus metrics of one ranking app: requests, per-stage latency, batch sizes, the model and feature version
served.

Each app owns a ``CollectorRegistry`` (two apps in one process, as in tests and
in-process benchmarks, do not collide). Under ``recsys serve --workers N`` the
workers write prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``,
set by the serve command) and ``/metrics`` aggregates every worker.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STAGES = ("fetch", "tensors", "queue", "model", "serialize", "total")
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015,
                    0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
_ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4096, 8192)
_REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("recsys_http_requests", "HTTP requests by route and status code",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("recsys_http_request_duration_seconds", "HTTP request latency by route "
                                 "(server side, from first byte received to response sent)", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("recsys_rank_stage_seconds", "Time of each stage of a /v1/rank or /v1/recommend "
                               "request: fetch (feature store round trip), tensors (decode + Batch), queue (waiting "
                               "for the model thread), model (forward pass), serialize, total", ["stage"],
                               buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("recsys_batch_rows", "Rows scored per forward pass (micro-batched requests "
                                    "together)", buckets=_ROW_BUCKETS, registry=r)
        self.batch_requests = Histogram("recsys_batch_requests", "Requests scored per forward pass",
                                        buckets=_REQUEST_BUCKETS, registry=r)
        self.candidates = Histogram("recsys_rank_candidates", "Candidates per ranking request",
                                    buckets=_ROW_BUCKETS, registry=r)
        self.model_info = Gauge("recsys_model_info", "The model being served (1) and the ones served before (0)",
                                ["version", "precision", "artifact"], registry=r, multiprocess_mode="livemax")
        self.swaps = Counter("recsys_model_swaps", "Model swaps by kind (reload, rollback)", ["kind"], registry=r)
        self.store_errors = Counter("recsys_feature_store_errors", "Requests answered 503 because the feature "
                                    "store was unavailable", registry=r)
        self.feature_version = Gauge("recsys_feature_version_info", "The active feature version as last seen (1) "
                                     "and earlier ones (0); compatible: whether its records have the model's layout",
                                     ["version", "compatible"], registry=r, multiprocess_mode="livemax")
        self.feature_version_served = Gauge("recsys_feature_version_served_info", "The feature version responses "
                                            "are read from (1) and earlier ones (0)", ["version"], registry=r,
                                            multiprocess_mode="livemax")
        self.incompatible = Gauge("recsys_incompatible_feature_version", "1 while the active feature version was "
                                  "materialised for another record layout than the model's: the service reads the "
                                  "last compatible version (or answers 503 when none is left)", registry=r,
                                  multiprocess_mode="livemax")
        self.nonfinite = Counter("recsys_nonfinite_scores", "Requests answered 500 because the model gave "
                                 "non-finite scores", registry=r)
        self._versions: tuple[tuple[str, str], str | None] | None = None  # the labels last set to 1
        for stage in STAGES:  # every stage is listed from the start, even before the first request
            self.stage.labels(stage)

    def observe_batch(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def serving(self, version: str, precision: str, artifact: str, previous: tuple[str, str, str] | None) -> None:
        if previous is not None and previous != (version, precision, artifact):
            self.model_info.labels(*previous).set(0)
        self.model_info.labels(version, precision, artifact).set(1)

    def feature_versions(self, active: str, compatible: bool, served: str | None) -> None:
        """The active version as just seen, whether the model can read it, and the version read instead (or None)."""
        labels = ((active, "true" if compatible else "false"), served)
        if labels == self._versions:
            return
        if self._versions is not None:
            (old_active, old_compatible), old_served = self._versions
            self.feature_version.labels(old_active, old_compatible).set(0)
            if old_served is not None:
                self.feature_version_served.labels(old_served).set(0)
        self.feature_version.labels(*labels[0]).set(1)
        if served is not None:
            self.feature_version_served.labels(served).set(1)
        self.incompatible.set(0 if compatible else 1)
        self._versions = labels

    def exposition(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
