"""What only the Redis store does: its key layout, its two read paths (MGET and the Lua script), its prefixes.

The behaviour every store shares is in ``test_fs_contract.py``; these check how Redis holds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from recsys.errors import RecsysError
from services.feature_store.redis_store import RedisFeatureStore
from services.feature_store.store import ABANDONED_SECONDS
from tests.services.feature_store.test_fs_contract import fill


def test_many_items_read_by_the_script_and_by_mget(make_store: Callable[..., RedisFeatureStore]) -> None:
    """More keys than one Lua unpack takes: the script reads them in slices; the MGET path reads the same."""
    writer_store = make_store()
    ids = [f"item-{i}" for i in range(9000)]
    writer = writer_store.begin_version("big")
    writer.put_items(ids, [i.encode() for i in ids])
    writer.commit()
    fresh = make_store(prefix=writer_store.prefix)
    assert fresh._version_hint is None  # so the first read is the script's
    first = fresh.fetch("u", ids)
    assert fresh._version_hint == "big"  # and the second the plain MGET
    second = fresh.fetch("u", ids)
    assert first.items == second.items == [i.encode() for i in ids]


def test_abort_removes_every_key_of_the_version(store: RedisFeatureStore, keys_of: Callable[..., list[str]]) -> None:
    fill(store, "v1", {"u1": b"u1@v1"}, {"a": b"a@v1"})
    writer = store.begin_version("v2")
    writer.put_users(["u1"], [b"u1@v2"])
    writer.put_items(["a", "b"], [b"a@v2", b"b@v2"])
    assert keys_of(store, "v2") == [f"{store.prefix}:v2:i:a", f"{store.prefix}:v2:i:b", f"{store.prefix}:v2:u:u1"]
    writer.abort()
    assert keys_of(store, "v2") == []
    assert keys_of(store, "v1")


def test_gc_unlinks_the_keys_of_collected_versions(make_store: Callable[..., RedisFeatureStore],
                                                   keys_of: Callable[..., list[str]]) -> None:
    store = make_store(grace_seconds=0)
    fill(store, "v1", {"u1": b"1"}, {"a": b"1"})
    fill(store, "v2", {"u1": b"2"}, {"a": b"2"})
    assert keys_of(store, "v1") == [] and keys_of(store, "v2")
    crashed = store.begin_version("crashed")
    crashed.put_users(["u1"], [b"x"])
    assert keys_of(store, "crashed")
    assert store.gc(now=time.time() + ABANDONED_SECONDS + 1) == ["crashed"]
    assert keys_of(store, "crashed") == []
    assert sorted(keys_of(store)) == sorted([f"{store.prefix}:active", f"{store.prefix}:versions",
                                             *keys_of(store, "v2")])


def test_prefix_separates_stores_on_one_server(make_store: Callable[..., RedisFeatureStore]) -> None:
    first, second = make_store(), make_store()
    fill(first, "v1", {"u1": b"first"}, {})
    assert second.active_version() is None and second.get_users(["u1"]) == [None]
    with pytest.raises(RecsysError, match="prefix"):
        make_store(prefix="bad prefix!")
