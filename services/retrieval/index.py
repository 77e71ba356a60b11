"""The ANN index over a retriever artifact's item vectors: built by ``recsys index build``, loaded by the service.

``ARTIFACT/index/``::

    index.faiss   faiss.write_index of the index; faiss id i = row i of retrieval/items.parquet
    meta.json     kind, parameters (nlist/nprobe, M/efConstruction/efSearch), items, dim, similarity, the sha256
                  of the vectors it was built from and of index.faiss, build seconds, the recall measured

Kinds (faiss): ``exact`` (IndexFlatIP / IndexFlatL2: brute force), ``ivf`` (IndexIVFFlat, nlist ≈ 4·√N
k-means cells, ``nprobe`` searched) and ``hnsw`` (IndexHNSWFlat, M = 32). The default is exact up to
``EXACT_MAX_ITEMS`` items and IVF above (it builds in a fraction of HNSW's time on few cores). An approximate
index's search parameter (nprobe / efSearch) is the smallest that reaches the recall target (recall@100 against
exact search, 0.95 by default) on a sample of queries; the recall reached is recorded.

Queries for the tuning: the retriever's user vectors are not in the artifact, so they are item vectors drawn at
random with Gaussian noise of half the catalogue's per-dimension spread added (a query is then near, not at, an
item, as a user's vector is); ``build_index(..., queries=)`` takes real user vectors when the caller has them.

Scores: the similarity of the retriever (``Retriever.score``): the inner product, or minus the squared L2 distance.

HNSW and the inner product: an HNSW graph built on inner products is not a proximity graph (the inner product
is no metric) and its recall stalls (0.80 recall@100 at efSearch 4096 on ``benchmarks/bench_ann.py``'s 1M
catalogue). For a ``dot`` retriever the HNSW index is built on the MIPS → L2 reduction (Bachrach et al.,
"Speeding up the Xbox recommender system using a euclidean transformation for inner-product spaces", RecSys
2014): items get one more coordinate √(M² − ‖x‖²) (M the largest item norm, ``mips_max_norm`` in meta.json),
queries a 0, and the L2 order of the augmented vectors is the inner-product order; the inner product is
recovered as (‖q‖² + M² − distance) / 2.

Loading is defensive: an index is a file from elsewhere. ``load_index`` checks meta.json's fields, that the
index was built from these vectors (sha256), that index.faiss is the file meta.json describes (sha256, before
faiss parses it), that faiss reads it, and that its ntotal, dim, metric and kind match the vectors and the
meta, and that a sample of its stored vectors are the artifact's; every failure is one line naming the file.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from recsys import artifact as artifacts
from recsys.errors import RecsysError
from recsys.models.retriever import Similarity
from services.retrieval.vectors import ItemVectors, read_item_vectors

log = logging.getLogger("recsys.index")

INDEX_DIR, INDEX_FILE, META_FILE = "index", "index.faiss", "meta.json"
FORMAT = 1
EXACT_MAX_ITEMS = 100_000  # the default kind: exact up to this many items, IVF above
RECALL_K = 100
DEFAULT_RECALL_TARGET = 0.95
TUNING_QUERIES = 500
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 64
_ADD_CHUNK = 100_000  # vectors added per call: a log line each on long builds
_SPOT_CHECK = 64  # stored vectors compared with the artifact's at load


class IndexKind(StrEnum):
    EXACT = "exact"
    IVF = "ivf"
    HNSW = "hnsw"


def default_kind(items: int) -> IndexKind:
    return IndexKind.EXACT if items <= EXACT_MAX_ITEMS else IndexKind.IVF


def ivf_cells(items: int) -> int:
    """nlist ≈ 4·√N, a power of two, with at least ~39 training vectors per cell (faiss warns below)."""
    cells = 1 << max(0, round(math.log2(max(1.0, 4 * math.sqrt(items)))))
    return max(1, min(cells, items // 39 or 1))


def _metric(similarity: Similarity) -> int:
    import faiss

    return faiss.METRIC_INNER_PRODUCT if similarity is Similarity.DOT else faiss.METRIC_L2


@dataclass
class BuildReport:
    kind: IndexKind
    params: dict[str, int]
    build_seconds: float
    recall: float | None  # recall@k against exact on the tuning queries (None: exact)
    tune_seconds: float = 0.0
    trace: list[dict[str, float]] = field(default_factory=list)  # (parameter, recall) tried while tuning
    max_norm: float | None = None  # the MIPS → L2 reduction's M


@dataclass
class ItemIndex:
    """A faiss index with its item keys, ready to search."""

    index: Any  # faiss.Index
    keys: list[str]
    similarity: Similarity
    meta: dict[str, Any]
    path: Path | None = None
    max_norm: float | None = None  # the MIPS → L2 reduction's M (hnsw over a dot retriever), else None

    @property
    def items(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def kind(self) -> IndexKind:
        return IndexKind(self.meta["kind"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, d) float32 queries → (scores (B, k), rows (B, k)), best first; rows -1 where fewer than k were found.
        Scores are the retriever's: the inner product, or minus the squared distance."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.max_norm is not None:
            distances, rows = self.index.search(augment_queries(queries), min(k, self.items))
            return inner_products(queries, distances, self.max_norm), rows
        distances, rows = self.index.search(queries, min(k, self.items))
        scores = distances if self.similarity is Similarity.DOT else -distances
        return scores, rows


# ---- MIPS → L2 (see the module docstring) ---------------------------------------------------------------------
def augment_items(vectors: np.ndarray, max_norm: float) -> np.ndarray:
    """(N, d) → (N, d + 1): [x, √(M² − ‖x‖²)]."""
    norms = np.einsum("ij,ij->i", vectors, vectors)
    extra = np.sqrt(np.maximum(max_norm * max_norm - norms, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)


def augment_queries(queries: np.ndarray) -> np.ndarray:
    """(B, d) → (B, d + 1): [q, 0]."""
    return np.ascontiguousarray(np.hstack([queries, np.zeros((len(queries), 1), np.float32)]))


def inner_products(queries: np.ndarray, distances: np.ndarray, max_norm: float) -> np.ndarray:
    """Squared L2 distances of augmented vectors → inner products: (‖q‖² + M² − d) / 2."""
    norms = np.einsum("ij,ij->i", queries, queries)[:, None]
    return ((norms + max_norm * max_norm - distances) / 2).astype(np.float32)


# ---- building ----------------------------------------------------------------------------------------------
def new_index(kind: IndexKind, dim: int, similarity: Similarity, items: int) -> tuple[Any, dict[str, int]]:
    import faiss

    metric = _metric(similarity)
    if kind is IndexKind.EXACT:
        return (faiss.IndexFlatIP(dim) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(dim)), {}
    if kind is IndexKind.IVF:
        cells = ivf_cells(items)
        quantizer = faiss.IndexFlatIP(dim) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, cells, metric)
        index.own_fields = True
        quantizer.this.disown()  # owned by the IVF index from here (own_fields)
        return index, {"nlist": cells}
    # L2 always: a dot retriever's vectors go through the MIPS → L2 reduction (one more dimension).
    index = faiss.IndexHNSWFlat(dim + (similarity is Similarity.DOT), HNSW_M, faiss.METRIC_L2)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}


def set_search_parameter(index: Any, kind: IndexKind, value: int) -> None:
    if kind is IndexKind.IVF:
        index.nprobe = int(value)
    elif kind is IndexKind.HNSW:
        index.hnsw.efSearch = int(value)


SEARCH_PARAMETER = {IndexKind.IVF: "nprobe", IndexKind.HNSW: "efSearch"}


def tuning_queries(vectors: np.ndarray, count: int = TUNING_QUERIES, seed: int = 0) -> np.ndarray:
    """Item vectors drawn at random plus N(0, (0.5·σ_j)²) noise per dimension j (see the module docstring)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(count, len(vectors)), replace=False)
    spread = vectors[rng.choice(len(vectors), size=min(len(vectors), 100_000), replace=False)].std(axis=0)
    noise = rng.standard_normal((len(rows), vectors.shape[1])).astype(np.float32) * (0.5 * spread)
    return np.ascontiguousarray(vectors[rows] + noise, dtype=np.float32)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (rows -1 ignored)."""
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, int((t >= 0).sum())) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, similarity: Similarity, k: int) -> np.ndarray:
    """(Q, k) rows of the exact top-k by brute force (faiss flat index)."""
    index, _ = new_index(IndexKind.EXACT, vectors.shape[1], similarity, len(vectors))
    index.add(vectors)
    return index.search(queries, min(k, len(vectors)))[1]


def tune(index: Any, kind: IndexKind, queries: np.ndarray, truth: np.ndarray, target: float, k: int,
         limit: int, start: int = 1) -> tuple[int, float, list[dict[str, float]]]:
    """The smallest search parameter in [start, limit] whose recall@k reaches ``target`` (doubling, then bisection
    between the last value short of it and the first reaching it); the limit's recall if none does."""
    trace: list[dict[str, float]] = []
    name = SEARCH_PARAMETER[kind]

    def measure(value: int) -> float:
        set_search_parameter(index, kind, value)
        recall = recall_at(index.search(queries, k)[1], truth)
        trace.append({name: value, "recall": round(recall, 5)})
        log.info("  %s=%d: recall@%d %.4f", name, value, k, recall)
        return recall

    low, value = None, max(1, start)
    recall = measure(value)
    while recall < target and value < limit:
        low, value = value, min(limit, value * 2)
        recall = measure(value)
    if recall < target:
        return value, recall, trace
    while low is not None and value - low > max(1, value // 16):  # bisection to within ~6%
        middle = (low + value) // 2
        middle_recall = measure(middle)
        if middle_recall >= target:
            value, recall = middle, middle_recall
        else:
            low = middle
    set_search_parameter(index, kind, value)
    return value, recall, trace


def build_index(vectors: np.ndarray, similarity: Similarity, kind: IndexKind | None = None,
                recall_target: float = DEFAULT_RECALL_TARGET, *, queries: np.ndarray | None = None,
                k: int = RECALL_K, seed: int = 0,
                progress: Callable[[str], None] | None = None) -> tuple[Any, BuildReport]:
    """A faiss index over ``vectors`` (N, d) float32 and how it was built (see the module docstring)."""
    say = progress or log.info
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    items, dim = vectors.shape
    kind = kind or default_kind(items)
    started = time.perf_counter()
    index, params = new_index(kind, dim, similarity, items)
    if kind is IndexKind.IVF:
        cells = params["nlist"]
        sample = min(items, max(64 * cells, 10_000))
        rng = np.random.default_rng(seed)
        train = vectors[np.sort(rng.choice(items, size=sample, replace=False))] if sample < items else vectors
        say(f"training {cells} IVF cells (k-means) on {sample:,} of {items:,} vectors")
        index.cp.seed = seed
        index.train(train)
    max_norm = None
    if kind is IndexKind.HNSW and similarity is Similarity.DOT:
        max_norm = float(np.sqrt(np.einsum("ij,ij->i", vectors, vectors).max()))
    for start in range(0, items, _ADD_CHUNK):
        chunk = vectors[start:start + _ADD_CHUNK]
        index.add(chunk if max_norm is None else augment_items(chunk, max_norm))
        if items > _ADD_CHUNK:
            say(f"added {min(items, start + _ADD_CHUNK):,} / {items:,} vectors ({kind.value})")
    build_seconds = time.perf_counter() - started
    report = BuildReport(kind, params, build_seconds, None, max_norm=max_norm)
    if kind is IndexKind.EXACT:
        return index, report
    tune_started = time.perf_counter()
    queries = tuning_queries(vectors, seed=seed) if queries is None else np.ascontiguousarray(queries, np.float32)
    say(f"tuning {SEARCH_PARAMETER[kind]} for recall@{k} ≥ {recall_target} on {len(queries)} queries "
        f"(exact search for the truth)")
    truth = exact_neighbours(vectors, queries, similarity, k)
    if kind is IndexKind.IVF:
        value, recall, trace = tune(index, kind, queries, truth, recall_target, k, limit=params["nlist"])
    else:
        searched = queries if max_norm is None else augment_queries(queries)
        value, recall, trace = tune(index, kind, searched, truth, recall_target, k, limit=max(4096, 4 * k),
                                    start=min(k, items))
    if recall < recall_target:
        log.warning("%s index: recall@%d %.4f at the largest %s (%d), short of %.3f", kind.value, k, recall,
                    SEARCH_PARAMETER[kind], value, recall_target)
    params[SEARCH_PARAMETER[kind]] = value
    report.recall, report.trace = recall, trace
    report.tune_seconds = time.perf_counter() - tune_started
    return index, report


def build_artifact_index(artifact: str | Path, kind: IndexKind | None = None,
                         recall_target: float = DEFAULT_RECALL_TARGET, *, seed: int = 0) -> dict[str, Any]:
    """``recsys index build``: ARTIFACT/index/ from ARTIFACT's item vectors, written atomically. Returns the meta."""
    import faiss

    path = Path(artifact)
    item_vectors = read_item_vectors(path)
    if item_vectors.items == 0:
        raise RecsysError(f"{path / 'retrieval'}: no item vectors to index")
    log.info("indexing %s: %d items × %d dims, similarity %s", path, item_vectors.items, item_vectors.dim,
             item_vectors.similarity.value)
    index, report = build_index(item_vectors.vectors, item_vectors.similarity, kind, recall_target, seed=seed)
    meta = {
        "format": FORMAT,
        "kind": report.kind.value,
        "params": report.params,
        "items": item_vectors.items,
        "dim": item_vectors.dim,
        "similarity": item_vectors.similarity.value,
        "vectors_sha256": item_vectors.sha256,
        "mips_max_norm": report.max_norm,
        "build_seconds": round(report.build_seconds, 3),
        "tune_seconds": round(report.tune_seconds, 3),
        "recall": None if report.recall is None else {
            "k": RECALL_K, "value": round(report.recall, 5), "target": recall_target,
            "queries": TUNING_QUERIES, "against": "exact search", "trace": report.trace},
        "faiss_version": faiss.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = path / INDEX_DIR
    tmp = path / f".tmp-{INDEX_DIR}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    faiss.write_index(index, str(tmp / INDEX_FILE))
    meta["index_sha256"] = artifacts.sha256_file(tmp / INDEX_FILE)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return meta


# ---- loading -----------------------------------------------------------------------------------------------
def _field(meta: dict[str, Any], name: str, kind: type, where: Path) -> Any:
    value = meta.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RecsysError(f"{where}: '{name}' missing or not a {kind.__name__}")
    return value


def load_index(artifact: str | Path, item_vectors: ItemVectors | None = None) -> ItemIndex:
    """ARTIFACT/index/, checked against the artifact's item vectors (see the module docstring)."""
    import faiss

    path = Path(artifact)
    vectors = item_vectors or read_item_vectors(path)
    meta_file, index_file = path / INDEX_DIR / META_FILE, path / INDEX_DIR / INDEX_FILE
    if not meta_file.is_file():
        raise RecsysError(f"{meta_file}: missing: build the index first (recsys index build --artifact {path})")
    try:
        meta = json.loads(meta_file.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise RecsysError(f"{meta_file}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise RecsysError(f"{meta_file}: expected a JSON object")
    if meta.get("format") != FORMAT:
        raise RecsysError(f"{meta_file}: format {meta.get('format')!r}, this recsys reads format {FORMAT}")
    try:
        kind = IndexKind(meta.get("kind"))
    except ValueError:
        raise RecsysError(f"{meta_file}: kind {meta.get('kind')!r} is not one of "
                          f"{', '.join(k.value for k in IndexKind)}") from None
    if _field(meta, "vectors_sha256", str, meta_file) != vectors.sha256:
        raise RecsysError(f"{meta_file}: built from other item vectors than {path / 'retrieval'}'s (sha256 "
                          "differs): build the index again")
    for name, have in (("items", vectors.items), ("dim", vectors.dim)):
        if _field(meta, name, int, meta_file) != have:
            raise RecsysError(f"{meta_file}: {name} {meta[name]}, but the item vectors have {have}")
    if meta.get("similarity") != vectors.similarity.value:
        raise RecsysError(f"{meta_file}: similarity {meta.get('similarity')!r}, the retriever's is "
                          f"{vectors.similarity.value}")
    params = meta.get("params")
    if not isinstance(params, dict):
        raise RecsysError(f"{meta_file}: 'params' missing or not an object")
    try:
        have = artifacts.sha256_file(index_file)
    except FileNotFoundError:
        raise RecsysError(f"{index_file}: missing from the index") from None
    if _field(meta, "index_sha256", str, meta_file) != have:
        raise RecsysError(f"{index_file}: not the file {META_FILE} describes (sha256 differs): changed after "
                          "build; build the index again")
    try:
        index = faiss.read_index(str(index_file))
    except (RuntimeError, MemoryError) as exc:
        raise RecsysError(f"{index_file}: faiss cannot read it ({str(exc).strip().splitlines()[-1]})") from None
    expected = {IndexKind.EXACT: faiss.IndexFlat, IndexKind.IVF: faiss.IndexIVFFlat,
                IndexKind.HNSW: faiss.IndexHNSWFlat}[kind]
    if not isinstance(index, expected):
        raise RecsysError(f"{index_file}: a {type(index).__name__}, but {META_FILE} says {kind.value}")
    max_norm = None
    metric = _metric(vectors.similarity)
    if kind is IndexKind.HNSW:
        metric = faiss.METRIC_L2
        if vectors.similarity is Similarity.DOT:
            max_norm = meta.get("mips_max_norm")
            if not isinstance(max_norm, float) or not math.isfinite(max_norm) or max_norm <= 0:
                raise RecsysError(f"{meta_file}: 'mips_max_norm' missing or not a positive number (an hnsw index "
                                  "of a dot retriever)")
    stored_dim = vectors.dim + (max_norm is not None)
    for name, found, wanted in (("ntotal", index.ntotal, vectors.items), ("d", index.d, stored_dim),
                                ("metric", index.metric_type, metric)):
        if int(found) != int(wanted):
            raise RecsysError(f"{index_file}: {name} {found}, but the item vectors need {wanted}")
    if kind in SEARCH_PARAMETER:
        name = SEARCH_PARAMETER[kind]
        value = params.get(name)
        limit = index.nlist if kind is IndexKind.IVF else 1 << 16
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise RecsysError(f"{meta_file}: params.{name} {value!r} is not an integer in [1, {limit}]")
        set_search_parameter(index, kind, value)
    _spot_check(index, kind, vectors, index_file)
    return ItemIndex(index, vectors.keys, vectors.similarity, meta, path / INDEX_DIR, max_norm)


def _spot_check(index: Any, kind: IndexKind, vectors: ItemVectors, where: Path) -> None:
    """A sample of stored vectors (always the first and last) equal the artifact's: the ids map to these items."""
    rng = np.random.default_rng(0)
    rows = np.unique(np.concatenate([[0, vectors.items - 1],
                                     rng.integers(0, vectors.items, min(_SPOT_CHECK, vectors.items))]))
    if kind is IndexKind.IVF:
        index.make_direct_map()
    stored = np.stack([index.reconstruct(int(r)) for r in rows])[:, :vectors.dim]  # without the MIPS coordinate
    if not np.array_equal(stored, vectors.vectors[rows]):
        raise RecsysError(f"{where}: its vectors are not the artifact's item vectors in row order")
