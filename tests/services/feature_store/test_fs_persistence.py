"""Writes survive a crash of the embedded Redis (AOF), and old data folders move to the AOF without losing data."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from recsys.system import free_port
from services.feature_store.embedded import EmbeddedRedis, find_redis_server
from services.feature_store.redis_store import RedisFeatureStore
from services.feature_store.store import FeatureStoreUnavailable
from tests.services.feature_store.conftest import wait_until_in_aof


def _commit(store: RedisFeatureStore, name: str, users: dict[str, bytes]) -> None:
    writer = store.begin_version(name)
    writer.put_users(list(users), list(users.values()))
    writer.put_items(["a"], [name.encode()])
    writer.commit()


def test_commits_and_upserts_survive_sigkill(redis_server: EmbeddedRedis) -> None:
    store = RedisFeatureStore.from_url(redis_server.url, activation_file=None)
    _commit(store, "v1", {"u1": b"old"})
    _commit(store, "v2", {"u1": b"U1", "u2": b"U2"})
    store.put_user("u2", b"upserted")  # an online update just before the crash
    wait_until_in_aof(redis_server.admin_client())
    redis_server.kill()  # SIGKILL: no snapshot
    redis_server.restart()
    fetched = store.fetch("u2", ["a"])
    assert (fetched.version, fetched.user, fetched.items) == ("v2", b"upserted", [b"v2"])
    assert store.get_users(["u1"]) == [b"U1"]
    assert store.versions()["v2"]["state"] == "active" and store.versions()["v1"]["state"] == "retired"
    store.close()


def test_a_data_folder_from_before_the_aof_keeps_its_data(tmp_path: Path) -> None:
    # A folder as the embedded Redis left it before the AOF: only dump.rdb, no passwords, 0755.
    legacy = tmp_path / "redis"
    legacy.mkdir(mode=0o755)
    port = free_port()
    process = subprocess.Popen([str(find_redis_server()), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                str(legacy), "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        old = RedisFeatureStore.from_url(f"redis://127.0.0.1:{port}/0", activation_file=None)
        deadline = time.monotonic() + 60
        while True:
            try:
                old.ping()
                break
            except FeatureStoreUnavailable:
                assert process.poll() is None and time.monotonic() < deadline, "the legacy redis-server did not start"
                time.sleep(0.02)
        _commit(old, "v1", {"u1": b"U1"})
        old.client.shutdown(save=True)
        process.wait(60)
        old.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert sorted(p.name for p in legacy.iterdir()) == ["dump.rdb"]
    (legacy / "appendonly.aof").touch()  # Redis 6 creates it empty when the AOF is switched on, then fills it

    server = EmbeddedRedis.start(legacy)  # loads the dump, then switches the AOF on
    try:
        store = RedisFeatureStore.from_url(server.url, activation_file=None)
        assert store.fetch("u1", ["a"]).user == b"U1"
        _commit(store, "v2", {"u1": b"new"})
        wait_until_in_aof(server.admin_client())
        server.kill()
        server.restart()  # from the AOF: the migrated data and what came after
        fetched = store.fetch("u1", ["a"])
        assert (fetched.version, fetched.user, fetched.items) == ("v2", b"new", [b"v2"])
        assert set(store.versions()) == {"v1", "v2"}
        store.close()
    finally:
        server.stop(save=False)
