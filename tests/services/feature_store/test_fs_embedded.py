"""The embedded redis-server: start, stop with a save, reload, attach, and REDIS_URL taking precedence."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from recsys.errors import RecsysError
from services.feature_store import embedded
from services.feature_store.embedded import EmbeddedRedis, find_redis_server, open_store, redis_url, state_dir
from services.feature_store.redis_store import RedisFeatureStore, redact_url


def test_state_dir_and_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RECSYS_HOME", raising=False)
    assert state_dir() == Path("~/.local/state/recsys").expanduser()
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    assert state_dir() == tmp_path
    assert find_redis_server().name == "redis-server"
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RecsysError, match="no redis-server found"):
        find_redis_server()


def test_start_stop_save_and_reload(tmp_path: Path) -> None:
    server = EmbeddedRedis.start(tmp_path)
    try:
        assert json.loads((tmp_path / "server.json").read_text())["port"] == server.port
        store = RedisFeatureStore.from_url(server.url)
        writer = store.begin_version("v1")
        writer.put_users(["u1"], [b"U1"])
        writer.commit()
        store.close()
    finally:
        server.stop(save=True)
    assert not server.running and not (tmp_path / "server.json").exists()
    assert (tmp_path / "dump.rdb").is_file()
    again = EmbeddedRedis.start(tmp_path)
    try:
        assert again.port == server.port  # the port it had: URLs and the activation floor stay valid
        store = RedisFeatureStore.from_url(again.url)
        assert store.fetch("u1", []).user == b"U1"
        store.close()
        with pytest.raises(RecsysError, match=f"port {again.port}.*Address already in use"):
            EmbeddedRedis.start(tmp_path / "other", port=again.port)  # the log tail says why
    finally:
        again.stop(save=False)


def test_redis_url_starts_attaches_and_saves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    with open_store() as store:
        info = json.loads((tmp_path / "redis" / "server.json").read_text())
        assert info["url"] == f"redis://recsys@127.0.0.1:{info['port']}/0"  # no password in server.json
        writer = store.begin_version("v1")
        writer.put_items(["a"], [b"A"])
        writer.commit()
        with redis_url() as attached:  # a second user of the same state dir attaches
            assert redact_url(attached) == info["url"]
        assert (tmp_path / "redis" / "server.json").exists()  # ... and leaves it running
        assert store.get_items(["a"]) == [b"A"]
    assert not (tmp_path / "redis" / "server.json").exists()  # the starter saved and stopped it
    with open_store() as store:  # a fresh server, reloaded from dump.rdb
        assert store.get_items(["a"]) == [b"A"]


def test_redis_url_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://:pw@example.invalid:6390/3")
    with redis_url() as url:
        assert url == "redis://:pw@example.invalid:6390/3"
    assert not (tmp_path / "redis").exists()


def test_starter_leaves_the_server_to_others_and_the_last_one_out_stops_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    server_file = tmp_path / "redis" / "server.json"
    with redis_url() as url:
        other = redis.Redis.from_url(url, client_name="recsys-1")  # another recsys process, e.g. `serve`
        other.ping()
    assert server_file.exists() and other.ping()  # left running for it
    other.close()
    gone = subprocess.Popen(["true"])
    gone.wait()
    server_file.write_text(json.dumps({**json.loads(server_file.read_text()), "owner": gone.pid}))
    with redis_url() as again:  # attaches; its starter has exited and nobody else is connected ...
        assert again == url
    assert not server_file.exists()  # ... so it saved and stopped it
    assert (tmp_path / "redis" / "dump.rdb").is_file()
