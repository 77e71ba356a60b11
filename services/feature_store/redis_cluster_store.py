"""The Redis FeatureStore on Redis Cluster: the same versions and guarantees, keys spread over the masters.

``REDIS_URL=redis+cluster://[[user]:password@]host:port`` (``rediss+cluster://`` for TLS)
names any node; the client learns the others and the slot map from it, on first use (a
cluster that is down at start makes requests fail with ``FeatureStoreUnavailable``, not the
process).

Key layout: as ``redis_store`` (``P:V:u:<id>``, ``P:V:i:<id>``, ...), whose record keys
hash over all 16384 slots, except the two control keys, which share the hash tag ``{P}``
so that the scripts that switch, retire and mark versions (``activate``, ``commit``,
the writer's heartbeat, ``delete_version``) still read and write both in one atomic step::

    {P}:active     string   the active version
    {P}:versions   hash     version → JSON meta

Reads. A Lua script may only touch keys of one slot, so a read cannot resolve the version
and read its records in one atomic step as on one server. Instead a read sends, in one
go, a ``GET {P}:active`` and one MGET per slot of the records of the version its last
read found active, grouped per master: every master gets its commands in one write and
the replies are read after all writes (one round trip per master, in parallel). Records
of a version never change after its commit except by online updates to that version, and
keys name their version, so a reply never mixes two versions; it is kept when ``{P}:active``
still names that version (else it is read again from the new one). What a read could see
instead is part of a version that ``gc`` deleted under it (``grace_seconds`` 0): so a read
that found a record, list or embedding missing confirms, in a second round trip after all
its reads, that the version was not being deleted (deletion marks the version ``deleting``
in ``{P}:versions`` before it unlinks a key); if it was, the read is repeated on the
active version.

Online updates (``put_user``, ``put_item``, ``add_seen``) write into the version they
read as active, then confirm it is still active; if a switch came between, they write
again into the new one (and unlink what they wrote into a version that was deleted
meanwhile).

Failures: a master that is down (connection refused, or the cluster answering
CLUSTERDOWN once it has noticed) raises ``FeatureStoreUnavailable`` (the service answers
503); the next request reconnects, and refreshes the slot map when a master moved. MOVED
and ASK replies (slots being resharded) are followed by redis-py for the commands that got
them.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.retry import Retry

from recsys.errors import RecsysError
from services.feature_store.redis_store import (
    _DELETE_BATCH,
    _WRITE_BATCH,
    RedisFeatureStore,
    _text,
    activation_file_for,
    redact_url,
)
from services.feature_store.store import FeatureStoreUnavailable

_ATTEMPTS = 3  # reads repeated at most this often when versions switch under them
_READABLE = ("active", "retired")

# KEYS[1] the seen list; ARGV: item, cap. The single-server script resolves the version itself; here the key is
# built by the caller (a script may not touch the control keys' slot and the list's).
_ADD_SEEN_KEY = """
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
"""

Command = tuple[Any, ...]  # (NAME, key, *args): routed by its key's slot


def _pack(command: Command) -> bytes:
    """RESP bytes of one command (hiredis, a dependency of the redis client here)."""
    return hiredis.pack_command(command)


class _ReplyError:
    """An error reply as hiredis hands it over (it instantiates this class with the message)."""

    def __init__(self, message: str) -> None:
        self.message = message


_ERRORS = BaseParser  # maps an error reply to redis-py's exception class (MovedError, ClusterDownError, ...)


def _read_replies(connection: Any, count: int) -> list[Any]:
    """``count`` replies from a connection that has just sent that many commands: hiredis parses them straight
    off the socket (redis-py's ``read_response`` costs ~8 µs a reply, most of a 500-key read). Error replies
    come back as redis-py's exceptions (MOVED as ``MovedError``, ...), not raised."""
    reader = hiredis.Reader(replyError=_ReplyError)
    sock = connection._sock
    replies: list[Any] = []
    try:
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise redis.ConnectionError(f"{connection.host}:{connection.port} closed the connection")
                reader.feed(chunk)
                continue
            replies.append(_ERRORS.parse_error(reply.message) if isinstance(reply, _ReplyError) else reply)
    except TimeoutError as exc:
        raise redis.TimeoutError(f"reading from {connection.host}:{connection.port}: {exc}") from exc
    except OSError as exc:
        raise redis.ConnectionError(f"reading from {connection.host}:{connection.port}: {exc}") from exc
    return replies


def _state(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return str(json.loads(raw).get("state"))
    except (ValueError, AttributeError):
        return None


class RedisClusterFeatureStore(RedisFeatureStore):
    """``FeatureStore`` on Redis Cluster (see the module docstring)."""

    def __init__(self, connect: Callable[[], RedisCluster], *, url: str, **kwargs: Any) -> None:
        """``connect`` makes the client, on first use."""
        self._connect, self._cluster, self._lock = connect, None, threading.Lock()
        self._refresh = False  # a master failed: re-read the slot map before the next request
        super().__init__(None, url=url, **kwargs)  # type: ignore[arg-type]
        self._control_slot = key_slot(self._active_key.encode())
        self._add_seen_key = Script(None, _ADD_SEEN_KEY.encode())

    @staticmethod
    def _control_keys(prefix: str) -> tuple[str, str]:
        return f"{{{prefix}}}:active", f"{{{prefix}}}:versions"

    @classmethod
    def from_url(cls, url: str, prefix: str = "recsys", grace_seconds: float = 3600.0, *,
                 connect_timeout: float = 1.0, timeout: float = 2.0, **kwargs: Any) -> RedisClusterFeatureStore:
        parts = urlsplit(url)
        scheme = parts.scheme.removesuffix("+cluster")
        if scheme not in ("redis", "rediss"):
            raise RecsysError(f"REDIS_URL {redact_url(url)}: a cluster is named by redis+cluster:// or "
                              "rediss+cluster://")
        if parts.path.strip("/") not in ("", "0"):
            raise RecsysError(f"REDIS_URL {redact_url(url)}: Redis Cluster has only database 0")
        plain = urlunsplit((scheme, parts.netloc, "", parts.query, ""))
        try:
            if parts.hostname is None:
                raise ValueError("no host")
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise RecsysError(f"REDIS_URL {redact_url(url)}: {exc}") from None

        def connect() -> RedisCluster:
            return RedisCluster.from_url(
                plain, socket_connect_timeout=connect_timeout, socket_timeout=timeout, retry_on_timeout=False,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)), decode_responses=False)

        kwargs.setdefault("activation_file", activation_file_for(url, prefix))
        return cls(connect, prefix=prefix, grace_seconds=grace_seconds, url=url, **kwargs)

    @property
    def client(self) -> RedisCluster:
        """The cluster client, connected (the slot map read) on first use."""
        if self._cluster is None:
            with self._lock:
                if self._cluster is None:
                    self._cluster = self._connect()
        if self._refresh:
            with self._lock:
                if self._refresh:
                    self._cluster.nodes_manager.initialize()
                    self._refresh = False
        return self._cluster

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()

    def __repr__(self) -> str:
        return f"RedisClusterFeatureStore({self.url!r}, prefix={self.prefix!r})"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            with super()._guard():
                yield
        except FeatureStoreUnavailable:
            self._refresh = True
            raise
        except (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError, redis.exceptions.ClusterError,
                redis.exceptions.SlotNotCoveredError) as exc:
            self._refresh = True
            raise FeatureStoreUnavailable(f"feature store at {self.url}: {str(exc).splitlines()[0]}") from exc
        except redis.exceptions.RedisClusterException as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "not enabled" in message:  # a single server named as a cluster
                raise RecsysError(f"feature store at {self.url}: {message}; name a single server as "
                                  "redis://host:port") from None
            self._refresh = True
            raise FeatureStoreUnavailable(f"feature store at {self.url}: {message}") from exc

    # ---- one round trip per master ---------------------------------------------------------
    def _send(self, commands: Sequence[Command], slots: Sequence[int] | None = None) -> list[Any]:
        """Replies to ``commands`` (``(NAME, key, *args)``; ``slots``: their keys' slots, when known) in order:
        each master gets its commands in one write, and the replies are read after every write. Error replies
        come back as exceptions in the list, except MOVED and ASK: those commands are run again through
        redis-py, which follows the redirection."""
        client = self.client
        # The slot map itself rather than get_node_from_slot, whose deprecation wrapper costs ~20 µs a key.
        slot_map = client.nodes_manager.slots_cache
        if slots is None:
            slots = [key_slot(c[1].encode() if isinstance(c[1], str) else c[1]) for c in commands]
        groups: dict[str, tuple[Any, list[int]]] = {}
        for index, slot in enumerate(slots):
            serving = slot_map.get(slot)
            if not serving:
                raise redis.exceptions.SlotNotCoveredError(f"slot {slot} is not served by any node")
            groups.setdefault(serving[0].name, (serving[0], []))[1].append(index)
        replies: list[Any] = [None] * len(commands)
        open_connections: list[tuple[Any, Any, list[int]]] = []
        read = 0
        try:
            for node, indexes in groups.values():
                pool = client.get_redis_connection(node).connection_pool
                connection = pool.get_connection()
                open_connections.append((pool, connection, indexes))
                connection.send_packed_command([b"".join(_pack(commands[i]) for i in indexes)], check_health=False)
            for _, connection, indexes in open_connections:
                for i, reply in zip(indexes, _read_replies(connection, len(indexes)), strict=True):
                    replies[i] = reply
                read += 1
        finally:
            for position, (pool, connection, _) in enumerate(open_connections):
                if position >= read:  # written but not (fully) read: its replies would reach the next user
                    connection.disconnect()
                pool.release(connection)
        for i, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.AskError):  # MOVED or ASK: resharding
                self._refresh = True
                replies[i] = client.execute_command(*commands[i])
        return replies

    def _send_checked(self, commands: Sequence[Command], slots: Sequence[int] | None = None) -> list[Any]:
        replies = self._send(commands, slots)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _run_keyed(self, commands: Sequence[tuple[Any, ...]]) -> None:
        with self._guard():
            for start in range(0, len(commands), _WRITE_BATCH):
                self._send_checked(commands[start : start + _WRITE_BATCH])

    def _mset_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        """One MSET per slot (a command may not span slots), sent per master."""
        by_slot: dict[int, list[Any]] = {}
        for key, value in zip(keys, values, strict=True):
            by_slot.setdefault(key_slot(key.encode()), []).extend((key, value))
        self._run_keyed([("MSET", *pairs) for pairs in by_slot.values()])

    # ---- reads -----------------------------------------------------------------------------
    def ping(self) -> None:
        with self._guard():
            self.client.ping(target_nodes=RedisCluster.PRIMARIES)

    def _resolve(self, version: str | None, build: Callable[[str], tuple[list[Command], list[int]]],
                 missing: Callable[[list[Any]], bool]) -> tuple[str | None, str | None, list[Any] | None]:
        """(version read, active version, replies to ``build(version)``): from the active version, or the one
        named while it is readable; replies None when there is no such version (see the module docstring)."""
        with self._guard():
            for _ in range(_ATTEMPTS):
                wanted = version if version is not None else self._version_hint
                if wanted is None:
                    wanted = self.active_version()
                    self._version_hint = wanted
                    if wanted is None:
                        return None, None, None
                control: list[Command] = [("GET", self._active_key), ("HGET", self._versions_key, wanted)]
                data, data_slots = build(wanted)
                replies = self._send_checked([*control, *data], [self._control_slot] * len(control) + data_slots)
                active = None if replies[0] is None else _text(replies[0])
                self._version_hint = active
                if version is None and active != wanted:
                    if active is None:
                        return None, None, None
                    continue  # switched since the last read: read the new active version
                if active != wanted and _state(replies[1]) not in _READABLE:
                    return None, active, None  # named, and not committed or being deleted
                got = replies[len(control):]
                if missing(got):  # confirm no delete of it began before (or while) it was read
                    now_active, state = self._send_checked(control, [self._control_slot] * len(control))
                    if _state(state) not in _READABLE:
                        self._version_hint = None if now_active is None else _text(now_active)
                        if version is not None:
                            return None, self._version_hint, None
                        if self._version_hint is None:
                            return None, None, None
                        continue
                return wanted, active, got
        raise FeatureStoreUnavailable(f"feature store at {self.url}: the active version switched "
                                      f"{_ATTEMPTS} times during one read")

    def _read(self, suffixes: list[str], meta_field: str = "",
              version: str | None = None) -> tuple[str | None, str | None, Any, list[Any]]:
        groups: dict[int, list[int]] = {}  # slot → positions in ``suffixes``, in the version last built
        known_meta: list[Any] = [None]  # the embedding meta, when cached before the read

        def build(wanted: str) -> tuple[list[Command], list[int]]:
            """One MGET per slot of the version's keys (the slot depends on the whole key)."""
            base = f"{self.prefix}:{wanted}:"
            groups.clear()
            for position, suffix in enumerate(suffixes):
                groups.setdefault(key_slot(f"{base}{suffix}".encode()), []).append(position)
            commands: list[Command] = [("MGET", *[base + suffixes[p] for p in group]) for group in groups.values()]
            slots = list(groups)
            if meta_field:
                known_meta[0] = self._emb_meta.get((wanted, meta_field))
                if known_meta[0] is None:
                    key = base + "embmeta"
                    commands.append(("HGET", key, meta_field))
                    slots.append(key_slot(key.encode()))
            return commands, slots

        def missing(replies: list[Any]) -> bool:
            lists = replies[: len(groups)]
            return any(None in got for got in lists) or (bool(meta_field) and known_meta[0] is None
                                                          and replies[-1] is None)

        read, active, replies = self._resolve(version, build, missing)
        if read is None or replies is None:
            return None, active, None, [None] * len(suffixes)
        values: list[Any] = [None] * len(suffixes)
        for group, got in zip(groups.values(), replies, strict=False):
            for position, value in zip(group, got, strict=True):
                values[position] = value
        found_meta = known_meta[0]
        if meta_field and found_meta is None:
            found_meta = replies[-1]
            if found_meta is not None:  # embeddings of a version never change after its commit
                self._emb_meta[(read, meta_field)] = found_meta
        return read, active, found_meta, values

    def _list(self, suffix: str, stop: int, version: str | None) -> list[bytes]:
        def build(wanted: str) -> tuple[list[Command], list[int]]:
            key = f"{self.prefix}:{wanted}:{suffix}"
            return [("LRANGE", key, 0, stop)], [key_slot(key.encode())]

        read, _, replies = self._resolve(version, build, lambda replies: not replies[0])
        if read is None or replies is None:
            return []
        return [read.encode(), *replies[0]]

    # ---- online updates --------------------------------------------------------------------
    def _update_active(self, suffix: str, command: Callable[[str], None]) -> None:
        """Run ``command(key of suffix in the active version)`` until the version it wrote into is still active
        after the write; unlinks what went into a version being deleted."""
        with self._guard():
            for _ in range(_ATTEMPTS):
                version = self.active_version()
                if version is None:
                    raise RecsysError(f"feature store at {self.url} (prefix '{self.prefix}'): no active version")
                key = f"{self.prefix}:{version}:{suffix}"
                command(key)
                active, meta = self._send_checked([("GET", self._active_key),
                                                   ("HGET", self._versions_key, version)])
                if active is not None and _text(active) == version:
                    return
                if _state(meta) not in _READABLE:
                    self.client.unlink(key)
        raise FeatureStoreUnavailable(f"feature store at {self.url}: the active version switched "
                                      f"{_ATTEMPTS} times during one update")

    def put_user(self, user_id: str, record: bytes) -> None:
        self._update_active(f"u:{user_id}", lambda key: self.client.set(key, record))

    def put_item(self, item_id: str, record: bytes) -> None:
        self._update_active(f"i:{item_id}", lambda key: self.client.set(key, record))

    def add_seen(self, user_id: str, item_id: str) -> None:
        self._update_active(f"seen:{user_id}", lambda key: self._add_seen_key(
            client=self.client, keys=[key], args=[item_id, self.seen_cap]))

    # ---- versions --------------------------------------------------------------------------
    def _scan(self, pattern: str) -> Iterator[bytes]:
        """Every master's keys matching ``pattern``: SCAN runs per node."""
        for node in self.client.get_primaries():
            yield from self.client.scan_iter(match=pattern, count=_DELETE_BATCH, target_nodes=node)

    def _unlink(self, keys: list[bytes]) -> int:
        """One UNLINK per slot (a command may not span slots), sent per master."""
        by_slot: dict[int, list[bytes]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key), []).append(key)
        return sum(int(n) for n in self._send_checked([("UNLINK", *group) for group in by_slot.values()]))
