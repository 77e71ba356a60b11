"""A server that dies, hangs or wants a password: clear errors, fast, and recovery on the same store object."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.redis_store import RedisFeatureStore, redact_url
from services.feature_store.store import FeatureStoreUnavailable


_recorders: list[tuple[int, list[tuple[str, tuple[object, ...]]]]] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event in ("socket.connect", "time.sleep"):
        for thread, events in _recorders:
            if thread == threading.get_ident():
                events.append((event, args))


sys.addaudithook(_audit)  # for good (an audit hook cannot be removed): it records only inside `_recording`


@contextmanager
def _recording() -> Iterator[list[tuple[str, tuple[object, ...]]]]:
    """The connects and sleeps this thread makes in the block, as the interpreter's audit events report them:
    how a test sees "no retry, no backoff" without timing anything."""
    recorder = (threading.get_ident(), [])
    _recorders.append(recorder)
    try:
        yield recorder[1]
    finally:
        _recorders.remove(recorder)


def _connects(events: list[tuple[str, tuple[object, ...]]], port: int) -> int:
    return sum(1 for event, args in events if event == "socket.connect" and args[1][1] == port)  # type: ignore[index]


def _commit(store: RedisFeatureStore, name: str = "v1") -> None:
    writer = store.begin_version(name)
    writer.put_users(["u1"], [b"U1"])
    writer.put_items(["a"], [b"A"])
    writer.commit()


def test_killed_server_fails_fast_then_the_same_store_recovers(redis_server: EmbeddedRedis) -> None:
    store = RedisFeatureStore.from_url(redis_server.url)
    _commit(store)
    assert store.fetch("u1", ["a"]).user == b"U1"
    redis_server.stop(save=True)  # keep the data on disk ...
    redis_server.restart()
    assert store.fetch("u1", ["a"]).user == b"U1"  # ... reloaded; the pooled connection was dropped
    redis_server.kill()  # kill -9: nothing saved since the restart, but the dump is still there

    # Fast: a refused connect, one immediate retry (a dropped connection), no backoff sleep.
    with _recording() as fetching, pytest.raises(
            FeatureStoreUnavailable, match=rf"feature store at redis://recsys@127\.0\.0\.1:{redis_server.port}/0"):
        store.fetch("u1", ["a"])
    with _recording() as ranking, pytest.raises(FeatureStoreUnavailable):
        store.popular(3)
    # The pooled connection to the dead server is either noticed as closed (reconnect, refused) or tried (fails):
    # 1 or 2 connects; then none is pooled, so the next call connects, is refused, retries once: exactly 2.
    assert 1 <= _connects(fetching, redis_server.port) <= 2 and _connects(ranking, redis_server.port) == 2
    assert not [e for e, _ in fetching + ranking if e == "time.sleep"]

    redis_server.restart()  # same port, same data directory
    fetched = store.fetch("u1", ["a"])  # same store object: redis-py reconnects, EVALSHA reloads its script
    assert (fetched.version, fetched.user, fetched.items) == ("v1", b"U1", [b"A"])
    store.close()


def test_hung_server_times_out_without_retrying(redis_server: EmbeddedRedis) -> None:
    store = RedisFeatureStore.from_url(redis_server.url, timeout=0.3)
    store.ping()
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        with _recording() as events, pytest.raises(FeatureStoreUnavailable, match="timed out"):
            store.fetch("u1", ["a"])
        assert events == []  # one timeout on the pooled connection: no reconnect (a retry would), no backoff
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    store.ping()
    store.close()


def test_loading_server_is_unavailable(store: RedisFeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def loading(*args: object, **kwargs: object) -> None:
        raise redis.BusyLoadingError("Redis is loading the dataset in memory")

    monkeypatch.setattr(store.client, "get", loading)
    with pytest.raises(FeatureStoreUnavailable, match="loading its data"):
        store.active_version()


def test_password_and_acl_user(redis_server: EmbeddedRedis) -> None:
    host = f"127.0.0.1:{redis_server.port}"
    store = RedisFeatureStore.from_url(redis_server.url)  # the embedded server's own ACL user and password
    _commit(store)
    assert store.fetch("u1", ["a"]).items == [b"A"]
    admin = redis_server.admin_client()
    admin.acl_setuser("ranker", enabled=True, passwords=["+pw2"], keys=["*"], commands=["+@all"])
    admin.close()

    acl = RedisFeatureStore.from_url(f"redis://ranker:pw2@{host}/0")
    assert acl.fetch("u1", ["a"]).user == b"U1"

    for url in (f"redis://:wrong@{host}/0", f"redis://recsys:wrong@{host}/0", f"redis://{host}/0"):
        with pytest.raises(FeatureStoreUnavailable) as failed:
            RedisFeatureStore.from_url(url).ping()
        assert "wrong" not in str(failed.value) and f"{redact_url(url)}:" in str(failed.value)
    store.close()
    acl.close()


def test_url_forms() -> None:
    assert redact_url("redis://:secret@h:6380/2") == "redis://h:6380/2"
    assert redact_url("redis://alice:secret@h:6380/0?socket_timeout=3") == "redis://alice@h:6380/0"
    assert redact_url("rediss://:pw@cache.example.com:6380/0") == "rediss://cache.example.com:6380/0"
    tls = RedisFeatureStore.from_url("rediss://:pw@cache.example.com:6380/1")
    kwargs = tls.client.connection_pool.connection_kwargs
    assert tls.client.connection_pool.connection_class is redis.SSLConnection
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("cache.example.com", 6380, 1, "pw")
    assert kwargs["socket_connect_timeout"] == 1.0 and kwargs["socket_timeout"] == 2.0
    assert tls.url == "rediss://cache.example.com:6380/1"
    acl = RedisFeatureStore.from_url("redis://alice:pw@h:6379/0")
    assert acl.client.connection_pool.connection_kwargs["username"] == "alice"
