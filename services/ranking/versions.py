"""Which feature version a model reads: the active one when its records have the model's layout, else the newest
one that has.

``materialize`` records with each version the fingerprint of its records' layout (``codec.layout_fingerprint``:
features, transforms, tables, vocabularies) and every served model has one (``ServedModel.fingerprint``). A
model reads a version only when the two are equal: data materialised for another model under the same prefix
decodes into other users' and items' rows and scores plausible garbage.

``FeatureVersions`` remembers, per fingerprint, the version its models read and the active version that was
decided against (``settle``). While the active version matches, requests read it as before (one round trip);
when it does not, they ask the store for the newest matching version by name. Each switch of the active
version costs one look-up of the versions' meta (``store.versions()``), cached by name. A retired version stays
readable until the store collects it (``grace_seconds`` after it was retired, an hour by default); after that
the model has nothing to read and its requests answer 503 until a matching version is materialised or a model
matching the active one is loaded.

It also remembers the newest commit time it has seen active: an active version committed before that, or before
``store.activation_floor()``, means the store lost data (a server back from an old dump), which ``readiness``
reports as not ready.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from services.feature_store.store import LAYOUT_META, FeatureStore
from services.ranking.metrics import ServiceMetrics

log = logging.getLogger("recsys.ranking")

NO_VERSION = "no feature version is active in the feature store: run `recsys features materialize`"
_READABLE = ("active", "retired")
_CLOCK_SLACK = 0.002  # seconds: commit times are written rounded to the millisecond


class NoFeatureVersion(RuntimeError):
    """Nothing the model can read is materialised: 503."""


class IncompatibleVersion(NoFeatureVersion):
    """The active version was materialised for another record layout, and no version with the model's is left."""


@dataclass(frozen=True)
class VersionMeta:
    """What the service needs of a version's meta."""

    layout: str | None  # None: materialised before layouts were recorded; no model reads it
    committed_at: float | None
    state: str
    made_for: str  # the artifact it was materialised for, for messages

    @classmethod
    def parse(cls, meta: dict[str, str]) -> VersionMeta:
        try:
            committed = float(meta["committed_at"])
        except (KeyError, ValueError):
            committed = None
        return cls(meta.get(LAYOUT_META) or None, committed, meta.get("state", "unknown"),
                   meta.get("artifact_dir") or meta.get("artifact") or "an unknown artifact")


UNKNOWN = VersionMeta(None, None, "unknown", "an unknown artifact")


@dataclass(frozen=True)
class _Settled:
    active: str  # the active version this was decided against
    version: str | None  # the version to read; None: none has the layout


