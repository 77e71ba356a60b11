"""Feature-store fetch latency: one Redis server against a Redis Cluster of 3 masters, on this machine.

Issue 17: "Measured: fetch p50 for 100 and 500 candidates, single server vs cluster." Both stores get the same
version: ``--users`` user records and ``--items`` item records of ``--record-bytes`` random bytes each (a DLRM
item record of the demo data is ~100 bytes), written by ``VersionWriter`` as materialisation writes them. Then
``FeatureStore.fetch(user, items)`` — the ranking service's one read per request — for random users and
``--sizes`` random distinct items, ``--requests`` times per size and store, the two stores alternating request by
request so that a shared machine's load falls on both alike. Reported per store and size: p50, p90, p99 in ms,
and the cluster/single ratio of the p50s.

Both servers run on this machine (the cluster's 3 masters share its cores), over loopback TCP, from one client
thread: the cluster pays for its extra round trips (one per master, sent in parallel) and its per-slot
commands, not for a network. The machine (``/proc/cpuinfo`` model and flags) and the load average are recorded.

    .venv/bin/python benchmarks/bench_store.py                      # 100k items, 100 and 500 candidates
    .venv/bin/python benchmarks/bench_store.py --items 20000 --requests 300   # a quicker run
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_data import machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from services.feature_store.embedded import EmbeddedRedis  # noqa: E402
from services.feature_store.local_cluster import LocalRedisCluster  # noqa: E402
from services.feature_store.redis_store import RedisFeatureStore  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench_store")


def fill(store: RedisFeatureStore, users: int, items: int, record_bytes: int, seed: int) -> float:
    """Write one version of random records; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    writer = store.begin_version("bench")
    for entity, count in (("u", users), ("i", items)):
        for start in range(0, count, 20_000):
            ids = [str(n) for n in range(start, min(start + 20_000, count))]
            blob = rng.bytes(record_bytes * len(ids))
            records = [blob[k * record_bytes : (k + 1) * record_bytes] for k in range(len(ids))]
            (writer.put_users if entity == "u" else writer.put_items)(ids, records)
    writer.commit()
    return time.perf_counter() - started


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 4)

    return {"p50_ms": round(statistics.median(ordered) * 1e3, 4), "p90_ms": at(0.9), "p99_ms": at(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--record-bytes", type=int, default=100)
    parser.add_argument("--sizes", default="100,500", help="candidates per fetch, comma-separated")
    parser.add_argument("--requests", type=int, default=1000, help="fetches per size and store")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "store.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        single_server = EmbeddedRedis.start(Path(tmp) / "single")
        cluster = LocalRedisCluster.start(Path(tmp) / "cluster")
        stores = {
            "single": RedisFeatureStore.from_url(single_server.url, activation_file=None),
            "cluster": RedisFeatureStore.from_url(cluster.url, activation_file=None),
        }
        try:
            fill_s = {}
            for name, store in stores.items():
                fill_s[name] = round(fill(store, args.users, args.items, args.record_bytes, args.seed), 2)
                log.info("%s: wrote %d users and %d items in %.1f s", name, args.users, args.items, fill_s[name])
            rng = random.Random(args.seed)
            results: dict[str, Any] = {}
            for size in sizes:
                timings: dict[str, list[float]] = {name: [] for name in stores}
                for name, store in stores.items():  # warm: connections, the version hint
                    store.fetch("0", [str(i) for i in range(size)])
                for _ in range(args.requests):
                    user = str(rng.randrange(args.users))
                    items = [str(i) for i in rng.sample(range(args.items), size)]
                    for name, store in stores.items():
                        started = time.perf_counter()
                        fetched = store.fetch(user, items)
                        timings[name].append(time.perf_counter() - started)
                        if fetched.user is None or None in fetched.items:
                            raise AssertionError(f"{name}: a record written is missing")
                row = {name: percentiles(seconds) for name, seconds in timings.items()}
                row["cluster_over_single_p50"] = round(row["cluster"]["p50_ms"] / row["single"]["p50_ms"], 2)
                results[str(size)] = row
                log.info("%d candidates: single p50 %.3f ms, cluster p50 %.3f ms (%.2fx)", size,
                         row["single"]["p50_ms"], row["cluster"]["p50_ms"], row["cluster_over_single_p50"])
        finally:
            for store in stores.values():
                store.close()
            cluster.stop()
            single_server.stop(save=False)

    report = {"benchmark": "bench_store", "command": " ".join(["benchmarks/bench_store.py", *sys.argv[1:]]),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": machine(), "fill_seconds": fill_s, "fetch": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
