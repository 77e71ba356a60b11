"""Feature-store fixtures: one real redis-server for the session; each store under a prefix of its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.redis_store import RedisFeatureStore

MakeStore = Callable[..., RedisFeatureStore]


@pytest.fixture(scope="session")
def fs_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A redis-server shared by the feature-store tests (tests that kill a server use ``redis_server``)."""
    server = EmbeddedRedis.start(tmp_path_factory.mktemp("fs-redis"))
    yield server
    server.stop(save=False)


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
