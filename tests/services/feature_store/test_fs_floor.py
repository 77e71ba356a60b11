"""The activation floor: what a store last activated, recorded outside Redis, so that a server that comes back
with older data (or none) is noticed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from services.feature_store import redis_store
from services.feature_store.embedded import EmbeddedRedis, state_dir
from services.feature_store.redis_store import RedisFeatureStore
from tests.conftest import REPO_ROOT


def _commit(store: RedisFeatureStore, name: str, users: dict[str, bytes]) -> None:
    writer = store.begin_version(name)
    writer.put_users(list(users), list(users.values()))
    writer.commit()


def _committed_at(store: RedisFeatureStore, version: str) -> float:
    return float(store.versions()[version]["committed_at"])


def test_activation_floor_follows_activations_and_outlives_the_data(redis_server: EmbeddedRedis,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    store = RedisFeatureStore.from_url(redis_server.url)
    assert store.activation_floor() is None
    assert store.activation_file is not None and store.activation_file.parent == state_dir() / "activations"
    _commit(store, "v1", {"u1": b"U1"})
    assert store.activation_floor() == _committed_at(store, "v1")
    _commit(store, "v2", {"u1": b"U2"})
    floor = store.activation_floor()
    assert floor == _committed_at(store, "v2") and floor > _committed_at(store, "v1")

    # Another store object, and another process, on the same server and prefix see it; another prefix does not.
    assert RedisFeatureStore.from_url(redis_server.url).activation_floor() == floor
    assert RedisFeatureStore.from_url(redis_server.url, prefix="other").activation_floor() is None
    assert RedisFeatureStore.from_url(redis_server.url, activation_file=None).activation_floor() is None
    code = ("import sys; from services.feature_store.redis_store import RedisFeatureStore as S; "
            "print(repr(S.from_url(sys.argv[1]).activation_floor()))")
    seen = subprocess.run([sys.executable, "-c", code, redis_server.url], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True)
    assert seen.stdout.strip() == repr(floor)

    # An activation stamped earlier (another writer's slower clock) does not move the floor down.
    clock = redis_store._now
    monkeypatch.setattr(redis_store, "_now", lambda: clock() - 3600)
    _commit(store, "v0", {"u1": b"U0"})
    monkeypatch.setattr(redis_store, "_now", clock)
    assert store.activation_floor() == floor > _committed_at(store, "v0")
    store.close()


def test_activation_floor_survives_a_server_that_lost_its_data(redis_server: EmbeddedRedis,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    store = RedisFeatureStore.from_url(redis_server.url)
    _commit(store, "v1", {"u1": b"U1"})
    redis_server.stop(save=True)
    backup = tmp_path / "backup"
    shutil.copytree(redis_server.data_dir, backup)  # a copy of the data as it was with v1 active
    redis_server.restart()
    _commit(store, "v2", {"u1": b"U2"})
    floor = store.activation_floor()
    assert floor == _committed_at(store, "v2")

    redis_server.kill()
    shutil.rmtree(redis_server.data_dir)
    shutil.copytree(backup, redis_server.data_dir)
    redis_server.restart()  # back from the old copy: v2 is lost, v1 is active again
    assert store.active_version() == "v1"
    assert _committed_at(store, "v1") < store.activation_floor() == floor

    admin = redis_server.admin_client()
    admin.flushall()
    admin.close()
    assert store.active_version() is None and store.activation_floor() == floor
    _commit(store, "v3", {"u1": b"U3"})  # materialising again lifts the floor
    assert store.activation_floor() == _committed_at(store, "v3") > floor
    with pytest.raises(redis.ResponseError):
        store.client.flushall()  # the platform's own user cannot wipe the server
    store.close()
