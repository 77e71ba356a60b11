"""Top-N items for a user from a retriever artifact and its ANN index: the ranking service's candidate source.

Per request::

    fetch    the user's record and seen list from the retriever's feature namespace (the version materialised
             for the retriever's record layout, ``versions.FeatureVersions`` as for the ranker)
    vector   the record → a one-row Batch exactly as the ranking service builds its rows (``FeatureLayout``:
             the user's features, items and context at their defaults) → ``model.user_vectors(batch)`` (1, d)
    search   the index's top N + |excluded| → the N best items the user has not seen, with the retriever's
             scores (inner product, or minus the squared distance)

The vector and the search run on the ranking service's model thread (``MicroBatcher.call``): torch and faiss
work stays off the event loop and off the I/O threads.

One feature store, two namespaces: the ranker's records are materialised for the ranker's schema, the retriever's
for its own (another task, other features and vocabularies), so ``recsys features materialize --data
RETRIEVER_DATA --artifact RETRIEVER --redis-prefix recsys-retriever`` writes the retriever's user records, seen
lists and versions under their own key prefix of the same Redis (``--retriever-prefix`` of ``recsys serve``).
Both must be prepared from the same interactions so that item keys agree (e.g. MovieLens prepared with
``--task ctr`` for the ranker and ``--task implicit`` for the retriever). Seen items are those of both namespaces:
the ranking service passes the ranker's seen list as ``exclude``.

Unknown users are served as the ranking API serves them: with default (out-of-vocabulary) features, and
reported (``unknown_user``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys import artifact as artifacts
from recsys.errors import RecsysError
from recsys.models.retriever import is_retriever
from services.feature_store.codec import RecordError, RecordLayouts, layout_fingerprint, record_layouts
from services.feature_store.encode import RawEncoder
from services.feature_store.store import FeatureStore, FeatureStoreUnavailable
from services.ranking.features import FeatureLayout, merge
from services.ranking.metrics import ServiceMetrics
from services.ranking.versions import FeatureVersions, IncompatibleVersion, NoFeatureVersion
from services.retrieval.index import ItemIndex, load_index
from services.retrieval.vectors import read_item_vectors

log = logging.getLogger("recsys.retrieval")


@dataclass
class ServedRetriever:
    """A retriever artifact with its index, ready to answer top-N."""

    artifact: artifacts.Artifact
    index: ItemIndex
    features: FeatureLayout
    layouts: RecordLayouts
    fingerprint: str  # of the user/item records it reads (codec.layout_fingerprint)

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def model(self) -> Any:
        return self.artifact.model

    @classmethod
    def load(cls, path: str | Path) -> ServedRetriever:
        """The artifact (``recsys.artifact.load``) and its index (``load_index``, checked against its vectors)."""
        loaded = artifacts.load(path)
        if not is_retriever(loaded.model):
            raise RecsysError(f"{loaded.path}: a {loaded.model_name} model is not a retriever (no user/item "
                              "vectors); --retriever takes an artifact of mf, two_tower, lightgcn, ...")
        if loaded.schema.user_key is None:
            raise RecsysError(f"{loaded.path}: the schema has no user_key; the retriever looks users up by it")
        index = load_index(loaded.path, read_item_vectors(loaded.path))
        features = FeatureLayout(loaded.schema, RawEncoder(loaded.schema, loaded.path), loaded.lookups)
        layouts = record_layouts(loaded.schema, loaded.path)
        return cls(loaded, index, features, layouts, layout_fingerprint(layouts))

    def user_vector(self, record: bytes | None) -> tuple[np.ndarray, bool]:
        """A user's record (None: unknown) → ((1, d) float32 vector, whether its ids were outside the tables)."""
        block = self.features.block(record, [None], self.features.encode_context({}))  # one row
        batch = merge([block], self.features.keys)
        with torch.inference_mode():
            vector = self.model.user_vectors(batch)  # (1, d)
        return np.ascontiguousarray(vector.detach().numpy(), dtype=np.float32), block.out_of_range_user

    def top(self, vector: np.ndarray, n: int, exclude: Collection[str]) -> tuple[list[str], np.ndarray]:
        """The n best items not in ``exclude`` for a (1, d) vector: (keys, scores (n,)), best first."""
        keys = self.index.keys
        scores, rows = self.index.search(vector, n + len(exclude))
        picked, kept = [], []
        for j, row in enumerate(rows[0].tolist()):
            if row < 0 or keys[row] in exclude:
                continue
            picked.append(keys[row])
            kept.append(j)
            if len(picked) == n:
                break
        return picked, scores[0, kept].astype(np.float32)


