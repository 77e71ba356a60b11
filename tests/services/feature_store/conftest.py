"""Feature-store fixtures: one real redis-server and one real 3-master Redis Cluster for the session; each store
under a prefix of its own; ``open_store``, parametrised over every FeatureStore implementation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
import redis

from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.local_cluster import LocalRedisCluster
from services.feature_store.redis_cluster_store import RedisClusterFeatureStore
from services.feature_store.redis_store import RedisFeatureStore
from services.feature_store.store import FeatureStore

MakeStore = Callable[..., RedisFeatureStore]


@pytest.fixture(scope="session")
def fs_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A redis-server shared by the feature-store tests (tests that kill a server use ``redis_server``)."""
    server = EmbeddedRedis.start(tmp_path_factory.mktemp("fs-redis"))
    yield server
    server.stop(save=False)


@pytest.fixture(scope="session")
def fs_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A Redis Cluster of 3 masters shared by the feature-store tests (tests that kill a node start their own)."""
    cluster = LocalRedisCluster.start(tmp_path_factory.mktemp("fs-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def make_store(fs_redis: EmbeddedRedis) -> Iterator[MakeStore]:
    """``make_store(**kwargs)``: a store on the shared server; a fresh prefix unless ``prefix`` is given."""
    made: list[RedisFeatureStore] = []

    def make(**kwargs: Any) -> RedisFeatureStore:
        kwargs.setdefault("prefix", f"t{uuid.uuid4().hex[:10]}")
        made.append(RedisFeatureStore.from_url(fs_redis.url, **kwargs))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> RedisFeatureStore:
    return make_store()


class OpenStore(Protocol):
    def __call__(self, *, grace_seconds: float = ..., seen_cap: int = ...,
                 same_as: FeatureStore | None = ...) -> FeatureStore: ...


def redis_tcp(request: pytest.FixtureRequest) -> OpenStore:
    """``RedisFeatureStore`` on the session's real redis-server over TCP; a fresh prefix is fresh data."""
    server: EmbeddedRedis = request.getfixturevalue("fs_redis")
    assert server.url.startswith("redis://"), server.url

    def open_store(*, grace_seconds: float = 3600.0, seen_cap: int = 200,
                   same_as: FeatureStore | None = None) -> FeatureStore:
        prefix = same_as.prefix if isinstance(same_as, RedisFeatureStore) else f"c{uuid.uuid4().hex[:10]}"
        return RedisFeatureStore.from_url(server.url, prefix=prefix, grace_seconds=grace_seconds, seen_cap=seen_cap)

    return open_store


def redis_cluster(request: pytest.FixtureRequest) -> OpenStore:
    """``RedisClusterFeatureStore`` on the session's real 3-master Redis Cluster (``redis+cluster://``)."""
    cluster: LocalRedisCluster = request.getfixturevalue("fs_cluster")

    def open_store(*, grace_seconds: float = 3600.0, seen_cap: int = 200,
                   same_as: FeatureStore | None = None) -> FeatureStore:
        prefix = same_as.prefix if isinstance(same_as, RedisFeatureStore) else f"c{uuid.uuid4().hex[:10]}"
        store = RedisFeatureStore.from_url(cluster.url, prefix=prefix, grace_seconds=grace_seconds,
                                           seen_cap=seen_cap)
        assert isinstance(store, RedisClusterFeatureStore)
        return store

    return open_store


IMPLEMENTATIONS: list[Callable[[pytest.FixtureRequest], OpenStore]] = [redis_tcp, redis_cluster]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda factory: factory.__name__)
def open_store(request: pytest.FixtureRequest) -> Iterator[OpenStore]:
    made: list[FeatureStore] = []
    factory = request.param(request)

    def open_tracked(**kwargs: object) -> FeatureStore:
        made.append(factory(**kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield open_tracked
    for store in made:
        store.close()


def scan_keys(store: RedisFeatureStore, version: str | None = None) -> list[str]:
    pattern = f"{store.prefix}:{version}:*" if version else f"{store.prefix}:*"
    return sorted(k.decode() for k in store.client.scan_iter(match=pattern, count=1000))


@pytest.fixture
def keys_of() -> Callable[..., list[str]]:
    """``keys_of(store, version=None)``: every key under the store's prefix (and version)."""
    return scan_keys


def wait_until_in_aof(admin: redis.Redis, timeout: float = 60.0) -> None:
    """Wait until every write acknowledged so far has been written to the server's AOF (its buffer is empty):
    a SIGKILL then loses none of them (only a power cut could, until the fsync within the second)."""
    deadline = time.monotonic() + timeout
    while True:
        info = admin.info("persistence")
        assert int(info["aof_enabled"]), "the server keeps no AOF"
        if int(info["aof_buffer_length"]) == 0:
            return
        assert time.monotonic() < deadline, f"AOF not written within {timeout:.0f} s: {info}"
        time.sleep(0.01)
