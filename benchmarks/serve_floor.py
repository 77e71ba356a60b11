"""The serving floor of ``bench_serve.py``, measured in a process set up as ``recsys serve``'s.

The floor is what no service can beat: one feature-store round trip (``RedisFeatureStore.fetch``: one MGET)
plus one forward pass of the same, prebuilt batch. Measured inside the benchmark's own process it was not
a floor: at 500 candidates the benchmark's forward took 11–15 ms where the server's took 8 ms. Here a fresh
interpreter with ``recsys serve``'s thread policy loads only the model and the store, and runs as the server
does: every torch call (the load included) on one model thread that set its own thread count, the fetch and
tensor building on another thread. Both matter on 2 cores: a second thread running torch ops brings a second
libgomp team (the same forward took 12–27 ms then), and a fetch decoded on the model's own core slows the
forward after it.

Protocol (driven by bench_serve.py): argv names the artifact, precision, Redis URL, key prefix and a JSON file
of request pools ``{candidates: [body, ...]}``; each line on stdin ``{"candidates": N, "repeats": R}`` is
answered by one JSON line on stdout with the round's p50s.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys.system import thread_policy  # noqa: E402

thread_policy()  # as `recsys serve` does, before torch loads

import torch  # noqa: E402

from recsys.types import Batch  # noqa: E402
from services.feature_store.redis_store import RedisFeatureStore  # noqa: E402
from services.ranking.features import merge  # noqa: E402
from services.ranking.served import ServedModel  # noqa: E402
from services.ranking.settings import ServeSettings  # noqa: E402

T = TypeVar("T")


class ModelThread:
    """As the server's model thread (services/ranking/batcher.py): its own thread count, and every torch call on
    it, the load included; the feature fetch and tensor building stay on the calling thread, as on the server's
    I/O threads."""

    def __init__(self, threads: int, load: Callable[[], ServedModel]) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(threads,), name="floor-model", daemon=True)
        self._thread.start()
        self.served: ServedModel = self.call(load)

    def _run(self, threads: int) -> None:
        torch.set_num_threads(threads)
        while (job := self._jobs.get()) is not None:
            try:
                self._done.put((True, job()))
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                self._done.put((False, exc))

    def call(self, job: Callable[[], T]) -> T:
        self._jobs.put(job)
        ok, result = self._done.get()
        if not ok:
            raise result
        return result

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()


def _timed_forward(served: ServedModel, batch: Batch) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        served.probabilities(batch)
    return (time.perf_counter() - start) * 1e3


def floor_round(model: ModelThread, store: RedisFeatureStore, pool: list[dict[str, Any]], repeats: int
                ) -> dict[str, float]:
    """p50 of one fetch round trip plus p50 of one forward of the same, prebuilt batch (tensor building timed
    apart: it is not in the floor)."""
    features = model.served.features
    fetch_ms, tensors_ms, model_ms = [], [], []
    for i in range(repeats):
        body = pool[i % len(pool)]
        start = time.perf_counter()
        fetched = store.fetch(body["user_id"], body["item_ids"])
        fetch_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        batch = merge([features.block(fetched.user, fetched.items, features.encode_context(body["context"]))],
                      features.keys)
        tensors_ms.append((time.perf_counter() - start) * 1e3)
        model_ms.append(model.call(lambda batch=batch: _timed_forward(model.served, batch)))
    skip = min(20, repeats // 5)  # warm-up
    fetch, tensors, forward = (statistics.median(x[skip:]) for x in (fetch_ms, tensors_ms, model_ms))
    return {"fetch_p50_ms": round(fetch, 3), "forward_p50_ms": round(forward, 3), "tensors_p50_ms": round(tensors, 3),
            "floor_p50_ms": round(fetch + forward, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--pools", type=Path, required=True, help="JSON {candidates: [request body, ...]}")
    args = parser.parse_args()
    threads = ServeSettings(artifact=args.artifact).torch_threads
    model = ModelThread(threads, lambda: ServedModel.load(args.artifact, args.precision))
    store = RedisFeatureStore.from_url(args.redis_url, prefix=args.prefix)
    pools = {int(n): bodies for n, bodies in json.loads(args.pools.read_text()).items()}
    print(json.dumps({"ready": True, "torch_threads": threads}), flush=True)
    try:
        for line in sys.stdin:
            order = json.loads(line)
            print(json.dumps(floor_round(model, store, pools[order["candidates"]], order["repeats"])), flush=True)
    finally:
        store.close()
        model.stop()


if __name__ == "__main__":
    main()