@dataclass
class Retrieved:
    """One user's top-N, where it came from, and how long each part took."""

    items: list[str]
    scores: np.ndarray  # (n,) float32, best first
    retriever_version: str
    feature_version: str | None  # of the retriever's namespace
    unknown_user: bool
    fetch_s: float
    vector_s: float
    search_s: float
    wall_s: float = 0.0  # the whole stage as the caller timed it (queueing for the model thread included)


@dataclass
class _UserRead:
    version: str | None
    record: bytes | None
    seen: list[str]
    seconds: float


class Retrieval:
    """The retriever slot and its feature namespace; ``retrieve`` is what /v1/retrieve and /v1/recommend call."""

    def __init__(self, store: FeatureStore, retriever: ServedRetriever, metrics: ServiceMetrics | None = None,
                 *, owns_store: bool = False) -> None:
        from services.ranking.served import ModelSlot

        self.store = store
        self.slot: ModelSlot[ServedRetriever] = ModelSlot(retriever)
        # Its own version bookkeeping; the ranker's gauges are not its (current="": never reported).
        self.versions = FeatureVersions(store, metrics or ServiceMetrics(), "")
        self._owns_store = owns_store

    def close(self) -> None:
        if self._owns_store:
            with contextlib.suppress(Exception):
                self.store.close()

    def read_user(self, retriever: ServedRetriever, user_id: str, exclude_seen: bool = True) -> _UserRead:
        """The user's record and seen list from the version materialised for the retriever (feature-store I/O)."""
        started = time.perf_counter()
        fingerprint = retriever.fingerprint
        try:
            version = self.versions.target(fingerprint) or \
                self.versions.settle(fingerprint, self.store.active_version())
            fetched = self.store.fetch(user_id, [], version)
            if fetched.version is None:
                self.versions.lost(fingerprint, version)
        except IncompatibleVersion as exc:
            raise IncompatibleVersion(f"{self._where()}: {exc}") from None
        except NoFeatureVersion as exc:
            raise NoFeatureVersion(f"{self._where()}: {exc}") from None
        seen = self.store.seen(user_id, version) if exclude_seen else []
        with contextlib.suppress(NoFeatureVersion):
            self.versions.settle(fingerprint, fetched.active)
        return _UserRead(fetched.version, fetched.user, seen, time.perf_counter() - started)

    def search(self, retriever: ServedRetriever, read: _UserRead, user_id: str, n: int,
               exclude: Collection[str]) -> Retrieved:
        """User vector and index search (the model thread's part)."""
        started = time.perf_counter()
        try:
            vector, out_of_range = retriever.user_vector(read.record)
        except RecordError as exc:
            from services.ranking.service import RecordMismatch

            raise RecordMismatch(f"retriever feature version {read.version}: user '{user_id}': {exc} "
                                 f"(retriever {retriever.version})") from None
        searched = time.perf_counter()
        excluded = set(read.seen) | set(exclude)
        items, scores = retriever.top(vector, n, excluded)
        finished = time.perf_counter()
        return Retrieved(items, scores, retriever.version, read.version, read.record is None or out_of_range,
                         read.seconds, searched - started, finished - searched)

    def warm_up(self, retriever: ServedRetriever) -> None:
        """One unknown user's vector and search: the first allocates, and the vector must be finite."""
        vector, _ = retriever.user_vector(None)
        if not np.isfinite(vector).all():
            raise RecsysError(f"{retriever.path}: the retriever gives non-finite user vectors; not serving it")
        retriever.top(vector, 10, ())

    def check_readable(self, retriever: ServedRetriever) -> None:
        """IncompatibleVersion when the namespace has no version materialised for ``retriever``'s records
        (nothing is refused while the store is down or empty)."""
        with contextlib.suppress(FeatureStoreUnavailable):
            active = self.store.active_version()
            if active is not None:
                self.versions.settle(retriever.fingerprint, active)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        retriever = self.slot.current
        details: dict[str, Any] = {"retriever_version": retriever.version, "index": retriever.index.kind.value}
        try:
            active = self.store.active_version()
            version = self.versions.settle(retriever.fingerprint, active)
        except FeatureStoreUnavailable as exc:
            return False, {**details, "retriever_status": f"feature store unavailable: {exc}"}
        except (NoFeatureVersion, IncompatibleVersion) as exc:
            return False, {**details, "retriever_status": f"{self._where()}: {exc}"}
        return True, {**details, "retriever_feature_version": version}

    def _where(self) -> str:
        return (f"the retriever's features (prefix '{getattr(self.store, 'prefix', '?')}'; materialise them with "
                "recsys features materialize --redis-prefix)")

