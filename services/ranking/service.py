"""The ranking service: request → features (one store round trip) → one batched forward → top-k bytes.

``RankingService`` is what the routers call and what a benchmark can drive in-process.
Per request::

    fetch      store.fetch(user, items): the user's and the items' records, one version (an I/O thread)
    tensors    decode the records, add the context, lay out the Batch (same I/O thread, numpy)
    queue      wait for the model thread (requests arriving meanwhile are batched together)
    model      the forward pass under inference_mode (the model thread)
    serialize  top-k and the JSON bytes (event loop, orjson)

Every stage is timed into ``recsys_rank_stage_seconds`` and, with ``X-Debug-Timing: 1``,
returned as ``timings_ms``.

Candidates of /v1/recommend come from the candidate source: the retriever (``services.retrieval``) when one is
served (``--retriever``): its top ``retrieve_candidates`` items the user has seen in neither feature namespace,
then ranked as /v1/rank ranks them, the response carrying ``stages_ms`` (retrieve, fetch, rank); else the
fallback, the popular items the user has not seen. /v1/retrieve answers the retriever's top-N with its scores.
Reload and rollback swap the ranker (``/admin/reload``, ``/admin/rollback``) and the retriever
(``/admin/retriever/reload``, ``/admin/retriever/rollback``) independently.

The feature version a request reads is the active one only when it was materialised for
the model's record layout (``versions.FeatureVersions``); a response never carries a
non-finite score (the request answers 500 instead), and a model whose warm-up pass gives
non-finite scores is not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from recsys.errors import RecsysError
from recsys.models import explains
from recsys.schema import Entity
from services.feature_store.codec import RecordError, layout_difference
from services.feature_store.store import FeatureStore, FeatureStoreUnavailable, Fetched
from services.ranking.batcher import MicroBatcher, in_fresh_thread
from services.ranking.features import EncodedContext, RowBlock, merge
from services.ranking.metrics import ServiceMetrics
from services.ranking.served import ModelSlot, ServedModel
from services.ranking.settings import Precision, ServeSettings
from services.ranking.versions import FeatureVersions, IncompatibleVersion, NoFeatureVersion
from services.retrieval.service import Retrieval, Retrieved, ServedRetriever

log = logging.getLogger("recsys.ranking")
T = TypeVar("T")
_REREADS = 3  # reads of one request when the active version keeps switching under it
EXPLAIN_TOP = 5  # contributions per explained item


class TooManyCandidates(ValueError):
    """More item_ids than --max-candidates: 413."""


class CannotExplain(ValueError):
    """``"explain": true`` for a model without ``explain``: 422 naming the field."""


class RecordMismatch(RuntimeError):
    """A store record the served model's schema cannot decode: a deployment error, 500 naming the entity."""


class NonFiniteScores(RuntimeError):
    """The model gave NaN or infinite scores for a request: 500 (never a null score in a 200)."""


class ModelConflict(ValueError):
    """An artifact whose schema cannot read the store's records, or no model to roll back to: 409."""


class NoRetriever(LookupError):
    """/v1/retrieve or a retriever rollback on a server started without --retriever: 404."""


@dataclass
class Swap:
    model_version: str
    previous_version: str | None


@dataclass
class _Prepared:
    user_id: str
    fetched: Fetched
    block: RowBlock
    item_ids: Sequence[str]
    fetch_s: float
    tensors_s: float
    retrieved: Retrieved | None = None  # the candidates' retrieval, when a retriever gave them


