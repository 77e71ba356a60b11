"""``recsys serve``: the ranking HTTP API (FastAPI on uvicorn, httptools + uvloop) for one artifact.

The feature store is ``$REDIS_URL``, or the embedded Redis under ``$RECSYS_HOME``,
which this command starts (or attaches to) before the workers and stops, with a
save, when it exits. Workers are separate processes: they get their settings and
the store's URL through the environment and build the app with
``services.ranking.app:app_from_env``. With several workers, their Prometheus
metrics are aggregated (prometheus-client multiprocess files) and a model swap
asked of one worker is followed by all (a shared control file).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import typer

from services.ranking.settings import Precision, ServeSettings

log = logging.getLogger("recsys.serve")


def serve(
    artifact: Path = typer.Option(..., "--artifact", help="Artifact directory to serve (RUN/artifact)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes; each loads the model and "
                                "uses cores/workers torch threads."),
    precision: Precision = typer.Option(Precision.FP32, "--precision", help="fp32, or int8: embedding tables "
                                        "quantised by torchrec/fbgemm (MLPs stay fp32)."),
    max_candidates: int = typer.Option(1000, "--max-candidates", min=1, help="More item_ids in one request "
                                       "answer 413."),
    api_key_env: str = typer.Option("RECSYS_API_KEY", "--api-key-env", help="Environment variable holding the "
                                    "key the /admin endpoints require in X-API-Key (unset: admin disabled)."),
    batch_wait_ms: float = typer.Option(0.0, "--batch-wait-ms", min=0.0, max=100.0, help="Extra wait for "
                                        "more requests to score together; 0: batch only what queued while the "
                                        "model was busy."),
    max_batch_rows: int = typer.Option(4096, "--max-batch-rows", min=1, help="Rows one forward pass may "
                                       "score."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024, help="Larger request bodies "
                                       "answer 413 before parsing."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads per worker "
                                       "(default: cores / workers)."),
    redis_prefix: str = typer.Option("recsys", "--redis-prefix", help="Key prefix of the feature store."),
) -> None:
    """Serve a model over HTTP: POST /v1/rank and /v1/recommend, GET /healthz, /readyz, /metrics, POST /admin/*.

    Example: recsys serve --artifact runs/dlrm/artifact --port 8000 --workers 2 --precision int8
    """
    import uvicorn

    from services.feature_store.embedded import redis_url
    from services.ranking.served import check_artifact

    check_artifact(artifact)  # the common mistakes, in one line, before any worker starts
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_url())
        os.environ["REDIS_URL"] = url  # the workers' store: the embedded server, if this command started it
        control = None
        if workers > 1:
            shared = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsys-serve-")))
            metrics_dir = shared / "metrics"
            metrics_dir.mkdir()
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
            control = shared / "model.json"
        settings = ServeSettings(
            artifact=artifact.resolve(), precision=precision, redis_url=url, redis_prefix=redis_prefix,
            max_candidates=max_candidates, max_body_bytes=max_body_bytes, max_batch_rows=max_batch_rows,
            batch_wait_ms=batch_wait_ms, threads=threads, workers=workers, api_key_env=api_key_env,
            control_file=control,
        )
        os.environ.update(settings.to_env())
        if settings.api_key() is None:
            log.warning("admin endpoints disabled: set %s to enable /admin/reload and /admin/rollback", api_key_env)
        log.info("serving %s (%s) on http://%s:%d with %d worker(s), %d torch thread(s) each", artifact,
                 precision.value, host, port, workers, settings.torch_threads)
        # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again; this handler turns that
        # into an exit that unwinds this block, so the embedded Redis is saved and stopped.
        stack.enter_context(_exit_on_signals(signal.SIGTERM, signal.SIGINT))
        uvicorn.run("services.ranking.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    http="httptools", loop="uvloop", access_log=False, log_level="info",
                    timeout_graceful_shutdown=30)


@contextlib.contextmanager
def _exit_on_signals(*signals: signal.Signals) -> Iterator[None]:
    def leave(signum: int, frame: object) -> None:
        raise typer.Exit(0)

    previous = {sig: signal.signal(sig, leave) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
