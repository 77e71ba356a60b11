"""The Redis FeatureStore: versioned records, every read one round trip from one version.

Key layout (``P`` = prefix, default ``recsys``; ``V`` = a version name)::

    P:active                 string   name of the active version (absent: nothing materialised)
    P:versions               hash     V → JSON meta: state (writing|active|retired|deleting),
                                      started_at, updated_at, committed_at, retired_at (unix
                                      seconds) and what the writer adds (users, items, artifact
                                      version, data dir, ...)
    P:V:u:{user_id}          string   user record (``codec.RecordCodec`` bytes)
    P:V:i:{item_id}          string   item record
    P:V:pop                  list     item ids, most popular first
    P:V:seen:{user_id}       list     item ids the user interacted with, newest first, capped
    P:V:emb:{entity}:{id}    string   embedding: float32[d], or float32 scale + int8[d]
    P:V:embmeta              hash     entity → "float32:d" | "int8:d"

Every read is one round trip that reads ``P:active`` and the records atomically, so no
reply mixes two versions. The store remembers the version its last read found active
and reads with one MGET of ``P:active`` plus that version's keys; when ``P:active``
names another version (once per switch), it runs a Lua script (EVALSHA; redis-py
reloads it after a server restart) that GETs ``P:active`` and MGETs the new
version's keys in one atomic step. The plain MGET costs the server ~40 µs for 500
items against ~250 µs for the script. A read of a version named (``version=``) is the
same MGET while that version is the active one, else the script, which first checks
the version is committed and not collected. Scripts build key names from the version, so
this works on one Redis server (or a replica); ``redis_cluster_store`` is the same store
on Redis Cluster (``redis+cluster://`` URLs, which ``from_url`` hands to it).

A writer fills ``P:V:*`` with non-transactional pipelines: readers never see it until
``commit`` sets ``P:active`` and retires the previous version in one script. Retired
versions stay readable by name for ``grace_seconds`` (a rollback is ``activate``),
then ``gc`` (run at every begin and commit) deletes them with SCAN + UNLINK. A writer
that dies without ``abort`` is collected once it has been silent for
``max(grace_seconds, ABANDONED_SECONDS)``.

Connection failures (refused, reset, timed out, server loading its dump) raise
``FeatureStoreUnavailable`` naming the URL without its password. Timeouts are short and
never retried; a dropped connection is retried once on a fresh one, so the first call
after a server restart succeeds on the same store object. The URL's user and password
are sent with AUTH (the embedded server's ACL user ``recsys`` may run data commands,
scripts, SCAN/UNLINK, INFO and CLIENT SETNAME, nothing administrative); no log line or
error shows the password (``redact_url``).

Each successful ``activate`` (and so each ``commit``) also records the version and its
``committed_at`` in a small JSON file outside Redis, by default
``STATE/activations/<sha1 of server and prefix>.json`` under ``$RECSYS_HOME``, only ever
moving forward. ``activation_floor`` reads it back: a server that lost writes (restarted
from an old dump) serves a version committed before the floor, and the ranking service
then refuses to call itself ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from recsys.errors import RecsysError
from recsys.system import write_atomic
from services.feature_store.store import (
    ABANDONED_SECONDS,
    FeatureStore,
    FeatureStoreUnavailable,
    Fetched,
    VersionWriter,
)

log = logging.getLogger("recsys.feature_store")

_WRITE_BATCH = 2000  # keys per MSET
_PIPELINE_KEYS = 20_000  # keys per pipeline round trip
_HEARTBEAT_SECONDS = 10.0
_DELETE_BATCH = 5000  # keys per SCAN step and per UNLINK when a version is deleted
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.\-:]{1,64}$")

# The version a read script reads, shared by the scripts below: KEYS[1] active, KEYS[2] versions; ``wanted`` ''
# asks for the active one, else a version by name, readable while committed (active or retired). Returns (the
# version, or nil when nothing is active or the one asked for is not readable; the active version or false).
_RESOLVE = """
local function resolve(wanted)
  local active = redis.call('GET', KEYS[1])
  if wanted == '' then return active or nil, active or false end
  if wanted ~= active then
    local raw = redis.call('HGET', KEYS[2], wanted)
    local state = raw and cjson.decode(raw)['state']
    if state ~= 'active' and state ~= 'retired' then return nil, active or false end
  end
  return wanted, active or false