class RankingService:
    """Shared state of one ranking app: settings, feature store, model slot, batcher, metrics, I/O threads."""

    def __init__(self, settings: ServeSettings, store: FeatureStore, model: ServedModel,
                 metrics: ServiceMetrics | None = None, *, owns_store: bool = False,
                 retrieval: Retrieval | None = None) -> None:
        self.settings, self.store = settings, store
        self.retrieval = retrieval  # the candidate source of /v1/recommend; None: popular minus seen
        self.metrics = metrics or ServiceMetrics()
        self.slot = ModelSlot(model)
        self.versions = FeatureVersions(store, self.metrics, model.fingerprint)
        self.batcher = MicroBatcher(settings.max_batch_rows, settings.batch_wait_ms / 1000,
                                    observe=self.metrics.observe_batch, threads=settings.torch_threads,
                                    governed=settings.threads is None)
        self.io = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="recsys-io")
        self.api_key = settings.api_key()
        self._owns_store = owns_store
        self._admin_lock = asyncio.Lock()
        self._in_progress = 0  # ranking requests between their start and their response
        self._store_healthy = True  # the last feature-store round trip succeeded
        self._control_seen: str | None = None

    @classmethod
    def open(cls, settings: ServeSettings, store: FeatureStore | None = None,
             metrics: ServiceMetrics | None = None) -> RankingService:
        """Load the artifact (the control file's, when the workers share one) and connect to the store."""
        artifact, precision, retriever = settings.artifact, settings.precision, settings.retriever
        control = _read_control(settings.control_file)
        if control is not None:
            artifact, precision = Path(control["artifact"]), Precision(control["precision"])
            retriever = Path(control["retriever"]) if control.get("retriever") else retriever
        model = ServedModel.load(artifact, precision)
        served_retriever = ServedRetriever.load(retriever) if retriever is not None else None
        owns = store is None
        if store is None:
            store = _redis_store(settings, settings.redis_prefix)
        retrieval = None
        if served_retriever is not None:
            retrieval = Retrieval(_redis_store(settings, settings.retriever_prefix), served_retriever, metrics,
                                  owns_store=True)
        service = cls(settings, store, model, metrics, owns_store=owns, retrieval=retrieval)
        if control is not None:
            service._control_seen = control.get("id")
        return service

    @classmethod
    @contextlib.asynccontextmanager
    async def serving(cls, settings: ServeSettings, store: FeatureStore | None = None,
                      metrics: ServiceMetrics | None = None) -> AsyncIterator[RankingService]:
        """Open (on a short-lived thread: see ``batcher``), start, and close at the end; the app's lifespan, and
        how a benchmark drives the service without HTTP::

            async with RankingService.serving(ServeSettings(artifact=path, redis_url=url)) as service:
                body = await service.rank("42", ["7", "19"], k=10, context={}, debug=True)
        """
        service = await in_fresh_thread(cls.open, settings, store, metrics)
        try:
            await service.start()
            yield service
        finally:
            service.close()

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.batcher.start()
        model = self.slot.current
        await self._warm_up(model)
        if self.retrieval is not None:
            retrieval, retriever = self.retrieval, self.retrieval.slot.current
            await self.batcher.call(lambda: retrieval.warm_up(retriever))
        self.metrics.serving(model.version, model.precision.value, str(model.path), None)

    async def _warm_up(self, model: ServedModel) -> None:
        """One pass on the model thread: the first allocates (keep it off requests), and proves the scores finite."""
        scored = await self.batcher.score(model, model.features.dummy(8))
        if not np.isfinite(scored.scores).all():
            raise RecsysError(f"{model.path}: the model gives non-finite scores (NaN or infinite weights?); "
                              "not serving it")

    def close(self) -> None:
        self.batcher.stop()
        self.io.shutdown(wait=False, cancel_futures=True)
        if self.retrieval is not None:
            self.retrieval.close()
        if self._owns_store:
            with contextlib.suppress(Exception):
                self.store.close()

    # ---- ranking ---------------------------------------------------------------------------------
    async def rank(self, user_id: str, item_ids: Sequence[str], k: int, context: Mapping[str, Any],
                   debug: bool = False, explain: bool = False) -> bytes:
        """The /v1/rank response body."""
        started = time.perf_counter()
        if len(item_ids) > self.settings.max_candidates:
            raise TooManyCandidates(f"{len(item_ids)} item_ids is more than the {self.settings.max_candidates} "
                                    "this server scores per request (--max-candidates)")
        model = self.slot.current  # this request's model, whatever is swapped in meanwhile
        if explain and not explains(model.model):
            raise CannotExplain(f"model {model.version} ({model.artifact.model_name}) cannot explain its scores; "
                                "models that can: the ones with explain() (e.g. autoint, armnet, din)")
        encoded = model.features.encode_context(context)
        return await self._respond(model, k, started, debug, self._prepare_rank, user_id, item_ids, encoded,
                                   explain=explain)

    async def recommend(self, user_id: str, k: int, context: Mapping[str, Any], debug: bool = False) -> bytes:
        """The /v1/recommend response body: the candidate source's items (the retriever's top items the user has
        not seen; without a retriever, popular items the user has not seen), ranked."""
        started = time.perf_counter()
        model = self.slot.current
        encoded = model.features.encode_context(context)
        if self.retrieval is None:
            return await self._respond(model, k, started, debug, self._prepare_recommend, user_id, k, encoded)
        wanted = min(self.settings.max_candidates, max(k, self.settings.retrieve_candidates))
        retrieve_started = time.perf_counter()
        seen = await self._io(self._ranker_seen, model, user_id)
        retrieved = await self._retrieve(user_id, wanted, seen)
        retrieved.wall_s = time.perf_counter() - retrieve_started  # with the ranker's seen list and the queue
        return await self._respond(model, k, started, debug, self._prepare_rank, user_id, retrieved.items, encoded,
                                   retrieved=retrieved)

    async def retrieve(self, user_id: str, n: int, exclude_seen: bool = True, debug: bool = False) -> bytes:
        """The /v1/retrieve response body: the retriever's top n items (not seen, unless ``exclude_seen`` is
        false) with its scores."""
        started = time.perf_counter()
        if self.retrieval is None:
            raise NoRetriever("no retriever is served: start with recsys serve --retriever ARTIFACT, or load one "
                              "with POST /admin/retriever/reload")
        if n > self.settings.max_candidates:
            raise TooManyCandidates(f"n={n} is more than the {self.settings.max_candidates} items this server "
                                    "retrieves per request (--max-candidates)")
        retrieved = await self._retrieve(user_id, n, (), exclude_seen)
        if not np.isfinite(retrieved.scores).all():
            self.metrics.nonfinite.inc()
            raise NonFiniteScores(f"the retriever gave non-finite scores for user '{user_id}' "
                                  f"(retriever {retrieved.retriever_version})")
        payload = {
            "retriever_version": retrieved.retriever_version,
            "feature_version": retrieved.feature_version,
            "items": [{"item_id": item, "score": score}
                      for item, score in zip(retrieved.items, retrieved.scores.tolist(), strict=True)],
            "unknown_user": retrieved.unknown_user,
        }
        body = orjson.dumps(payload)
        timings = {"fetch": retrieved.fetch_s, "vector": retrieved.vector_s, "search": retrieved.search_s,
                   "total": time.perf_counter() - started}
        self.metrics.stage.labels("retrieve").observe(time.perf_counter() - started)
        if debug:
            body = body[:-1] + b',"timings_ms":' + orjson.dumps({n: s * 1e3 for n, s in timings.items()}) + b"}"
        return body

    async def _retrieve(self, user_id: str, n: int, exclude: Collection[str], exclude_seen: bool = True) -> Retrieved:
        """The retriever's part of a request: the user's record and seen list (I/O), then the user vector and the
        index search (the model thread)."""
        assert self.retrieval is not None
        retrieval = self.retrieval
        retriever = retrieval.slot.current  # this request's retriever, whatever is swapped in meanwhile
        read = await self._io(retrieval.read_user, retriever, user_id, exclude_seen)
        return await self.batcher.call(lambda: retrieval.search(retriever, read, user_id, n, exclude))

    def _ranker_seen(self, model: ServedModel, user_id: str) -> list[str]:
        """The user's seen list in the ranker's namespace (excluded from retrieved candidates too)."""
        fingerprint = model.fingerprint
        version = self.versions.target(fingerprint) or self.versions.settle(fingerprint, self.store.active_version())
        return self.store.seen(user_id, version)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (feature-store I/O) here while no other request is in progress and the store is healthy,
        else on an I/O thread (see ``_respond``)."""
        try:
            if self._in_progress == 0 and self._store_healthy:
                return fn(*args)
            return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)
        except FeatureStoreUnavailable:
            self._store_healthy = False
            raise

    async def _respond(self, model: ServedModel, k: int, started: float, debug: bool,
                       prepare: Callable[..., _Prepared], *args: Any, explain: bool = False,
                       retrieved: Retrieved | None = None) -> bytes:
        """``prepare(model, *args)`` (the feature-store round trip and tensor building), score, serialise.

        A lone request (no other in progress, store healthy) prepares right here on the event loop: handing
        the work to an I/O thread and back costs ~0.1 ms here, a twentieth of a 100-candidate request, and no
        other request is kept waiting. Under concurrency, or while the store fails (a timeout must not stall
        the loop), it runs on the I/O threads and the loop keeps accepting.
        """
        self._in_progress += 1
        try:
            try:
                if self._in_progress == 1 and self._store_healthy:
                    prepared = prepare(model, *args)
                else:
                    prepared = await asyncio.get_running_loop().run_in_executor(self.io, prepare, model, *args)
            except FeatureStoreUnavailable:
                self._store_healthy = False
                raise
            self._store_healthy = True
            prepared.retrieved = retrieved
            return await self._finish(model, prepared, k, started, debug, explain)
        finally:
            self._in_progress -= 1

    def _prepare_rank(self, model: ServedModel, user_id: str, item_ids: Sequence[str],
                      context: EncodedContext) -> _Prepared:
        started = time.perf_counter()
        fetched = self._fetch(model, user_id, item_ids)
        return self._build(model, user_id, fetched, item_ids, context, started)

    def _fetch(self, model: ServedModel, user_id: str, item_ids: Sequence[str]) -> Fetched:
        """The records from the version the model reads: one round trip, unless the active version has just
        switched (then once more from the version settled on)."""
        fingerprint = model.fingerprint
        version = self.versions.target(fingerprint)
        for _ in range(_REREADS):
            fetched = self.store.fetch(user_id, item_ids, version)
            if version is not None and fetched.version is None:
                self.versions.lost(fingerprint, version)
            wanted = self.versions.settle(fingerprint, fetched.active)
            if fetched.version == wanted:
                return fetched
            version = wanted
        raise NoFeatureVersion(f"the active feature version switched {_REREADS} times during one request; retry")

    def _prepare_recommend(self, model: ServedModel, user_id: str, k: int, context: EncodedContext) -> _Prepared:
        started = time.perf_counter()
        fingerprint = model.fingerprint
        # Popular items, seen items and records all from the version the model reads.
        version = self.versions.target(fingerprint) or self.versions.settle(fingerprint, self.store.active_version())
        wanted = min(self.settings.max_candidates, k * self.settings.recommend_oversample)
        seen = set(self.store.seen(user_id, version))
        read, popular = self.store.popular(wanted + len(seen), version)
        if read is None:
            self.versions.lost(fingerprint, version)
        candidates = [item for item in popular if item not in seen][:wanted]
        fetched = self.store.fetch(user_id, candidates, version)
        if fetched.version is None:
            self.versions.lost(fingerprint, version)
        with contextlib.suppress(NoFeatureVersion):  # this request is served; notice a switch for the next ones
            self.versions.settle(fingerprint, fetched.active)
        return self._build(model, user_id, fetched, candidates, context, started)

    def _build(self, model: ServedModel, user_id: str, fetched: Fetched, item_ids: Sequence[str],
               context: EncodedContext, started: float) -> _Prepared:
        fetched_at = time.perf_counter()
        try:
            block = model.features.block(fetched.user, fetched.items, context)
        except RecsysError as exc:
            who = ""
            if isinstance(exc, RecordError):
                who = f"user '{user_id}'" if exc.entity is Entity.USER else f"item '{item_ids[exc.row]}'"
                who += ": "
            raise RecordMismatch(f"feature store version {fetched.version}: {who}{exc} (model {model.version})") \
                from None
        return _Prepared(user_id, fetched, block, item_ids, fetched_at - started, time.perf_counter() - fetched_at)

    async def _finish(self, model: ServedModel, prepared: _Prepared, k: int, started: float, debug: bool,
                      explain: bool = False) -> bytes:
        block, item_ids, fetched = prepared.block, prepared.item_ids, prepared.fetched
        if block.rows:
            scored = await self.batcher.score(model, block)
            scores, queue_s, model_s = scored.scores, scored.queue_s, scored.model_s
        else:  # nothing to score (every popular item already seen)
            scores, queue_s, model_s = np.empty(0, np.float32), 0.0, 0.0
        if not np.isfinite(scores).all():  # JSON has no NaN: it would be a null score in a 200
            self.metrics.nonfinite.inc()
            bad = int((~np.isfinite(scores)).sum())
            raise NonFiniteScores(f"the model gave non-finite scores for {bad} of {len(scores)} candidates of user "
                                  f"'{prepared.user_id}' (model {model.version}, feature version {fetched.version})")
        serialize_started = time.perf_counter()
        # Best first; a stable sort keeps ties in request order.
        order = np.argsort(-scores, kind="stable")[:k].tolist()
        items = [{"item_id": item_ids[i], "score": s} for i, s in zip(order, scores[order].tolist())]
        if explain and order:
            top = merge([block.take(order)], model.keys)
            explained = await self.batcher.call(lambda: model.model.explain(top, EXPLAIN_TOP))
            for item, contributions in zip(items, explained, strict=True):
                item["explanation"] = [{"name": c.name, "weight": float(c.weight)} for c in contributions]
        unknown = [i for i, record in enumerate(fetched.items) if record is None]
        if block.out_of_range_items:  # records with ids outside the model's tables: read as unknown
            unknown = sorted({*unknown, *block.out_of_range_items})
        payload = {
            "model_version": model.version,
            "feature_version": fetched.version,
            "items": items,
            "unknown_user": fetched.user is None or block.out_of_range_user,
            "unknown_items": [item_ids[i] for i in unknown],
        }
        retrieved = prepared.retrieved
        if retrieved is not None:
            payload["retriever_version"] = retrieved.retriever_version
            payload["retriever_feature_version"] = retrieved.feature_version
            payload["stages_ms"] = {"retrieve": retrieved.wall_s * 1e3, "fetch": prepared.fetch_s * 1e3,
                                    "rank": (prepared.tensors_s + queue_s + model_s) * 1e3}
        body = orjson.dumps(payload)
        finished = time.perf_counter()
        timings = {"fetch": prepared.fetch_s, "tensors": prepared.tensors_s, "queue": queue_s, "model": model_s,
                   "serialize": finished - serialize_started, "total": finished - started}
        if retrieved is not None:
            timings = {"retrieve": retrieved.wall_s, **timings}
        stage = self.metrics.stage
        for name, seconds in timings.items():
            stage.labels(name).observe(seconds)
        self.metrics.candidates.observe(block.rows)
        if debug:  # appended to the bytes already made, so the timing covers the real serialisation
            body = body[:-1] + b',"timings_ms":' + orjson.dumps({n: s * 1e3 for n, s in timings.items()}) + b"}"
        return body

    # ---- health ----------------------------------------------------------------------------------
    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details): a model loaded, the store answering, a feature version with the model's record layout
        readable, and the active version not older than the newest one activated (see ``versions``)."""
        model = self.slot.current
        info: dict[str, Any] = {"model_version": model.version, "precision": model.precision.value}
        loop = asyncio.get_running_loop()
        try:
            active, versions, floor = await asyncio.wait_for(loop.run_in_executor(self.io, self._store_state),
                                                             timeout=2.0)
        except (FeatureStoreUnavailable, TimeoutError) as exc:
            return False, {**info, "status": f"feature store unavailable: {exc or 'no answer within 2 s'}"}
        ready, details = self.versions.readiness(model.fingerprint, active, versions, floor)
        if self.retrieval is not None:
            retrieval_ready, retrieval_details = await loop.run_in_executor(self.io, self.retrieval.readiness)
            if ready and not retrieval_ready:
                details["status"] = retrieval_details["retriever_status"]
            ready = ready and retrieval_ready
            details.update(retrieval_details)
        return ready, {**info, **details}

    def _store_state(self) -> tuple[str | None, dict[str, dict[str, str]], float | None]:
        self.store.ping()
        return self.store.active_version(), self.store.versions(), self.store.activation_floor()

    # ---- admin -----------------------------------------------------------------------------------
    async def reload(self, artifact: str | Path, precision: Precision | None = None, *, announce: bool = True) -> Swap:
        """Load an artifact off the event loop, check it reads the store's records, warm it up, swap it in.

        ``precision`` None: the server's ``--precision`` if it was given, else the one ``artifact`` records.
        Requests already running finish on the model they started with. Raises RecsysError (bad
        artifact, non-finite scores) or ModelConflict; the current model keeps serving either way.
        """
        async with self._admin_lock:
            precision = precision or self.settings.precision
            model = await in_fresh_thread(ServedModel.load, artifact, precision)
            await asyncio.to_thread(self._check_reads, model)
            await self._warm_up(model)  # on the model thread, between requests
            current, previous = self.slot.swap_in(model)
            return self._swapped("reload", current, previous, announce)

    def _check_reads(self, model: ServedModel) -> None:
        """ModelConflict unless ``model`` reads the records the current model reads, or the active version's."""
        current = self.slot.current
        if model.fingerprint == current.fingerprint:
            return
        try:
            active = self.store.active_version()
            if active is not None and self.versions.layout_of(active) == model.fingerprint:
                return  # e.g. features materialised for this model first, then the model loaded
        except FeatureStoreUnavailable:
            active = None
        reading = self.versions.reading(current.fingerprint) or active
        where = f"feature version {reading}" if reading else "the feature store"
        problem = layout_difference(current.layouts, model.layouts) or "another record layout"
        raise ModelConflict(f"{model.path}: cannot read the records of {where}, which {current.path} reads: "
                            f"{problem}")

    async def rollback(self, *, announce: bool = True) -> Swap:
        async with self._admin_lock:
            previous = self.slot.previous
            if previous is not None and previous.fingerprint != self.slot.current.fingerprint:
                try:
                    await asyncio.to_thread(self._check_readable, previous)
                except IncompatibleVersion as exc:
                    raise ModelConflict(f"cannot roll back to {previous.path}: {exc}") from None
            try:
                current, previous = self.slot.roll_back()
            except RecsysError as exc:
                raise ModelConflict(str(exc)) from None
            return self._swapped("rollback", current, previous, announce)

    def _check_readable(self, model: ServedModel) -> None:
        """IncompatibleVersion when no version with ``model``'s record layout is readable (unknown while the store
        is down or empty: then nothing is refused)."""
        with contextlib.suppress(FeatureStoreUnavailable):
            active = self.store.active_version()
            if active is not None:
                self.versions.settle(model.fingerprint, active)

    # ---- admin: the retriever -------------------------------------------------------------------
    async def reload_retriever(self, artifact: str | Path, *, announce: bool = True) -> Swap:
        """Load a retriever artifact and its index off the event loop, check its feature namespace holds records it
        reads, warm it up, swap it in (a server without a retriever gets one). The current one keeps serving if
        anything fails."""
        async with self._admin_lock:
            retriever = await in_fresh_thread(ServedRetriever.load, artifact)
            retrieval = self.retrieval or Retrieval(_redis_store(self.settings, self.settings.retriever_prefix),
                                                    retriever, self.metrics, owns_store=True)
            try:
                await asyncio.to_thread(self._check_retriever_reads, retriever, retrieval)
                await self.batcher.call(lambda: retrieval.warm_up(retriever))
            except BaseException:
                if retrieval is not self.retrieval:
                    retrieval.close()
                raise
            if self.retrieval is None:
                self.retrieval = retrieval  # the first retriever of a server started without one
                current, previous = retriever, None
            else:
                current, previous = retrieval.slot.swap_in(retriever)
            return self._retriever_swapped("reload", current, previous, announce)

    def _check_retriever_reads(self, retriever: ServedRetriever, retrieval: Retrieval) -> None:
        try:
            retrieval.check_readable(retriever)
        except IncompatibleVersion as exc:
            raise ModelConflict(f"{retriever.path}: cannot read the retriever's features (prefix "
                                f"'{self.settings.retriever_prefix}'): {exc}") from None

    async def rollback_retriever(self, *, announce: bool = True) -> Swap:
        async with self._admin_lock:
            if self.retrieval is None:
                raise NoRetriever("no retriever is served: nothing to roll back")
            previous = self.retrieval.slot.previous
            if previous is not None and previous.fingerprint != self.retrieval.slot.current.fingerprint:
                await asyncio.to_thread(self._check_retriever_reads, previous, self.retrieval)
            try:
                current, before = self.retrieval.slot.roll_back()
            except RecsysError:
                raise ModelConflict("no previous retriever to roll back to") from None
            return self._retriever_swapped("rollback", current, before, announce)

    def _retriever_swapped(self, kind: str, current: ServedRetriever, previous: ServedRetriever | None,
                           announce: bool) -> Swap:
        self.metrics.swaps.labels(f"retriever-{kind}").inc()
        log.info("retriever %s: serving %s (%s index), previously %s", kind, current.version,
                 current.index.kind.value, previous.version if previous else None)
        if announce and self.settings.control_file is not None:
            self._control_seen = _write_control(self.settings.control_file, self.slot.current, current)
        return Swap(current.version, previous.version if previous else None)

    def _swapped(self, kind: str, current: ServedModel, previous: ServedModel | None, announce: bool) -> Swap:
        self.versions.serving(current.fingerprint)
        before = (previous.version, previous.precision.value, str(previous.path)) if previous else None
        self.metrics.serving(current.version, current.precision.value, str(current.path), before)
        self.metrics.swaps.labels(kind).inc()
        log.info("%s: serving %s (%s), previously %s", kind, current.version, current.precision.value,
                 previous.version if previous else None)
        if announce and self.settings.control_file is not None:
            self._control_seen = _write_control(self.settings.control_file, current, self._retriever())
        return Swap(current.version, previous.version if previous else None)

    def _retriever(self) -> ServedRetriever | None:
        return None if self.retrieval is None else self.retrieval.slot.current

    async def follow_control_file(self, interval_s: float = 0.5) -> None:
        """Under ``--workers N``: apply the swaps other workers announced in the shared control file."""
        path = self.settings.control_file
        if path is None:
            return
        while True:
            await asyncio.sleep(interval_s)
            control = _read_control(path)
            if control is None or control.get("id") == self._control_seen:
                continue
            self._control_seen = control.get("id")
            wanted = (str(Path(control["artifact"]).resolve()), control["precision"])
            current, previous = self.slot.current, self.slot.previous
            try:
                if _identity(current) == wanted:
                    pass
                elif previous is not None and _identity(previous) == wanted:
                    await self.rollback(announce=False)
                else:
                    await self.reload(control["artifact"], Precision(control["precision"]), announce=False)
            except (RecsysError, ModelConflict) as exc:
                log.error("control file %s: could not follow %s: %s", path, wanted[0], exc)
            await self._follow_retriever(control)

    async def _follow_retriever(self, control: dict[str, Any]) -> None:
        wanted = control.get("retriever")
        if not wanted:
            return
        wanted = str(Path(wanted).resolve())
        retrieval = self.retrieval
        try:
            if retrieval is not None and str(retrieval.slot.current.path.resolve()) == wanted:
                return
            if retrieval is not None and retrieval.slot.previous is not None \
                    and str(retrieval.slot.previous.path.resolve()) == wanted:
                await self.rollback_retriever(announce=False)
            else:
                await self.reload_retriever(wanted, announce=False)
        except (RecsysError, ModelConflict, NoRetriever) as exc:
            log.error("control file %s: could not follow retriever %s: %s", self.settings.control_file, wanted, exc)


def _redis_store(settings: ServeSettings, prefix: str) -> FeatureStore:
    from services.feature_store.redis_store import RedisFeatureStore

    url = settings.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise RecsysError("no feature store: set REDIS_URL or ServeSettings.redis_url")
    return RedisFeatureStore.from_url(url, prefix=prefix)


def _identity(model: ServedModel) -> tuple[str, str]:
    return str(model.path.resolve()), model.precision.value


def _read_control(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("artifact"), str) \
            or data.get("precision") not in {p.value for p in Precision}:
        return None
    return data


def _write_control(path: Path, model: ServedModel, retriever: ServedRetriever | None = None) -> str:
    serial = uuid.uuid4().hex
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"artifact": str(model.path.resolve()), "precision": model.precision.value,
                               "version": model.version, "id": serial,
                               "retriever": str(retriever.path.resolve()) if retriever is not None else None}))
    tmp.replace(path)
    return serial