class FeatureVersions:
    """Per record-layout fingerprint, the feature version to read (see the module docstring). Thread-safe: the
    I/O threads and the event loop call it; a decision already made is two dict look-ups."""

    def __init__(self, store: FeatureStore, metrics: ServiceMetrics, current: str) -> None:
        self.store, self.metrics = store, metrics
        self._current = current  # the fingerprint of the model being served: the one the metrics describe
        self._lock = threading.Lock()
        self._meta: dict[str, VersionMeta] = {}
        self._settled: dict[str, _Settled] = {}
        self._newest: tuple[float, str] | None = None  # the newest (committed_at, version) seen active

    # ---- the request path -----------------------------------------------------------------------------
    def target(self, fingerprint: str) -> str | None:
        """The version to ask the store for by name; None: read the active one (it has the layout, or is unseen)."""
        settled = self._settled.get(fingerprint)
        return None if settled is None or settled.version == settled.active else settled.version

    def settle(self, fingerprint: str, active: str | None) -> str:
        """The version to read for models of ``fingerprint`` while ``active`` is the active version.

        Raises NoFeatureVersion when nothing is active, IncompatibleVersion when no readable version has the
        layout. A new active version is looked up once (under the lock); then this is two dict look-ups.
        """
        if active is None:
            raise NoFeatureVersion(NO_VERSION)
        settled = self._settled.get(fingerprint)
        if settled is None or settled.active != active:
            with self._lock:
                settled = self._settle(fingerprint, active)
        if settled.version is None:
            raise IncompatibleVersion(self._nothing_to_read(fingerprint, active))
        return settled.version

    def lost(self, fingerprint: str, version: str) -> NoReturn:
        """The store says ``version`` (asked for by name) is gone: nothing is left to read until the active
        version changes (or ``readiness`` finds another)."""
        with self._lock:
            self._meta.pop(version, None)
            settled = self._settled.get(fingerprint)
            if settled is not None and settled.version == version:
                self._settled[fingerprint] = _Settled(settled.active, None)
        if settled is None or settled.active == version:  # it was the active one: replaced and collected at once
            raise IncompatibleVersion(f"feature version {version} was replaced and collected during the request; "
                                      "retry")
        raise IncompatibleVersion(f"feature version {version} was collected: "
                                  f"{self._nothing_to_read(fingerprint, settled.active)}")

    def layout_of(self, version: str) -> str | None:
        """The record-layout fingerprint of ``version`` (None: not recorded, or no such version)."""
        with self._lock:
            return self._meta_of(version).layout

    def serving(self, fingerprint: str) -> None:
        """Models of ``fingerprint`` are served from now on (a reload or rollback): the metrics describe their reads."""
        with self._lock:
            self._current = fingerprint
            settled = self._settled.get(fingerprint)
            if settled is not None:
                meta = self._meta.get(settled.active, UNKNOWN)
                self.metrics.feature_versions(settled.active, meta.layout == fingerprint, settled.version)

    def reading(self, fingerprint: str) -> str | None:
        """The version models of ``fingerprint`` last read (None: not decided yet, or nothing to read)."""
        settled = self._settled.get(fingerprint)
        return None if settled is None else settled.version

    # ---- readiness ------------------------------------------------------------------------------------
    def readiness(self, fingerprint: str, active: str | None, versions: dict[str, dict[str, str]],
                  floor: float | None) -> tuple[bool, dict[str, Any]]:
        """(ready, details) from the store's state just read: a version with the model's layout is readable, and
        the active version is not older than the newest one seen active nor than the store's activation floor."""
        if active is None:
            return False, {"status": NO_VERSION}
        with self._lock:
            self._meta = {name: VersionMeta.parse(meta) for name, meta in versions.items()}
            settled = self._settle(fingerprint, active, fresh=True)
            meta = self._meta.get(active, UNKNOWN)
            newest = self._newest
        details: dict[str, Any] = {"feature_version": settled.version, "active_feature_version": active}
        if meta.layout != fingerprint:
            details["incompatible_feature_version"] = active
        if settled.version is None:
            return False, {**details, "status": self._nothing_to_read(fingerprint, active)}
        committed = meta.committed_at
        if committed is not None and newest is not None and committed < newest[0] - _CLOCK_SLACK:
            return False, {**details, "status": (
                f"the active feature version {active} (committed {_when(committed)}) is older than {newest[1]} "
                f"(committed {_when(newest[0])}), which this service saw active: the feature store lost data "
                f"(restored from an old dump?); materialise again, or activate {newest[1]} if it is still there")}
        if committed is not None and floor is not None and committed < floor - _CLOCK_SLACK:
            return False, {**details, "status": (
                f"the active feature version {active} (committed {_when(committed)}) is older than the last "
                f"activation the feature store recorded outside the server ({_when(floor)}): it lost data "
                "(restored from an old dump?); materialise again")}
        if settled.version != active:
            return True, {**details, "status": (
                f"ready, reading feature version {settled.version}: the active version {active} was materialised "
                f"for {meta.made_for}, whose records this model cannot read (layout "
                f"{meta.layout or 'not recorded'}, the model's {fingerprint})")}
        return True, {**details, "status": "ready"}

    # ---- under the lock -------------------------------------------------------------------------------
    def _settle(self, fingerprint: str, active: str, fresh: bool = False) -> _Settled:
        """``fresh``: the cache was just read from the store; use it, ask nothing more."""
        meta = self._meta.get(active, UNKNOWN) if fresh else self._meta_of(active)
        compatible = meta.layout == fingerprint
        if compatible:
            version: str | None = active
        else:
            version = self._newest_readable(fingerprint, fresh)
            before = self._settled.get(fingerprint)
            if before is None or before.active != active:
                log.warning("feature version %s was materialised for %s (layout %s), not for this model (layout "
                            "%s): reading %s instead", active, meta.made_for, meta.layout, fingerprint,
                            version or "nothing")
        settled = self._settled[fingerprint] = _Settled(active, version)
        if meta.committed_at is not None and (self._newest is None or meta.committed_at > self._newest[0]):
            self._newest = (meta.committed_at, active)
        if fingerprint == self._current:
            self.metrics.feature_versions(active, compatible, version)
        return settled

    def _meta_of(self, version: str) -> VersionMeta:
        """Cached; an unknown name refreshes the whole cache from the store (which also forgets collected ones)."""
        meta = self._meta.get(version)
        if meta is None:
            self._meta = {name: VersionMeta.parse(m) for name, m in self.store.versions().items()}
            meta = self._meta.get(version, UNKNOWN)
        return meta

    def _newest_readable(self, fingerprint: str, fresh: bool) -> str | None:
        if not fresh:  # which retired versions are still there: ask the store
            self._meta = {name: VersionMeta.parse(m) for name, m in self.store.versions().items()}
        matching = [(meta.committed_at or 0.0, name) for name, meta in self._meta.items()
                    if meta.layout == fingerprint and meta.state in _READABLE]
        return max(matching)[1] if matching else None

    def _nothing_to_read(self, fingerprint: str, active: str) -> str:
        meta = self._meta.get(active, UNKNOWN)
        return (f"the active feature version {active} was materialised for {meta.made_for}, whose records this "
                f"model cannot read (layout {meta.layout or 'not recorded'}, the model's {fingerprint}), and no "
                "version materialised for this model is left: materialise features for it, or reload a model "
                "that reads these")


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
