"""Micro-batching: concurrent requests scored together in one forward pass, on one dedicated thread.

The model runs on a single worker thread, off the event loop, so the loop keeps
accepting and fetching while a forward pass runs (torch releases the GIL in its
kernels and uses the intra-op thread pool inside it). Requests that arrive while
the model is busy wait in a queue; when the pass ends, the worker takes all of
them (up to ``max_rows`` rows) and scores them in one pass, the DeepRecSys
recipe for latency-bounded throughput: batching costs a lone request nothing
(``wait_s`` = 0 by default) and amortises the per-pass overhead under load.

A job keeps the model it was submitted with, so a model swapped in while it
waits does not touch it: jobs of different models in one take are scored in
separate passes. When a pass of several jobs fails, each job is scored again on
its own, so one request the model cannot score fails alone, not its batch.

Why one thread does all the torch work: torch's CPU kernels run on OpenMP (libgomp),
which gives every thread that enters a parallel region a pool of helper threads for
as long as that thread lives. With two pools on two cores libgomp sees more threads
than CPUs and stops spinning between parallel regions, so each of the ~100 regions of
a forward pass pays a futex wake-up: measured here, a DLRM pass over 100 rows took
5.0 ms instead of 1.3 ms once the model had been loaded on a long-lived executor
thread. So the event loop and the I/O threads never run torch ops, and artifacts are
loaded on short-lived threads (``in_fresh_thread``) whose pools end with them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from recsys.system import ThreadGovernor
from recsys.tasks import TaskSpec
from services.ranking.features import RowBlock, merge

log = logging.getLogger(__name__)
T = TypeVar("T")


class Scorable(Protocol):
    """What the batcher needs of a served model (see ``served.ServedModel``)."""

    model: torch.nn.Module
    keys: list[str]
    task: TaskSpec  # its link turns the model's logits into scores


@dataclass
class _Job:
    model: Scorable
    block: RowBlock
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Scored]
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Call:
    """Other torch work for the model thread (an explanation), run between passes, never batched."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass
class Scored:
    """One request's probabilities and how long it waited and was computed."""

    scores: np.ndarray  # (B,) float32 scores: the task's link of the logits (binary CTR: probabilities)
    queue_s: float  # from submission to the start of its forward pass
    model_s: float  # its forward pass (shared with the requests batched with it)
    batch_rows: int  # rows of that pass
    batch_requests: int  # requests in that pass


_STOP = object()


class MicroBatcher:
    """Scores RowBlocks on one thread, batching the requests that queue up while it is busy."""

    def __init__(self, max_rows: int = 4096, wait_s: float = 0.0,
                 observe: Callable[[int, int], None] | None = None, threads: int | None = None,
                 governed: bool = False) -> None:
        """``threads``: torch's on the model thread (None: leave it); ``governed``: give some up while other
        processes keep CPUs busy (``recsys.system.ThreadGovernor``; for a count recsys chose, not the user)."""
        self.max_rows, self.wait_s, self.threads, self.governed = max_rows, wait_s, threads, governed
        self._observe = observe  # (rows, requests) of every forward pass, for metrics
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recsys-model", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs, then end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    async def score(self, model: Scorable, block: RowBlock) -> Scored:
        if self._thread is None:
            raise RuntimeError("the batcher is not started")
        loop = asyncio.get_running_loop()
        job = _Job(model, block, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    async def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the model thread (see the module docstring: torch work belongs there), between passes."""
        if self._thread is None:
            raise RuntimeError("the batcher is not started")
        loop = asyncio.get_running_loop()
        call = _Call(fn, loop, loop.create_future())
        self._queue.put(call)
        return await call.future

    # ---- the model thread ---------------------------------------------------------------------
    def _run(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        governor = ThreadGovernor(torch.get_num_threads()) if self.governed else None
        carry: _Job | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            if governor is not None and (threads := governor.update()) is not None:
                log.info("other processes keep CPUs busy: torch threads now %d of %d", threads, governor.share)
            if isinstance(first, _Call):
                self._call(first)
                continue
            jobs, rows, stop = [first], first.block.rows, False
            deadline = time.perf_counter() + self.wait_s
            while rows < self.max_rows:
                try:
                    remaining = deadline - time.perf_counter()
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                if isinstance(job, _Call) or rows + job.block.rows > self.max_rows:
                    carry = job  # first in the next pass
                    break
                jobs.append(job)
                rows += job.block.rows
            self._score(jobs)
            if stop:
                if carry is not None:
                    self._handle(carry)
                self._drain()
                return

    def _drain(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                self._handle(job)

    def _handle(self, job: _Job | _Call) -> None:
        if isinstance(job, _Call):
            self._call(job)
        else:
            self._score([job])

    def _call(self, call: _Call) -> None:
        try:
            with torch.inference_mode():
                result = call.fn()
        except Exception as exc:  # noqa: BLE001  handed to the awaiting request
            call.loop.call_soon_threadsafe(_fail, call.future, exc)
        else:
            call.loop.call_soon_threadsafe(_resolve, call.future, result)

    def _score(self, jobs: list[_Job]) -> None:
        groups: dict[int, list[_Job]] = {}
        for job in jobs:  # one pass per model: a swap never mixes models within a pass
            groups.setdefault(id(job.model), []).append(job)
        for group in groups.values():
            self._pass(group)

    def _pass(self, group: list[_Job]) -> None:
        """One forward pass over the jobs of one model; if it fails, one pass per job (only the bad ones fail)."""
        started = time.perf_counter()
        try:
            model = group[0].model
            batch = merge([job.block for job in group], model.keys)
            with torch.inference_mode():
                probabilities = model.probabilities(batch).numpy()  # (ΣB,)
        except Exception as exc:  # a bug or a bad record: fail these requests, keep the thread alive
            if len(group) > 1:
                log.warning("forward pass of %d requests failed (%s); scoring them one by one",
                            len(group), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                for job in group:
                    self._pass([job])
                return
            log.exception("forward pass failed")
            group[0].loop.call_soon_threadsafe(_fail, group[0].future, exc)
            return
        elapsed = time.perf_counter() - started
        rows = len(probabilities)
        if self._observe is not None:
            self._observe(rows, len(group))
        offset = 0
        results = []
        for job in group:
            n = job.block.rows
            results.append((job.future, Scored(probabilities[offset:offset + n], started - job.submitted,
                                               elapsed, rows, len(group))))
            offset += n
        loops = {id(job.loop): job.loop for job in group}
        for loop_id, loop in loops.items():  # one wake-up per event loop, not per request
            mine = [r for job, r in zip(group, results) if id(job.loop) == loop_id]
            loop.call_soon_threadsafe(_deliver, mine)


def _deliver(results: list[tuple[asyncio.Future[Scored], Scored]]) -> None:
    for future, scored in results:
        if not future.done():  # the client may have gone away (cancelled)
            future.set_result(scored)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


async def in_fresh_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a new thread that ends with it (see the module docstring: torch work on a long-lived
    thread other than the model thread slows every later forward pass)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001  handed to the awaiting coroutine
            loop.call_soon_threadsafe(_fail, future, exc)
        else:
            loop.call_soon_threadsafe(_resolve, future, result)

    threading.Thread(target=run, name="recsys-load", daemon=True).start()
    return await future


def _resolve(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)