end
"""

# ARGV: prefix, embmeta field ('' for none), version ('' for the active one), key suffixes... → {} when nothing is
# active and no version is asked for; else {version, meta, active, values of P:V:<suffix> in ARGV order...},
# version false when the one asked for is not readable, active false when none is active.
_READ = _RESOLVE + """
local v, active = resolve(ARGV[3])
if not v then
  if ARGV[3] == '' then return {} end
  return {false, false, active}
end
local base = ARGV[1] .. ':' .. v .. ':'
local out, m = {v, false, active}, 3
if ARGV[2] ~= '' then out[2] = redis.call('HGET', base .. 'embmeta', ARGV[2]) end
local keys, n = {}, 0
for i = 4, #ARGV do n = n + 1; keys[n] = base .. ARGV[i] end
for s = 1, n, 4000 do
  local got = redis.call('MGET', unpack(keys, s, math.min(s + 3999, n)))
  for j = 1, #got do m = m + 1; out[m] = got[j] end
end
return out
"""

# ARGV: prefix, suffix, stop, version ('' for the active one) →
# {version, list items...}, or {} when nothing is active or the version asked for is not readable.
_LRANGE = _RESOLVE + """
local v = resolve(ARGV[4])
if not v then return {} end
local got = redis.call('LRANGE', ARGV[1] .. ':' .. v .. ':' .. ARGV[2], 0, tonumber(ARGV[3]))
table.insert(got, 1, v)
return got
"""

# KEYS[1] active; ARGV: prefix, infix, id, value → version.
_SET = """
local v = redis.call('GET', KEYS[1])
if not v then return redis.error_reply('NOACTIVE no active version') end
redis.call('SET', ARGV[1] .. ':' .. v .. ':' .. ARGV[2] .. ':' .. ARGV[3], ARGV[4])
return v
"""

# KEYS[1] active; ARGV: prefix, user_id, item_id, cap → version.
_ADD_SEEN = """
local v = redis.call('GET', KEYS[1])
if not v then return redis.error_reply('NOACTIVE no active version') end
local key = ARGV[1] .. ':' .. v .. ':seen:' .. ARGV[2]
redis.call('LREM', key, 0, ARGV[3])
redis.call('LPUSH', key, ARGV[3])
redis.call('LTRIM', key, 0, tonumber(ARGV[4]) - 1)
return v
"""

# KEYS[1] active, KEYS[2] versions; ARGV: version, meta patch (JSON), now → previous active or nil.
_ACTIVATE = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return redis.error_reply('NOVERSION version ' .. ARGV[1] .. ' does not exist (aborted or collected)') end
local meta = cjson.decode(raw)
if meta['state'] == 'deleting' then return redis.error_reply('NOVERSION version ' .. ARGV[1] .. ' is being deleted') end
for k, val in pairs(cjson.decode(ARGV[2])) do meta[k] = val end
meta['state'] = 'active'
meta['committed_at'] = ARGV[3]
meta['retired_at'] = nil
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(meta))
if old and old ~= ARGV[1] then
  local o = redis.call('HGET', KEYS[2], old)
  local om = {}
  if o then om = cjson.decode(o) end
  om['state'] = 'retired'
  om['retired_at'] = ARGV[3]
  redis.call('HSET', KEYS[2], old, cjson.encode(om))
end
return old
"""

# KEYS[1] active, KEYS[2] versions; ARGV: version, state, now → 1, or an error if it is active or gone.
# state 'deleting' marks a version for deletion (refused for the active one); 'writing' is a heartbeat.
_MARK = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return redis.error_reply('NOVERSION version ' .. ARGV[1] .. ' does not exist (aborted or collected)') end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.error_reply('ACTIVE version ' .. ARGV[1] .. ' is active') end
local meta = cjson.decode(raw)
if ARGV[2] == 'writing' and meta['state'] ~= 'writing' then
  return redis.error_reply('NOVERSION version ' .. ARGV[1] .. ' is ' .. tostring(meta['state']) .. ', not being written')
end
meta['state'] = ARGV[2]
meta['updated_at'] = ARGV[3]
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(meta))
return 1
"""


def redact_url(url: str) -> str:
    """The URL without password and query: safe for logs and error messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
    except ValueError:
        return "<unparseable redis url>"
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


