"""``recsys serve``: the ranking HTTP API (FastAPI on uvicorn, httptools + uvloop) for one artifact.

The feature store is ``$REDIS_URL``, or the embedded Redis under ``$RECSYS_HOME``,
which this command starts (or attaches to) before the workers and stops, with a
save, when it exits. Workers are separate processes: they get their settings and
the store's URL through the environment and build the app with
``services.ranking.app:app_from_env``. With several workers, their Prometheus
metrics are aggregated (prometheus-client multiprocess files) and a model swap
asked of one worker is followed by all (a shared control file); a worker exits when this
process dies, even by SIGKILL (``services.ranking.workers``).

Before any worker starts, the artifact is loaded once and the store's URL and prefix
checked, so that a bad one is a one-line error (exit 2), not a traceback per worker.
Every connection is under the HTTP limits of ``services.ranking.http`` (header and
body timeouts, header size, connection and concurrency caps), set by the flags below.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import typer

from recsys.errors import RecsysError
from services.ranking.settings import Precision, ServeSettings

log = logging.getLogger("recsys.serve")
_MAX_CONNECTIONS = 2048  # per worker, by default
_FILES_RESERVED = 128  # descriptors a worker needs besides connections (store, files, pipes), with room to spare


def serve(
    artifact: Path = typer.Option(..., "--artifact", help="Artifact directory to serve (RUN/artifact)."),
    retriever: Path | None = typer.Option(None, "--retriever", help="Retriever artifact with its index (recsys "
                                          "index build): /v1/recommend ranks its top --retrieve-candidates "
                                          "unseen items, /v1/retrieve answers its top-N. Without it /v1/recommend "
                                          "ranks popular unseen items."),
    retriever_prefix: str = typer.Option("recsys-retriever", "--retriever-prefix", help="Key prefix of the "
                                         "retriever's features in the same Redis (recsys features materialize "
                                         "--data RETRIEVER_DATA --artifact RETRIEVER --redis-prefix ...)."),
    retrieve_candidates: int = typer.Option(200, "--retrieve-candidates", min=1, help="Items retrieved per "
                                            "/v1/recommend and ranked (at least k, at most --max-candidates)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes; each loads the model and "
                                "uses cores/workers torch threads."),
    precision: Precision | None = typer.Option(None, "--precision", help="fp32; bf16: tables fp32, the "
                                               "dense layers under bf16 autocast, scores float32 (refused on a CPU "
                                               "without native bf16: avx512_bf16/amx_bf16); int8 or int4: embedding "
                                               "tables quantised by torchrec/fbgemm (MLPs stay fp32). Default: the "
                                               "artifact's embedding.serving_precision."),
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
    header_timeout_s: float = typer.Option(10.0, "--header-timeout-s", min=0.001, help="A request line and "
                                           "headers must arrive within this of connecting (or of the request's "
                                           "first byte); else the connection is closed."),
    body_timeout_s: float = typer.Option(30.0, "--body-timeout-s", min=0.001, help="A request body must arrive "
                                         "within this of its headers; else the connection is closed."),
    max_header_bytes: int = typer.Option(32 * 1024, "--max-header-bytes", min=1024, help="A longer request line "
                                         "and headers answer 431."),
    keep_alive_s: float = typer.Option(5.0, "--keep-alive-s", min=0.001, help="An idle keep-alive connection is "
                                       "closed after this (keep a reverse proxy's upstream idle timeout below "
                                       "it)."),
    max_connections: int | None = typer.Option(None, "--max-connections", min=1, help="Open connections per "
                                               "worker; past it the ones idle longest are closed (default: "
                                               f"{_MAX_CONNECTIONS}, fewer if the open-file limit, ulimit -n, is "
                                               "lower)."),
    limit_concurrency: int = typer.Option(512, "--limit-concurrency", min=1, help="Requests in progress per "
                                          "worker; past it a request answers 503 at once (/healthz exempt)."),
) -> None:
    """Serve a model over HTTP: POST /v1/rank, /v1/recommend and /v1/retrieve, GET /healthz, /readyz, /metrics,
    POST /admin/* (reload and rollback of the ranker, and of the retriever under /admin/retriever/).

    Example: recsys serve --artifact runs/dlrm/artifact --port 8000 --workers 2 --precision int8

    Two stages: recsys serve --artifact runs/dlrm/artifact --retriever runs/mf/artifact
    """
    import uvicorn

    from services.feature_store.embedded import redis_url
    from services.feature_store.redis_store import RedisFeatureStore
    from services.ranking.served import check_artifact

    # A bad artifact fails here, in one line, rather than as a traceback in every worker's startup.
    check_artifact(artifact)  # the common mistakes, cheaply
    served_at = _check_loads(artifact, precision)  # everything a worker's start reads: weights, config, vocabs
    if retriever is not None:
        _check_loads_retriever(retriever)
    max_connections = _within_open_files(max_connections)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_url())
        RedisFeatureStore.from_url(url, prefix=redis_prefix).close()  # checks the URL and prefix; no connection
        RedisFeatureStore.from_url(url, prefix=retriever_prefix).close()
        os.environ["REDIS_URL"] = url  # the workers' store: the embedded server, if this command started it
        control = None
        if workers > 1:
            shared = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsys-serve-")))
            metrics_dir = shared / "metrics"
            metrics_dir.mkdir()
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
            control = shared / "model.json"
        settings = ServeSettings(
            artifact=artifact.resolve(), precision=precision,
            retriever=retriever.resolve() if retriever is not None else None, retriever_prefix=retriever_prefix,
            retrieve_candidates=retrieve_candidates, redis_url=url, redis_prefix=redis_prefix,
            max_candidates=max_candidates, max_body_bytes=max_body_bytes, max_batch_rows=max_batch_rows,
            batch_wait_ms=batch_wait_ms, threads=threads, workers=workers, api_key_env=api_key_env,
            control_file=control, supervisor_pid=os.getpid() if workers > 1 else None,
            header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s, max_header_bytes=max_header_bytes,
            keep_alive_s=keep_alive_s, max_connections=max_connections, limit_concurrency=limit_concurrency,
        )
        os.environ.update(settings.to_env())
        if settings.api_key() is None:
            log.warning("admin endpoints disabled: set %s to enable /admin/reload and /admin/rollback", api_key_env)
        log.info("serving %s (%s) on http://%s:%d with %d worker(s), %d torch thread(s) each", artifact,
                 served_at.value, host, port, workers, settings.torch_threads)
        # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again; this handler turns that
        # into an exit that unwinds this block, so the embedded Redis is saved and stopped.
        stack.enter_context(_exit_on_signals(signal.SIGTERM, signal.SIGINT))
        uvicorn.run("services.ranking.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    http=settings.http_limits().protocol(), ws="none",  # the API has no WebSockets
                    loop="uvloop", access_log=False, log_level="info", timeout_keep_alive=keep_alive_s,
                    timeout_graceful_shutdown=30)


def _check_loads(artifact: Path, precision: Precision | None) -> Precision:
    """Load the artifact as a worker will (``ServedModel.load``) and drop it; a failure is a one-line RecsysError.
    Returns the precision it is served at (``precision``, else the artifact's).

    On a thread that ends here: torch work on the main thread, which becomes uvicorn's event-loop thread with
    one worker, would give it an OpenMP pool that slows every later forward pass (see services.ranking.batcher).
    """
    from services.ranking.served import ServedModel

    failed: list[BaseException] = []
    served: list[Precision] = []

    def load() -> None:
        try:
            served.append(ServedModel.load(artifact, precision).precision)
        except BaseException as exc:  # noqa: BLE001  raised again below, on the calling thread
            failed.append(exc)

    thread = threading.Thread(target=load, name="recsys-check-artifact")
    thread.start()
    thread.join()
    if not failed:
        return served[0]
    exc = failed[0]
    if isinstance(exc, RecsysError):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = f"{exc.filename or artifact}: cannot read ({exc.strerror or exc})"
    elif isinstance(exc, ValueError):
        message = f"--artifact {artifact}: {exc}"
    else:
        raise exc  # a bug: its traceback
    lines = message.strip().splitlines()  # the first line: some libraries' messages (polars') add a context stack
    raise RecsysError(lines[0] if lines else f"--artifact {artifact}: cannot be loaded") from None


def _check_loads_retriever(retriever: Path) -> None:
    """The retriever artifact and its index loaded as a worker will (on a thread that ends here, as above)."""
    from services.retrieval.service import ServedRetriever

    failed: list[BaseException] = []

    def load() -> None:
        try:
            ServedRetriever.load(retriever)
        except BaseException as exc:  # noqa: BLE001  raised again below, on the calling thread
            failed.append(exc)

    thread = threading.Thread(target=load, name="recsys-check-retriever")
    thread.start()
    thread.join()
    if failed:
        exc = failed[0]
        if isinstance(exc, RecsysError):
            raise RecsysError(str(exc).strip().splitlines()[0]) from None
        if isinstance(exc, OSError):
            raise RecsysError(f"{exc.filename or retriever}: cannot read ({exc.strerror or exc})") from None
        raise exc


def _within_open_files(requested: int | None) -> int:
    """The connection cap: below the process's open-file limit, with room for its other files (each connection
    is a file descriptor; at the limit accept() fails and nobody gets in, /healthz included). A ``requested``
    cap over it is lowered with a warning."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    fitting = _MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(1, soft - _FILES_RESERVED)
    if requested is None:
        return min(_MAX_CONNECTIONS, fitting)
    if requested > fitting:
        log.warning("--max-connections %d lowered to %d: the open-file limit is %d (ulimit -n; %d kept for the "
                    "store, the model and logs)", requested, fitting, soft, _FILES_RESERVED)
        return fitting
    return requested


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
