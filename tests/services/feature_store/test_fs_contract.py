"""The FeatureStore contract: what any implementation must do, through the interface only.

Every test runs once per entry of ``IMPLEMENTATIONS`` (``conftest.py``): a factory that, given the test's request,
returns ``open_store(grace_seconds=..., seen_cap=..., same_as=None)``, which opens a store on fresh, empty data
(or, with ``same_as``, a second handle on that store's data, as another process would open it). Adding an
implementation is one more factory there. Checks of one implementation's own layout (keys, scripts) live in its
own file (``test_fs_redis.py``, ``test_fs_cluster.py``).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from recsys.errors import RecsysError
from services.feature_store.store import ABANDONED_SECONDS, FeatureStore
from tests.services.feature_store.conftest import OpenStore


@pytest.fixture
def store(open_store: OpenStore) -> FeatureStore:
    return open_store()


def fill(store: FeatureStore, name: str, users: dict[str, bytes], items: dict[str, bytes],
         popular: list[str] | None = None, seen: dict[str, list[str]] | None = None) -> None:
    writer = store.begin_version(name)
    writer.put_users(list(users), list(users.values()))
    writer.put_items(list(items), list(items.values()))
    writer.put_popular(popular or [])
    writer.put_seen(list(seen or {}), list((seen or {}).values()))
    writer.commit({"note": name})


def test_empty_store_answers_nothing(store: FeatureStore) -> None:
    assert store.active_version() is None
    fetched = store.fetch("u1", ["a", "b"])
    assert (fetched.version, fetched.user, fetched.items) == (None, None, [None, None])
    assert store.popular(10) == (None, [])
    assert store.seen("u1") == []
    assert store.get_users(["u1"]) == [None]
    assert store.get_embeddings("user", ["u1"]) == [None]
    with pytest.raises(RecsysError, match="no active version"):
        store.put_user("u1", b"x")


def test_round_trip_and_unknown_ids(store: FeatureStore) -> None:
    writer = store.begin_version("v1")
    writer.put_users(["u1", "u2"], [b"U1", b"\x00U2\xff"])
    writer.put_items(["a", "b", "c"], [b"A", b"B", b""])
    writer.put_popular(["c", "a", "b"])
    writer.put_seen(["u1", "u2"], [["b", "a"], []])
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    writer.put_embeddings("item", ["a", "b", "c"], vectors)
    writer.put_embeddings("user", ["u1", "u2"], vectors[:2], dtype="int8")
    assert store.fetch("u1", ["a"]).version is None  # invisible until committed
    writer.commit({"rows": "5"})

    fetched = store.fetch("u1", ["a", "zz", "c", "a"])
    assert (fetched.version, fetched.user, fetched.items) == ("v1", b"U1", [b"A", None, b"", b"A"])
    assert store.fetch("nobody", []).user is None
    no_user = store.fetch(None, ["b"])
    assert (no_user.version, no_user.user, no_user.items) == ("v1", None, [b"B"])
    assert store.get_users(["u2", "u3"]) == [b"\x00U2\xff", None]
    assert store.get_items(["c", "b"]) == [b"", b"B"]
    assert store.popular(2) == ("v1", ["c", "a"])
    assert store.popular(100) == ("v1", ["c", "a", "b"])
    assert store.seen("u1") == ["b", "a"]
    assert store.seen("u2") == [] and store.seen("u9") == []
    items = store.get_embeddings("item", ["c", "zz", "a"])
    np.testing.assert_array_equal(items[0], vectors[2])
    assert items[1] is None
    np.testing.assert_array_equal(items[2], vectors[0])
    users = store.get_embeddings("user", ["u2", "u1"])
    np.testing.assert_allclose(users[0], vectors[1], atol=np.abs(vectors[1]).max() / 127)
    np.testing.assert_allclose(users[1], vectors[0], atol=np.abs(vectors[0]).max() / 127)
    assert store.get_embeddings("context", ["a"]) == [None]
    meta = store.versions()["v1"]
    assert meta["state"] == "active" and meta["rows"] == "5" and meta["users"] == "2" and meta["items"] == "3"


def test_many_items_in_one_fetch(open_store: OpenStore) -> None:
    """A fetch of thousands of items, from a fresh handle (no state from an earlier read) and again."""
    writer_store = open_store()
    ids = [f"item-{i}" for i in range(9000)]
    writer = writer_store.begin_version("big")
    writer.put_items(ids, [i.encode() for i in ids])
    writer.commit()
    fresh = open_store(same_as=writer_store)
    first = fresh.fetch("u", ids)
    second = fresh.fetch("u", ids)
    assert first.version == second.version == "big"
    assert first.items == second.items == [i.encode() for i in ids]
    assert fresh.get_items(ids[-3:]) == [i.encode() for i in ids[-3:]]


def test_version_switch_retires_the_old_one(store: FeatureStore) -> None:
    fill(store, "v1", {"u1": b"u1@v1", "old": b"old@v1"}, {"a": b"a@v1"}, ["a"], {"u1": ["a"]})
    assert store.fetch("u1", ["a"]).items == [b"a@v1"]
    fill(store, "v2", {"u1": b"u1@v2"}, {"a": b"a@v2", "b": b"b@v2"}, ["b", "a"], {})
    fetched = store.fetch("u1", ["a", "b"])
    assert (fetched.version, fetched.user, fetched.items) == ("v2", b"u1@v2", [b"a@v2", b"b@v2"])
    assert store.get_users(["old"]) == [None]  # nothing leaks from v1
    assert store.seen("u1") == []
    assert store.popular(5) == ("v2", ["b", "a"])
    versions = store.versions()
    assert versions["v1"]["state"] == "retired" and float(versions["v1"]["retired_at"]) > 0
    assert versions["v2"]["state"] == "active"


def test_abort_leaves_the_active_version_untouched(store: FeatureStore) -> None:
    fill(store, "v1", {"u1": b"u1@v1"}, {"a": b"a@v1"})
    writer = store.begin_version("v2")
    writer.put_users(["u1"], [b"u1@v2"])
    writer.put_items(["a", "b"], [b"a@v2", b"b@v2"])
    assert store.versions()["v2"]["state"] == "writing"
    writer.abort()
    assert store.active_version() == "v1"
    assert store.fetch("u1", ["a", "b"]).items == [b"a@v1", None]
    assert store.fetch("u1", ["b"], version="v2").items == [None]
    assert "v2" not in store.versions()
    with pytest.raises(RecsysError, match="already committed or aborted"):
        writer.put_users(["u1"], [b"x"])
    with pytest.raises(RecsysError, match="does not exist"):
        store.activate("v2")


def test_gc_deletes_retired_versions_after_the_grace_period(open_store: OpenStore) -> None:
    store = open_store(grace_seconds=0)
    fill(store, "v1", {"u1": b"1"}, {"a": b"1"})
    fill(store, "v2", {"u1": b"2"}, {"a": b"2"})  # commit runs gc: v1 is past a grace of 0
    assert "v1" not in store.versions()
    assert store.fetch("u1", [], version="v1").version is None
    assert store.fetch("u1", []).user == b"2"

    patient = open_store(same_as=store, grace_seconds=3600)
    fill(patient, "v3", {"u1": b"3"}, {"a": b"3"})
    assert patient.fetch("u1", [], version="v2").user == b"2"  # retired, but within its hour
    assert patient.gc() == []
    assert patient.gc(now=time.time() + 3601) == ["v2"]
    assert set(patient.versions()) == {"v3"}
    assert patient.fetch("u1", ["a"], version="v2").items == [None]


def test_abandoned_writer_is_collected(open_store: OpenStore) -> None:
    store = open_store(grace_seconds=0)
    writer = store.begin_version("crashed")
    writer.put_users(["u1"], [b"x"])
    assert store.gc() == []  # a live writer is left alone
    assert store.gc(now=time.time() + ABANDONED_SECONDS + 1) == ["crashed"]
    assert store.versions() == {}
    with pytest.raises(RecsysError, match="does not exist"):
        writer.commit()


def test_online_updates_write_into_the_active_version(open_store: OpenStore) -> None:
    store = open_store(seen_cap=3)
    fill(store, "v1", {"u1": b"old"}, {"a": b"A"}, seen={"u1": ["a", "b"]})
    store.put_user("u1", b"new")
    store.put_user("u2", b"born")
    store.put_item("z", b"Z")
    store.add_seen("u1", "b")  # moves to the front, no duplicate
    store.add_seen("u1", "c")
    store.add_seen("u1", "d")  # the cap drops the oldest
    fetched = store.fetch("u1", ["a", "z"])
    assert (fetched.version, fetched.user, fetched.items) == ("v1", b"new", [b"A", b"Z"])
    assert store.get_users(["u2"]) == [b"born"]
    assert store.seen("u1") == ["d", "c", "b"]


def test_rollback_to_a_retired_version(store: FeatureStore) -> None:
    fill(store, "v1", {"u1": b"1"}, {})
    fill(store, "v2", {"u1": b"2"}, {})
    assert store.activate("v1", {"reason": "rollback"}) == "v2"
    assert store.active_version() == "v1"
    assert store.fetch("u1", []).user == b"1"
    versions = store.versions()
    assert versions["v2"]["state"] == "retired"
    assert versions["v1"]["state"] == "active" and versions["v1"]["reason"] == "rollback"
    with pytest.raises(RecsysError, match="is active"):
        store.delete_version("v1")


def test_version_names_are_checked(store: FeatureStore) -> None:
    with pytest.raises(RecsysError, match="version name"):
        store.begin_version("bad name*")
    store.begin_version("v1")
    with pytest.raises(RecsysError, match="already exists"):
        store.begin_version("v1")
    assert store.begin_version().version.startswith("v")  # a generated name


def test_reads_of_a_version_by_name(open_store: OpenStore) -> None:
    """A retired version is read by name (records, popular, seen) while the active one is named beside it; a version
    collected or never committed reads as nothing."""
    store = open_store()
    fill(store, "v1", {"u1": b"u1@v1"}, {"a": b"a@v1"}, ["a"], {"u1": ["a"]})
    fill(store, "v2", {"u1": b"u1@v2"}, {"a": b"a@v2", "b": b"b@v2"}, ["b", "a"], {})
    for reader in (store, open_store(same_as=store)):  # one that has read before, and a fresh one
        old = reader.fetch("u1", ["a", "b"], version="v1")
        assert (old.version, old.active, old.user, old.items) == ("v1", "v2", b"u1@v1", [b"a@v1", None])
        assert reader.popular(5, version="v1") == ("v1", ["a"]) and reader.seen("u1", version="v1") == ["a"]
        new = reader.fetch(None, ["b"], version="v2")  # the active one, named
        assert (new.version, new.active, new.items) == ("v2", "v2", [b"b@v2"])
        assert reader.fetch("u1", []).active == "v2"  # unnamed reads name the active version too

    store.begin_version("v3").put_users(["u1"], [b"u1@v3"])  # being written: not readable by name
    assert store.delete_version("v1") > 0
    for name in ("v1", "v3", "never"):
        gone = store.fetch("u1", ["a"], version=name)
        assert (gone.version, gone.active, gone.user, gone.items) == (None, "v2", None, [None])
        assert store.popular(5, version=name) == (None, []) and store.seen("u1", version=name) == []
    assert store.fetch("u1", []).user == b"u1@v2"  # and the active version reads on as before


def test_url_names_the_store_without_its_password(store: FeatureStore) -> None:
    """What the service and the CLI show of a store; the factories' servers all have a password."""
    store.ping()
    assert store.url and urlsplit(store.url).password is None
