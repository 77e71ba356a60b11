"""The FeatureStore interface: what materialisation writes and the ranking service reads.

Records are the packed bytes of ``codec.RecordCodec``; the store never interprets
them. Data lives in versions: a writer fills a new version while readers keep reading
the active one, then ``commit`` makes it active in one atomic step. Every read
returns the version it was served from, so a caller can prove no response mixes two.

A reader can also ask for one version by name (``version=``): a retired version stays
readable until it is collected (``grace_seconds`` after it was retired, in Redis). The
ranking service reads that way when the active version was materialised for another
model (its ``layout`` meta, ``codec.layout_fingerprint``, differs from the model's).
Redis (``redis_store.RedisFeatureStore``) and Redis Cluster (``redis_cluster_store``) implement it; any other
must pass ``tests/services/feature_store/test_fs_contract.py`` (add its factory to ``IMPLEMENTATIONS`` in that
folder's ``conftest.py``). The
interface holds everything the services, materialisation and the CLI call, so none of them needs to know
which implementation it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class FeatureStoreUnavailable(RuntimeError):
    """The backing server cannot be reached; the service answers 503 and retries on the next request."""


ABANDONED_SECONDS = 600.0  # a writer silent this long (and longer than the grace period) is collected by gc
LAYOUT_META = "layout"  # version meta: codec.layout_fingerprint of the records (set by materialize)


@dataclass
class Fetched:
    """One request's features, read in one round trip from one version."""

    version: str | None  # None: nothing materialised yet, or the version asked for no longer exists
    user: bytes | None  # None: unknown user
    items: list[bytes | None]  # None: unknown item, in request order
    active: str | None = None  # the active version at the time of the read (the one read, unless another was asked)


class VersionWriter(ABC):
    """Fills one new, invisible version; ``commit`` switches readers to it atomically."""

    version: str

    @abstractmethod
    def put_users(self, ids: Sequence[str], records: Sequence[bytes]) -> None: ...

    @abstractmethod
    def put_items(self, ids: Sequence[str], records: Sequence[bytes]) -> None: ...

    @abstractmethod
    def put_popular(self, item_ids: Sequence[str]) -> None:
        """Items by descending popularity: the candidates of ``/v1/recommend`` until retrieval exists."""

    @abstractmethod
    def put_seen(self, user_ids: Sequence[str], item_ids: Sequence[Sequence[str]]) -> None:
        """Items each user has interacted with (newest first, capped), excluded from recommendations."""

    @abstractmethod
    def put_embeddings(self, entity: str, ids: Sequence[str], vectors: np.ndarray, dtype: str = "float32") -> None:
        """(n, d) vectors packed as float32, or int8 with a per-vector float32 scale."""

    @abstractmethod
    def commit(self, meta: dict[str, str] | None = None) -> None:
        """Make this version the active one; older versions expire after the grace period."""

    @abstractmethod
    def abort(self) -> None:
        """Drop everything written; the active version is untouched."""


class FeatureStore(ABC):
    """Versioned user and item records; every read from one version (see the module docstring)."""

    url: str  # where the store is, without credentials: safe for logs and error messages

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store is not used afterwards."""

    @abstractmethod
    def ping(self) -> None:
        """Raise FeatureStoreUnavailable unless the server answers."""

    @abstractmethod
    def active_version(self) -> str | None: ...

    @abstractmethod
    def fetch(self, user_id: str | None, item_ids: Sequence[str], version: str | None = None) -> Fetched:
        """The user's and the items' records from the active version (or ``version``), in one round trip.

        With ``version``: ``Fetched.version`` is None (and every record None) when that version no longer exists
        or is not committed; ``Fetched.active`` names the active one either way.
        """

    @abstractmethod
    def get_users(self, ids: Sequence[str]) -> list[bytes | None]: ...

    @abstractmethod
    def get_items(self, ids: Sequence[str]) -> list[bytes | None]: ...

    @abstractmethod
    def popular(self, k: int, version: str | None = None) -> tuple[str | None, list[str]]:
        """(version, the k most popular item ids) of the active version or ``version`` (None, []: no such version)."""

    @abstractmethod
    def seen(self, user_id: str, version: str | None = None) -> list[str]: ...

    @abstractmethod
    def get_embeddings(self, entity: str, ids: Sequence[str]) -> list[np.ndarray | None]: ...

    @abstractmethod
    def begin_version(self, name: str | None = None) -> VersionWriter: ...

    @abstractmethod
    def put_user(self, user_id: str, record: bytes) -> None:
        """Overwrite one user's record in the active version (an online update)."""

    @abstractmethod
    def put_item(self, item_id: str, record: bytes) -> None: ...

    @abstractmethod
    def add_seen(self, user_id: str, item_id: str) -> None: ...

    @abstractmethod
    def versions(self) -> dict[str, dict[str, str]]:
        """Known versions and their metadata: ``state`` (writing, active, retired), committed-at, what the
        writer added (rows, artifact)."""

    @abstractmethod
    def activate(self, version: str, meta: dict[str, str] | None = None) -> str | None:
        """Make ``version`` (being written, or retired and not yet collected) active, merging ``meta`` into its
        metadata; returns the previously active version. A rollback is ``activate`` of a retired version."""

    @abstractmethod
    def delete_version(self, version: str) -> int:
        """Delete a version that is not active (RecsysError for the active one); returns how much was removed."""

    @abstractmethod
    def gc(self, now: float | None = None) -> list[str]:
        """Delete versions retired ``grace_seconds`` before ``now`` and writers silent for
        ``max(grace_seconds, ABANDONED_SECONDS)``; returns their names."""

    def activation_floor(self) -> float | None:
        """Commit time (unix seconds) of the newest version this store is known to have made active, as recorded
        outside the server, so that it survives the server losing data; None when nothing records it.

        A reader whose active version was committed before it is looking at lost data (a server that came back
        from an old dump) and must not call itself ready.
        """
        return None
