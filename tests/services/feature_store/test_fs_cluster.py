"""How the Redis Cluster store holds the contract (``test_fs_contract.py`` runs on it too): the key layout,
one round trip per master, reads and updates that a version switch or delete overtakes, URLs, a killed master."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from recsys.errors import RecsysError
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.local_cluster import LocalRedisCluster
from services.feature_store.redis_cluster_store import RedisClusterFeatureStore
from services.feature_store.redis_store import RedisFeatureStore
from services.feature_store.store import FeatureStoreUnavailable

ITEMS = [f"item-{i}" for i in range(300)]


@pytest.fixture
def make_cluster_store(fs_cluster: LocalRedisCluster) -> Iterator[Callable[..., RedisClusterFeatureStore]]:
    made: list[RedisClusterFeatureStore] = []

    def make(**kwargs: Any) -> RedisClusterFeatureStore:
        kwargs.setdefault("prefix", f"k{uuid.uuid4().hex[:10]}")
        store = RedisFeatureStore.from_url(fs_cluster.url, activation_file=None, **kwargs)
        assert isinstance(store, RedisClusterFeatureStore)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _fill(store: RedisFeatureStore, version: str, users: list[str] = ["u1"]) -> None:  # noqa: B006 - read only
    writer = store.begin_version(version)
    writer.put_users(users, [f"{version}/{u}".encode() for u in users])
    writer.put_items(ITEMS, [f"{version}/{i}".encode() for i in ITEMS])
    writer.commit()


def _keys_per_master(cluster: LocalRedisCluster, pattern: str) -> list[int]:
    counts = []
    for index in range(len(cluster.ports)):
        client = cluster.node_client(index)
        try:
            counts.append(sum(1 for _ in client.scan_iter(match=pattern, count=1000)))
        finally:
            client.close()
    return counts


def test_control_keys_share_a_slot_and_records_spread_over_every_master(
        make_cluster_store: Callable[..., RedisClusterFeatureStore], fs_cluster: LocalRedisCluster) -> None:
    store = make_cluster_store()
    _fill(store, "v1")
    assert fs_cluster.node_of(f"{{{store.prefix}}}:active") == fs_cluster.node_of(f"{{{store.prefix}}}:versions")
    counts = _keys_per_master(fs_cluster, f"{store.prefix}:v1:i:*")
    assert sum(counts) == len(ITEMS) and min(counts) > 0, counts


def test_a_read_is_one_round_trip_per_master(make_cluster_store: Callable[..., RedisClusterFeatureStore],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_cluster_store()
    _fill(store, "v1")
    store.fetch("u1", ITEMS[:1])  # learns the active version and connects
    writes: list[int] = []
    real = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        writes.append(self.port)
        real(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    fetched = store.fetch("u1", ITEMS)
    assert fetched.items == [f"v1/{i}".encode() for i in ITEMS] and fetched.user == b"v1/u1"
    assert sorted(writes) == sorted(set(writes)) and len(writes) == 3, writes  # each master once, 301 keys


def _interleave(store: RedisClusterFeatureStore, between: Callable[[], None]) -> list[str]:
    """Make the store's next read run its control commands, then ``between()``, then its data commands: the
    order in which the masters may serve a read that a switch (and a delete) overtakes. Returns what ran."""
    real = store._send
    ran: list[str] = []

    def split(commands: Any, slots: Any = None) -> list[Any]:
        if len(commands) > 2 and not ran:
            ran.append("control")
            head = real(commands[:2], slots[:2])
            between()
            ran.append("data")
            return head + real(commands[2:], slots[2:])
        ran.append("other")
        return real(commands, slots)

    store._send = split  # type: ignore[method-assign]
    return ran


def test_a_read_overtaken_by_a_delete_reads_the_new_version(
        make_cluster_store: Callable[..., RedisClusterFeatureStore]) -> None:
    writer = make_cluster_store(grace_seconds=0)  # the old version is deleted as soon as the next commits
    _fill(writer, "v1")
    reader = make_cluster_store(prefix=writer.prefix)
    assert reader.fetch("u1", ITEMS[:2]).version == "v1"
    ran = _interleave(reader, lambda: _fill(writer, "v2"))  # reader found v1 active, then v1 was deleted
    fetched = reader.fetch("u1", ITEMS)
    # It found v1's records gone, confirmed v1 was deleted (learning that v2 is active), and read v2.
    assert ran == ["control", "data", "other", "other"], ran
    assert (fetched.version, fetched.user) == ("v2", b"v2/u1")
    assert fetched.items == [f"v2/{i}".encode() for i in ITEMS]


def test_an_update_overtaken_by_a_switch_lands_in_the_new_version(
        make_cluster_store: Callable[..., RedisClusterFeatureStore], fs_cluster: LocalRedisCluster) -> None:
    writer = make_cluster_store(grace_seconds=0)
    _fill(writer, "v1")
    updater = make_cluster_store(prefix=writer.prefix)
    real_active = updater.active_version
    switched: list[str | None] = []

    def active_then_switch() -> str | None:
        found = real_active()
        if not switched:  # the first look finds v1; v2 replaces (and deletes) it before the write
            switched.append(found)
            _fill(writer, "v2")
        return found

    updater.active_version = active_then_switch  # type: ignore[method-assign]
    updater.put_user("u1", b"updated")
    updater.add_seen("u1", "item-7")
    assert switched == ["v1"]
    assert writer.fetch("u1", []).user == b"updated" and writer.seen("u1") == ["item-7"]
    assert sum(_keys_per_master(fs_cluster, f"{writer.prefix}:v1:*")) == 0  # nothing written into deleted v1


def test_urls_name_a_cluster_or_say_what_to_write(fs_cluster: LocalRedisCluster, fs_redis: EmbeddedRedis) -> None:
    plain = RedisFeatureStore.from_url(fs_cluster.url.replace("redis+cluster://", "redis://"), activation_file=None)
    try:
        with pytest.raises(RecsysError, match="is a Redis Cluster node.*redis\\+cluster://"):
            plain.fetch("u1", ITEMS)
    finally:
        plain.close()
    not_a_cluster = RedisFeatureStore.from_url(fs_redis.url.replace("redis://", "redis+cluster://"),
                                               activation_file=None)
    with pytest.raises(RecsysError, match="Cluster mode is not enabled.*redis://"):
        not_a_cluster.fetch("u1", ["a"])
    with pytest.raises(RecsysError, match="only database 0"):
        RedisFeatureStore.from_url(fs_cluster.url + "/2")
    unreachable = RedisFeatureStore.from_url("redis+cluster://127.0.0.1:1", activation_file=None)  # lazy: no error
    with pytest.raises(FeatureStoreUnavailable, match="127.0.0.1:1"):
        unreachable.ping()


def test_a_killed_master_is_unavailable_then_the_same_store_recovers(tmp_path: Path) -> None:
    cluster = LocalRedisCluster.start(tmp_path / "cluster")
    store = RedisFeatureStore.from_url(cluster.url, activation_file=None)
    try:
        _fill(store, "v1")
        before = store.fetch("u1", ITEMS)
        killed = cluster.node_of(f"recsys:v1:i:{ITEMS[0]}")
        cluster.kill(killed)
        with pytest.raises(FeatureStoreUnavailable):
            store.fetch("u1", ITEMS)
        with pytest.raises(FeatureStoreUnavailable):
            store.ping()
        cluster.restart(killed)
        after = store.fetch("u1", ITEMS)  # the same object: reconnected, data back from the AOF
        assert (after.version, after.user, after.items) == (before.version, before.user, before.items)
        store.ping()
    finally:
        store.close()
        cluster.stop()
