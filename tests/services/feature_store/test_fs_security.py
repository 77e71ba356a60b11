"""The embedded Redis against a local attacker: no access without the password, no administration with it,
and the password readable only by its owner and never shown."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from recsys.errors import RecsysError
from services.feature_store.embedded import Credentials, EmbeddedRedis, open_store, redis_url
from services.feature_store.redis_store import RedisFeatureStore, redact_url
from tests.services.feature_store.conftest import wait_until_in_aof


def assert_refused(attempts: dict[str, Callable[[], Any]], pattern: str) -> None:
    """Each attempt fails with a Redis error matching ``pattern`` (redis-py drops the NOAUTH/NOPERM codes)."""
    for name, attempt in attempts.items():
        try:
            attempt()
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            assert re.search(pattern, str(exc)), f"{name}: {exc}"
        else:
            pytest.fail(f"{name} was allowed")


@pytest.fixture
def open_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A RECSYS_HOME that every user may traverse (pytest's own tmp folders are 0700): only the modes recsys
    sets protect what it keeps there."""
    home = Path(tempfile.mkdtemp(prefix="recsys-open-home-"))
    os.chmod(home, 0o755)
    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.delenv("REDIS_URL", raising=False)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_no_access_without_the_password(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    admin = redis_server.admin_client()
    admin.set("k", "mine")
    for url in (f"redis://127.0.0.1:{redis_server.port}/0", f"redis://:guess@127.0.0.1:{redis_server.port}/0",
                f"redis://recsys:guess@127.0.0.1:{redis_server.port}/0"):
        stranger = redis.Redis.from_url(url, socket_timeout=5, protocol=2)  # RESP2: each command reaches the server
        assert_refused({
            "GET": lambda c=stranger: c.get("k"),
            "SET": lambda c=stranger: c.set("k", "junk"),
            "SHUTDOWN": lambda c=stranger: c.execute_command("SHUTDOWN", "NOSAVE"),
            "CONFIG SET dir": lambda c=stranger: c.config_set("dir", str(tmp_path)),
            "MODULE LOAD": lambda c=stranger: c.execute_command("MODULE", "LOAD", str(tmp_path / "x.so")),
            "DEBUG": lambda c=stranger: c.execute_command("DEBUG", "SLEEP", "0"),
        }, "^Authentication required|^invalid username-password pair|^unknown command")
        stranger.close()
    assert admin.get("k") == b"mine" and admin.ping()  # unchanged, still up
    admin.close()


def test_the_platform_user_works_but_cannot_administer(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    store = RedisFeatureStore.from_url(redis_server.url, prefix="sec")
    writer = store.begin_version("v1")  # what `recsys features materialize` does
    writer.put_users(["u1"], [b"U1"])
    writer.put_items(["a", "b"], [b"A", b"B"])
    writer.put_popular(["b", "a"])
    writer.put_seen(["u1"], [["a"]])
    writer.put_embeddings("item", ["a", "b"], np.eye(2, dtype=np.float32), dtype="int8")
    writer.commit({"artifact": "x"})
    store.put_user("u2", b"U2")  # what `recsys features upsert` and the service do
    store.add_seen("u1", "b")
    fetched = store.fetch("u2", ["a", "b", "c"])
    assert (fetched.version, fetched.user, fetched.items) == ("v1", b"U2", [b"A", b"B", None])
    assert store.popular(1) == ("v1", ["b"]) and store.seen("u1") == ["b", "a"]
    assert np.allclose(store.get_embeddings("item", ["b"])[0], [0.0, 1.0])
    store.begin_version("v2").abort()  # SCAN + UNLINK
    assert list(store.versions()) == ["v1"]

    client = store.client
    assert client.info("server")["redis_version"]
    admin = redis_server.admin_client()
    config = redis_server.credentials.config_command
    assert_refused({
        "CONFIG SET dir": lambda: client.config_set("dir", str(tmp_path)),
        "CONFIG by its secret name": lambda: client.execute_command(config, "SET", "dir", str(tmp_path)),
        "MODULE LOAD": lambda: client.execute_command("MODULE", "LOAD", str(tmp_path / "x.so")),
        "DEBUG": lambda: client.execute_command("DEBUG", "SLEEP", "0"),
        "SHUTDOWN": lambda: client.execute_command("SHUTDOWN", "NOSAVE"),
        "SAVE": lambda: client.save(),
        "BGSAVE": lambda: client.bgsave(),
        "FLUSHALL": lambda: client.flushall(),
        "KEYS": lambda: client.keys("*"),
        "ACL SETUSER": lambda: client.acl_setuser("me", enabled=True, passwords=["+x"], commands=["+@all"]),
        "CLIENT KILL": lambda: client.client_kill_filter(_type="normal"),
        "MONITOR": lambda: client.execute_command("MONITOR"),
        "SLAVEOF": lambda: client.execute_command("SLAVEOF", "127.0.0.1", "1"),
    }, "^this user has no permissions|^unknown command")
    assert_refused({  # nor does the admin user reach what was renamed away
        " ".join(command): lambda command=command: admin.execute_command(*command)
        for command in (("MODULE", "LIST"), ("DEBUG", "SLEEP", "0"), ("CONFIG", "GET", "dir"))
    }, "^unknown command")
    names = {(c["name"], c["user"]) for c in admin.client_list()}
    assert (f"recsys-{os.getpid()}", "recsys") in names  # connections are named: the starter sees who is attached
    reply = admin.execute_command(config, "GET", "appendonly")  # the admin reaches CONFIG by its secret name
    assert reply in ({b"appendonly": b"yes"}, [b"appendonly", b"yes"])  # RESP3 or RESP2
    assert store.active_version() == "v1" and redis_server.running
    admin.close()
    store.close()


def test_files_are_the_owners_only(open_home: Path) -> None:
    data_dir = open_home / "redis"
    data_dir.mkdir(mode=0o755)  # as the old code left it
    server = EmbeddedRedis.start(data_dir)
    try:
        store = RedisFeatureStore.from_url(server.url)
        writer = store.begin_version("v1")
        writer.put_users(["u1"], [b"U1"])
        writer.commit()
        store.close()
        wait_until_in_aof(server.admin_client())
    finally:
        server.stop(save=True)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert {"secrets.json", "redis.conf", "dump.rdb", "redis.log"} <= {p.name for p in files}
    assert any("appendonly" in p.name for p in files)
    loose = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files if p.stat().st_mode & 0o077}
    assert not loose, loose
    credentials = Credentials.load(data_dir)
    for secret in (credentials.password, credentials.admin_password):
        assert secret not in (data_dir / "redis.conf").read_text()  # only their hashes there


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (uid 65534, nobody)")
def test_another_user_cannot_read_the_secrets(open_home: Path) -> None:
    data_dir = open_home / "redis"
    server = EmbeddedRedis.start(data_dir)
    try:
        for path in (data_dir / "secrets.json", data_dir / "redis.conf", data_dir / "dump.rdb"):
            denied = subprocess.run(["cat", str(path)], user=65534, capture_output=True, text=True)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
        os.chmod(data_dir, 0o711)  # even in a folder others may enter, the files themselves are private
        for path in (data_dir / "secrets.json", data_dir / "redis.conf"):
            denied = subprocess.run(["cat", str(path)], user=65534, capture_output=True, text=True)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
    finally:
        server.stop(save=False)
    theirs = open_home / "theirs"
    theirs.mkdir(mode=0o777)
    os.chown(theirs, 65534, 65534)  # a folder another user made (and could swap files in)
    with pytest.raises(RecsysError, match=r"owned by uid 65534, not by this user"):
        EmbeddedRedis.start(theirs)


def test_the_password_is_never_shown(open_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="recsys.feature_store")
    with open_store() as store:
        writer = store.begin_version("v1")
        writer.commit()
        with redis_url() as attached:
            assert attached.startswith("redis://recsys:")
        credentials = Credentials.load(open_home / "redis")
        info = json.loads((open_home / "redis" / "server.json").read_text())
        command_line = Path(f"/proc/{info['pid']}/cmdline").read_bytes().decode()
        shown = [caplog.text, json.dumps(info), command_line, repr(store), store.url, redact_url(attached)]
    for secret in (credentials.password, credentials.admin_password, credentials.config_command):
        for text in shown:
            assert secret not in text