def _server_identity(url: str) -> str:
    """The server and database a URL names, without user or password: ``redis://host:port/db``."""
    parts = urlsplit(redact_url(url))
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}/{parts.path.strip('/') or '0'}"


def activation_file_for(url: str, prefix: str) -> Path:
    """Where a store on ``url`` under ``prefix`` records its activations: ``STATE/activations/<sha1>.json``."""
    from services.feature_store.embedded import state_dir

    key = hashlib.sha1(f"{_server_identity(url)} {prefix}".encode(), usedforsecurity=False).hexdigest()
    return state_dir() / "activations" / f"{key}.json"


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _now() -> float:
    return time.time()


def _stamp(t: float | None = None) -> str:
    """Unix seconds with millisecond precision, rounded down (so a grace of 0 has expired at once)."""
    return f"{math.floor((_now() if t is None else t) * 1000) / 1000:.3f}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def pack_embeddings(vectors: np.ndarray, dtype: str) -> list[bytes]:
    """(n, d) → one value per row: float32[d], or (int8) a float32 scale then int8[d] (symmetric, per row)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise RecsysError(f"embeddings: expected an (n, d) array, got shape {vectors.shape}")
    if dtype == "float32":
        raw = vectors.astype("<f4")
    elif dtype == "int8":
        scale = np.abs(vectors).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
        raw = np.concatenate([scale.astype("<f4")[:, None].view(np.uint8), quantized.view(np.uint8)], axis=1)
    else:
        raise RecsysError(f"embeddings: dtype must be 'float32' or 'int8', not '{dtype}'")
    flat, width = np.ascontiguousarray(raw).tobytes(), raw.nbytes // max(len(raw), 1)
    return [flat[i * width : (i + 1) * width] for i in range(len(raw))]


def unpack_embedding(blob: bytes, meta: str) -> np.ndarray:
    """The inverse of ``pack_embeddings`` for one value; ``meta`` is ``"float32:d"`` or ``"int8:d"``."""
    if meta.startswith("int8:"):
        scale = np.frombuffer(blob, "<f4", 1)[0]
        return np.frombuffer(blob, np.int8, offset=4).astype(np.float32) * scale
    return np.frombuffer(blob, "<f4").copy()


class RedisFeatureStore(FeatureStore):
    """``FeatureStore`` on one Redis server (see the module docstring for the key layout)."""

    def __init__(self, client: redis.Redis, prefix: str = "recsys", grace_seconds: float = 3600.0,
                 seen_cap: int = 200, url: str | None = None, activation_file: Path | None = None) -> None:
        """``activation_file``: where ``activate`` records the newest activation (``activation_floor``); None
        records nothing (``from_url`` picks one under the state directory)."""
        if not _PREFIX.match(prefix):
            raise RecsysError(f"feature store prefix '{prefix}': use letters, digits, '_', '.', '-', ':'")
        self._client, self.prefix, self.grace_seconds, self.seen_cap = client, prefix, grace_seconds, seen_cap
        self.url = redact_url(url) if url else self._describe(client)
        self.activation_file = activation_file
        self._active_key, self._versions_key = self._control_keys(prefix)
        # Unbound (run with ``client=``): a store may connect lazily (Redis Cluster); the SHA is the script's.
        self._read_script, self._lrange, self._set, self._add_seen, self._activate, self._mark = (
            Script(None, text.encode()) for text in (_READ, _LRANGE, _SET, _ADD_SEEN, _ACTIVATE, _MARK))
        # The version the last read found active. Reads first try one plain MGET of P:active and
        # that version's keys (atomic, and 5x cheaper on the server than the Lua script); when P:active
        # has moved on, they run the script, which reads the new version and updates the hint.
        self._version_hint: str | None = None
        self._emb_meta: dict[tuple[str | None, str], bytes] = {}

    @staticmethod
    def _control_keys(prefix: str) -> tuple[str, str]:
        """The keys of the active version's name and of the versions' metadata."""
        return f"{prefix}:active", f"{prefix}:versions"

    @property
    def client(self) -> Any:
        """The redis-py client (``redis.Redis`` here, ``RedisCluster`` in the cluster store)."""
        return self._client

    @classmethod
    def from_url(cls, url: str, prefix: str = "recsys", grace_seconds: float = 3600.0, *,
                 connect_timeout: float = 1.0, timeout: float = 2.0, **kwargs: Any) -> RedisFeatureStore:
        """``redis://[[user]:password@]host:port/db``, ``rediss://`` (TLS) or ``unix://``; bytes in and out.
        ``redis+cluster://`` and ``rediss+cluster://`` name any node of a Redis Cluster: the store is then a
        ``RedisClusterFeatureStore`` (``redis_cluster_store``).

        ``kwargs`` go to the constructor; ``activation_file`` defaults to ``activation_file_for(url, prefix)``
        (pass None to record no activations).
        """
        from services.feature_store.embedded import CLIENT_USER, client_name

        if urlsplit(url).scheme.endswith("+cluster"):
            from services.feature_store.redis_cluster_store import RedisClusterFeatureStore

            return RedisClusterFeatureStore.from_url(url, prefix, grace_seconds, connect_timeout=connect_timeout,
                                                     timeout=timeout, **kwargs)
        try:
            parts = urlsplit(url)
            # Named connections let the embedded server's starter see who else uses it; only on loopback as
            # no user or the embedded server's own, as CLIENT SETNAME may be denied to a production ACL user.
            local = parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.username in (None, "", CLIENT_USER)
            client = redis.Redis.from_url(
                url, socket_connect_timeout=connect_timeout, socket_timeout=timeout, retry_on_timeout=False,
                # One immediate retry on a fresh connection for a dropped one (server restarted, idle
                # connection closed); none for timeouts: a dead or hung server fails fast.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                decode_responses=False, client_name=client_name() if local else None,
            )
        except ValueError as exc:
            raise RecsysError(f"REDIS_URL {redact_url(url)}: {exc}") from None
        kwargs.setdefault("activation_file", activation_file_for(url, prefix))
        return cls(client, prefix=prefix, grace_seconds=grace_seconds, url=url, **kwargs)

    @staticmethod
    def _describe(client: redis.Redis) -> str:
        kw = client.connection_pool.connection_kwargs
        if "path" in kw:
            return f"unix://{kw['path']}"
        return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisFeatureStore({self.url!r}, prefix={self.prefix!r})"

    # ---- errors --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # BusyLoadingError is a ConnectionError
            raise FeatureStoreUnavailable(f"feature store at {self.url}: {self._reason(exc)}") from exc
        except (redis.exceptions.AskError, redis.exceptions.ClusterCrossSlotError) as exc:  # MOVED is an AskError
            raise RecsysError(f"feature store at {self.url}: the server is a Redis Cluster node "
                              f"({type(exc).__name__}: {exc}); name it as redis+cluster://host:port") from None
        except redis.ResponseError as exc:
            message = str(exc)
            if message.startswith(("NOACTIVE", "NOVERSION", "ACTIVE")):
                raise RecsysError(f"feature store at {self.url} (prefix '{self.prefix}'): "
                                  f"{message.split(' ', 1)[1]}") from None
            raise

    @staticmethod
    def _reason(exc: Exception) -> str:
        if isinstance(exc, redis.BusyLoadingError):
            return "server is loading its data, retry shortly"
        if isinstance(exc, redis.TimeoutError):
            return f"timed out ({exc})"
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    # ---- reads ---------------------------------------------------------------------------
    def ping(self) -> None:
        with self._guard():
            self.client.ping()

    def active_version(self) -> str | None:
        with self._guard():
            value = self.client.get(self._active_key)
        return None if value is None else _text(value)

    def fetch(self, user_id: str | None, item_ids: Sequence[str], version: str | None = None) -> Fetched:
        suffixes = [f"i:{i}" for i in item_ids]
        if user_id is None:
            read, active, _, items = self._read(suffixes, version=version)
            return Fetched(read, None, items, active)
        read, active, _, values = self._read([f"u:{user_id}", *suffixes], version=version)
        return Fetched(read, values[0], values[1:], active)

    def _read(self, suffixes: list[str], meta_field: str = "",
              version: str | None = None) -> tuple[str | None, str | None, Any, list[Any]]:
        """(version read, active version, its ``embmeta`` field, values) of keys ``P:V:<suffix>``, one round trip,
        from the active version or the one named (see ``_READ``).

        The common case is one plain MGET of ``P:active`` and the keys of the version the last read found
        active (asked for or not); otherwise, or when ``P:active`` has moved on, the Lua script reads (a version
        named only while it is still readable) and updates the hint.
        """
        wanted = self._version_hint if version is None else version
        meta = self._emb_meta.get((wanted, meta_field)) if meta_field else None
        if wanted is not None and wanted == self._version_hint and (meta is not None or not meta_field):
            base = f"{self.prefix}:{wanted}:"
            with self._guard():
                reply = self.client.mget([self._active_key, *(base + suffix for suffix in suffixes)])
            if reply[0] is not None and _text(reply[0]) == wanted:
                return wanted, wanted, meta, reply[1:]
        with self._guard():
            reply = self._read_script(client=self.client, keys=[self._active_key, self._versions_key],
                                      args=[self.prefix, meta_field, version or "", *suffixes])
        if not reply:
            self._version_hint = None
            return None, None, None, [None] * len(suffixes)
        read, active = (None if x is None else _text(x) for x in (reply[0], reply[2]))
        self._version_hint = active
        if read is None:
            return None, active, None, [None] * len(suffixes)
        if meta_field and reply[1] is not None:  # embeddings of a version never change after its commit
            self._emb_meta[(read, meta_field)] = reply[1]
        return read, active, reply[1], reply[3:]

    def _read_many(self, infix: str, ids: Sequence[str], meta_field: str = "") -> tuple[str | None, Any, list[Any]]:
        read, _, meta, values = self._read([f"{infix}:{i}" for i in ids], meta_field)
        return read, meta, values

    def get_users(self, ids: Sequence[str]) -> list[bytes | None]:
        return self._read_many("u", ids)[2]

    def get_items(self, ids: Sequence[str]) -> list[bytes | None]:
        return self._read_many("i", ids)[2]

    def get_embeddings(self, entity: str, ids: Sequence[str]) -> list[np.ndarray | None]:
        _, meta, blobs = self._read_many(f"emb:{entity}", ids, meta_field=entity)
        if meta is None:
            return [None] * len(ids)
        meta = _text(meta)
        return [None if b is None else unpack_embedding(b, meta) for b in blobs]

    def popular(self, k: int, version: str | None = None) -> tuple[str | None, list[str]]:
        if k <= 0:
            return version or self.active_version(), []
        reply = self._list("pop", k - 1, version)
        if not reply:
            return None, []
        return _text(reply[0]), [_text(x) for x in reply[1:]]

    def seen(self, user_id: str, version: str | None = None) -> list[str]:
        return [_text(x) for x in self._list(f"seen:{user_id}", -1, version)[1:]]

    def _list(self, suffix: str, stop: int, version: str | None) -> list[bytes]:
        with self._guard():
            return self._lrange(client=self.client, keys=[self._active_key, self._versions_key],
                                args=[self.prefix, suffix, stop, version or ""])

    def versions(self) -> dict[str, dict[str, str]]:
        with self._guard():
            raw = self.client.hgetall(self._versions_key)
        out = {}
        for name, meta in raw.items():
            try:
                decoded = json.loads(meta)
            except ValueError:
                decoded = {"state": "unreadable"}
            out[_text(name)] = {str(k): str(v) for k, v in decoded.items()}
        return dict(sorted(out.items(), key=lambda kv: kv[1].get("started_at", "")))

    # ---- online updates ------------------------------------------------------------------
    def put_user(self, user_id: str, record: bytes) -> None:
        with self._guard():
            self._set(client=self.client, keys=[self._active_key], args=[self.prefix, "u", user_id, record])

    def put_item(self, item_id: str, record: bytes) -> None:
        with self._guard():
            self._set(client=self.client, keys=[self._active_key], args=[self.prefix, "i", item_id, record])

    def add_seen(self, user_id: str, item_id: str) -> None:
        with self._guard():
            self._add_seen(client=self.client, keys=[self._active_key],
                           args=[self.prefix, user_id, item_id, self.seen_cap])

    # ---- batched writes ------------------------------------------------------------------
    def _run_keyed(self, commands: Sequence[tuple[Any, ...]]) -> None:
        """Run ``(NAME, key, *args)`` commands, in order for each key, in pipelines of about ``_PIPELINE_KEYS``
        arguments; raises the first error."""
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            queued = 0
            for command in commands:
                pipe.execute_command(*command)
                queued += len(command) - 1
                if queued >= _PIPELINE_KEYS:
                    pipe.execute()
                    queued = 0
            if queued:
                pipe.execute()

    def _mset_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        """SET every key to its value (MSETs of ``_WRITE_BATCH`` keys)."""
        self._run_keyed([("MSET", *itertools.chain.from_iterable(zip(keys[start : start + _WRITE_BATCH],
                                                                     values[start : start + _WRITE_BATCH],
                                                                     strict=True)))
                         for start in range(0, len(keys), _WRITE_BATCH)])

    # ---- versions ------------------------------------------------------------------------
    def begin_version(self, name: str | None = None) -> RedisVersionWriter:
        if name is None:
            name = datetime.now(UTC).strftime("v%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        if not _NAME.match(name):
            raise RecsysError(f"version name '{name}': use 1-64 letters, digits, '_', '.', '-'")
        self.gc()
        now = _stamp()
        meta = json.dumps({"state": "writing", "started_at": now, "updated_at": now})
        with self._guard():
            if not self.client.hsetnx(self._versions_key, name, meta):
                raise RecsysError(f"feature store at {self.url}: version '{name}' already exists")
        return RedisVersionWriter(self, name)

    def activate(self, version: str, meta: dict[str, str] | None = None) -> str | None:
        patch = json.dumps({str(k): str(v) for k, v in (meta or {}).items()})
        committed_at = _stamp()
        with self._guard():
            old = self._activate(client=self.client, keys=[self._active_key, self._versions_key],
                                 args=[version, patch, committed_at])
        log.info("feature store: version %s is active (was %s)", version, _text(old) if old else "none")
        self._record_activation(version, float(committed_at))
        return None if old is None else _text(old)

    def _record_activation(self, version: str, committed_at: float) -> None:
        """Move the floor up to this activation (never down: another process may have recorded a later one)."""
        path = self.activation_file
        if path is None:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # One lock for the folder: read, compare and replace must not interleave with another writer's.
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                floor = self.activation_floor()
                if floor is not None and floor >= committed_at:
                    return
                write_atomic(path, json.dumps({"server": _server_identity(self.url), "prefix": self.prefix,
                                               "version": version, "committed_at": committed_at}) + "\n")
            finally:
                os.close(fd)  # releases the lock
        except OSError as exc:  # the activation stands; only the guard against lost writes is weaker
            log.warning("feature store: cannot record the activation of %s in %s (%s); a server that loses "
                        "it will not be noticed", version, path, exc.strerror or exc)

    def activation_floor(self) -> float | None:
        """``committed_at`` of the newest activation recorded for this server and prefix, or None."""
        path = self.activation_file
        if path is None:
            return None
        try:
            return float(json.loads(path.read_text())["committed_at"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("feature store: %s is unreadable (%s); no activation floor", path, exc)
            return None

    def delete_version(self, version: str) -> int:
        """Delete every key of a version that is not active; returns the number of keys removed (SCAN + UNLINK)."""
        with self._guard():
            self._mark(client=self.client, keys=[self._active_key, self._versions_key],
                       args=[version, "deleting", _stamp()])
            pattern = f"{_glob_escape(self.prefix)}:{_glob_escape(version)}:*"
            removed, batch = 0, []
            for key in self._scan(pattern):
                batch.append(key)
                if len(batch) >= _DELETE_BATCH:
                    removed += self._unlink(batch)
                    batch = []
            if batch:
                removed += self._unlink(batch)
            self.client.hdel(self._versions_key, version)
        return removed

    def _scan(self, pattern: str) -> Iterator[bytes]:
        """Every key matching the glob ``pattern`` (SCAN)."""
        return self.client.scan_iter(match=pattern, count=_DELETE_BATCH)

    def _unlink(self, keys: list[bytes]) -> int:
        return int(self.client.unlink(*keys))

    def gc(self, now: float | None = None) -> list[str]:
        now = _now() if now is None else now
        active = self.active_version()
        collected = []
        for name, meta in self.versions().items():
            if name == active:
                continue
            state = meta.get("state")
            try:
                if state == "retired":
                    expired = now - float(meta.get("retired_at", 0)) >= self.grace_seconds
                elif state in ("writing", "deleting"):
                    expired = now - float(meta.get("updated_at", 0)) >= max(self.grace_seconds, ABANDONED_SECONDS)
                else:
                    expired = False
            except ValueError:
                expired = False
            if expired:
                try:
                    removed = self.delete_version(name)
                except RecsysError:  # activated or deleted meanwhile by another process
                    continue
                log.info("feature store: collected %s version %s (%d keys)", state, name, removed)
                collected.append(name)
        return collected


class RedisVersionWriter(VersionWriter):
    """Writes one version with non-transactional pipelines; invisible to readers until ``commit``."""

    def __init__(self, store: RedisFeatureStore, version: str) -> None:
        self.store, self.version = store, version
        self.counts = {"users": 0, "items": 0, "popular": 0, "seen": 0}
        self._base = f"{store.prefix}:{version}"
        self._last_beat = time.monotonic()
        self._done = False

    def _heartbeat(self) -> None:
        if time.monotonic() - self._last_beat < _HEARTBEAT_SECONDS:
            return
        self._last_beat = time.monotonic()
        store = self.store
        with store._guard():
            store._mark(client=store.client, keys=[store._active_key, store._versions_key],
                        args=[self.version, "writing", _stamp()])

    def _check_open(self) -> None:
        if self._done:
            raise RecsysError(f"version {self.version} is already committed or aborted")

    def _mset(self, infix: str, ids: Sequence[str], values: Sequence[bytes]) -> None:
        self._check_open()
        if len(ids) != len(values):
            raise RecsysError(f"{infix}: {len(ids)} ids but {len(values)} values")
        self._heartbeat()
        prefix = f"{self._base}:{infix}:"
        self.store._mset_many([prefix + str(i) for i in ids], values)

    def put_users(self, ids: Sequence[str], records: Sequence[bytes]) -> None:
        self._mset("u", ids, records)
        self.counts["users"] += len(ids)

    def put_items(self, ids: Sequence[str], records: Sequence[bytes]) -> None:
        self._mset("i", ids, records)
        self.counts["items"] += len(ids)

    def put_popular(self, item_ids: Sequence[str]) -> None:
        self._check_open()
        key = f"{self._base}:pop"
        self.store._run_keyed([("DEL", key), *(("RPUSH", key, *item_ids[start : start + _WRITE_BATCH])
                                               for start in range(0, len(item_ids), _WRITE_BATCH))])
        self.counts["popular"] = len(item_ids)

    def put_seen(self, user_ids: Sequence[str], item_ids: Sequence[Sequence[str]]) -> None:
        self._check_open()
        if len(user_ids) != len(item_ids):
            raise RecsysError(f"seen: {len(user_ids)} users but {len(item_ids)} item lists")
        self._heartbeat()
        commands: list[tuple[Any, ...]] = []
        for user, items in zip(user_ids, item_ids, strict=True):
            key = f"{self._base}:seen:{user}"
            commands.append(("DEL", key))
            if len(items):
                commands.append(("RPUSH", key, *items))
        self.store._run_keyed(commands)
        self.counts["seen"] += len(user_ids)

    def put_embeddings(self, entity: str, ids: Sequence[str], vectors: np.ndarray, dtype: str = "float32") -> None:
        self._check_open()
        values = pack_embeddings(vectors, dtype)
        self._mset(f"emb:{entity}", ids, values)
        with self.store._guard():
            self.store.client.hset(f"{self._base}:embmeta", entity, f"{dtype}:{np.shape(vectors)[1]}")

    def commit(self, meta: dict[str, str] | None = None) -> None:
        self._check_open()
        full = {**{k: str(v) for k, v in self.counts.items()}, **{str(k): str(v) for k, v in (meta or {}).items()}}
        self.store.activate(self.version, full)
        self._done = True
        try:
            self.store.gc()
        except (FeatureStoreUnavailable, RecsysError) as exc:  # the commit stands; the next gc retries
            log.warning("feature store: collecting old versions failed: %s", exc)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        removed = self.store.delete_version(self.version)
        log.info("feature store: aborted version %s (%d keys removed)", self.version, removed)
