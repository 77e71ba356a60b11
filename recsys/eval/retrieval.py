"""Full-ranking evaluation of a retriever on a prepared ``implicit`` data set: the same code for every model.

Protocol (what "Recall@20 on test" means here):

- The catalogue is every item of the data set (any split), one row per ``item_key``, in order of first
  appearance (train, then valid, then test; files in name order). An item's features are those of the
  first prepared row that has it.
- The users are those with rows in the evaluated split, in order of first appearance there; a user's
  features are those of its first row in that split (for a history feature: the history before its
  first held-out interaction). Only user-entity features reach ``user_vectors`` and only item-entity
  features reach ``item_vectors``: the others are emptied (sparse) or zeroed (dense), so neither
  tower can see the held-out item.
- A user's relevant items are its distinct items in the split; every item it has in train (and, for
  test, in valid) is removed from its ranking and from its relevant set. Users with no relevant item
  left are skipped.
- Every catalogue item is scored (no sampled negatives); metrics as ``recsys.eval.metrics`` defines
  them, averaged over users.

Sharded models: ``user_vectors`` and ``item_vectors`` may be collectives (a sharded forward), so every
process must make the same calls in the same order. This module has no notion of rank: every process
embeds the whole catalogue and every user, in the same deterministic batches, and computes the same
metrics. Memory stays bounded: scores are computed for blocks of users at a time (``SCORE_BLOCK``
scores), never as one users × items matrix.

    metrics = evaluate_retriever(lambda b: model.user_vectors(b.to(dev)), lambda b: model.item_vectors(b.to(dev)),
                                 model.similarity, "data/gowalla", "test")
    metrics["recall@20"], metrics["users"], metrics["items"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.layout import SPLITS, load_schema, split_files
from recsys.data.reader import table_batch
from recsys.errors import RecsysError
from recsys.eval.metrics import hit_rate_at_k, ndcg_at_k, rank, recall_at_k, reciprocal_rank
from recsys.models.retriever import Similarity
from recsys.schema import Entity, Schema, Task
from recsys.tasks.implicit import CUTOFFS
from recsys.types import Batch

SCORE_BLOCK = 1 << 24  # scores (users × items) held at once: 64 MB of float32
VectorFn = Callable[[Batch], torch.Tensor]


# ---- batches of one entity's features ---------------------------------------------------------------

def entity_batch(batch: Batch, schema: Schema, entity: Entity) -> Batch:
    """The batch with only ``entity``'s features: other sparse keys get no ids, other dense columns zeros."""
    dense = batch.dense.clone()
    for j, feature in enumerate(schema.dense):
        if feature.entity is not entity:
            dense[:, j] = 0.0
    features = {f.name: f.entity for f in [*schema.sparse, *schema.sequences]}
    kjt = batch.sparse
    keys = kjt.keys()
    lengths = kjt.lengths().view(len(keys), -1).clone()  # (K, B)
    pieces = torch.split(kjt.values(), kjt.length_per_key())
    kept = []
    for k, key in enumerate(keys):
        if features[key] is entity:
            kept.append(pieces[k])
        else:
            lengths[k] = 0
    values = torch.cat(kept) if kept else kjt.values()[:0]
    sparse = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.view(-1))
    return Batch(dense=dense, sparse=sparse, labels=batch.labels)


def _model_columns(schema: Schema) -> list[str]:
    return [f.name for f in schema.dense] + schema.sparse_keys + schema.label_names


def _scan(data_dir: Path, split: str, columns: list[str]) -> pl.LazyFrame | None:
    """The split's rows (the given columns), files in name order; None for an empty split."""
    files = split_files(data_dir, split)
    if not files:
        return None
    return pl.scan_parquet(files).select(columns)


def _first_rows(frame: pl.LazyFrame, key: str, where: str) -> pl.DataFrame:
    """The first row of each distinct ``key``, in order of first appearance."""
    try:
        return frame.unique(subset=[key], keep="first", maintain_order=True).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise RecsysError(f"{where}: cannot read ({str(exc).splitlines()[0]})") from None


class _Rows:
    """Chosen prepared rows (one per user or item) as batches of one entity's features."""

    def __init__(self, rows: pl.DataFrame, schema: Schema, entity: Entity, where: str) -> None:
        self.table: pa.Table = rows.select(_model_columns(schema)).to_arrow()
        self.schema, self.entity, self.where = schema, entity, where

    def __len__(self) -> int:
        return self.table.num_rows

    def batch(self, start: int, stop: int) -> Batch:
        rows = table_batch(self.table.slice(start, stop - start), self.schema, self.where)
        return entity_batch(rows, self.schema, self.entity)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if batch_size < 1:
            raise RecsysError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.batch(start, min(start + batch_size, len(self)))


# ---- the catalogue ----------------------------------------------------------------------------------

@dataclass
class Catalogue:
    """Every item of a prepared data set: ``keys[i]`` is the raw key of catalogue row i (item vector i).

    ``batches(n)`` yields the items' features in that order, n at a time: each item's item-entity
    features from the first prepared row that has it (any split), the other features empty or zero.
    """

    keys: list[str]
    _rows: _Rows

    def __len__(self) -> int:
        return len(self.keys)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        return self._rows.batches(batch_size)

    def positions(self) -> pl.DataFrame:
        """(item_key, position) for joining raw keys to catalogue rows."""
        return pl.DataFrame({"item_key": self.keys, "position": np.arange(len(self.keys), dtype=np.int64)})


def item_catalogue(data_dir: str | Path, schema: Schema) -> Catalogue:
    """The catalogue of a prepared ``implicit`` data set (see ``Catalogue``); every process builds the same."""
    data_dir = Path(data_dir)
    key = _key_columns(schema, data_dir)[1]
    columns = [key, *(c for c in _model_columns(schema) if c != key)]
    frames = [frame for split in SPLITS if (frame := _scan(data_dir, split, columns)) is not None]
    if not frames:
        raise RecsysError(f"{data_dir}: no prepared rows in any split")
    rows = _first_rows(pl.concat(frames), key, str(data_dir))
    keys = rows[key].cast(pl.String).to_list()
    return Catalogue(keys=keys, _rows=_Rows(rows, schema, Entity.ITEM, f"{data_dir} (catalogue)"))


def _key_columns(schema: Schema, data_dir: Path) -> tuple[str, str]:
    if schema.task is not Task.IMPLICIT or schema.user_key is None or schema.item_key is None:
        raise RecsysError(f"{data_dir}: retrieval evaluation needs an 'implicit' schema with user and item keys "
                          f"(this one is '{schema.task.value}')")
    return schema.user_key.name, schema.item_key.name


# ---- who is evaluated against what ------------------------------------------------------------------

@dataclass
class _Targets:
    """The evaluated users (rows of ``users``) and, per user, its relevant and excluded catalogue rows (CSR)."""

    users: _Rows
    relevant: tuple[np.ndarray, np.ndarray]  # (offsets (U + 1,), catalogue rows)
    excluded: tuple[np.ndarray, np.ndarray]


def _csr(pairs: pl.DataFrame, users: int) -> tuple[np.ndarray, np.ndarray]:
    """(user, position) pairs, sorted → (offsets (users + 1,), positions)."""
    user, position = pairs["user"].to_numpy(), pairs["position"].to_numpy()
    offsets = np.zeros(users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=users), out=offsets[1:])
    return offsets, position.astype(np.int64)


def _targets(data_dir: Path, schema: Schema, split: str, catalogue: Catalogue) -> _Targets:
    user_key, item_key = _key_columns(schema, data_dir)
    if split not in ("valid", "test"):
        raise RecsysError(f"retrieval evaluation is of split 'valid' or 'test', not '{split}'")
    columns = [user_key, item_key, *(c for c in _model_columns(schema) if c not in (user_key, item_key))]
    held_out = _scan(data_dir, split, columns)
    positions = catalogue.positions()

    def pairs(frame: pl.LazyFrame, users: pl.DataFrame) -> pl.DataFrame:
        """Distinct (user, position) pairs of the frame's rows whose user is in ``users``."""
        keyed = frame.select(pl.col(user_key).cast(pl.String).alias("user_key"),
                             pl.col(item_key).cast(pl.String).alias("item_key"))
        return (keyed.join(users.lazy(), on="user_key").join(positions.lazy(), on="item_key")
                .select("user", "position").unique().sort("user", "position").collect())

    empty = pl.DataFrame(schema={"user": pl.Int64, "position": pl.Int64})
    if held_out is None:
        users = pl.DataFrame(schema={"user_key": pl.String, "user": pl.Int64})
        rows = pl.DataFrame(schema={c: pl.Int64 for c in columns})  # never batched: no users
        relevant = excluded = empty
    else:
        rows = _first_rows(held_out, user_key, f"{data_dir / split}")
        users = pl.DataFrame({"user_key": rows[user_key].cast(pl.String),
                              "user": np.arange(rows.height, dtype=np.int64)})
        relevant = pairs(held_out, users)
        seen = [frame for name in (["train", "valid"] if split == "test" else ["train"])
                if (frame := _scan(data_dir, name, [user_key, item_key])) is not None]
        excluded = pl.concat([pairs(frame, users) for frame in seen]).unique().sort("user", "position") \
            if seen else empty
        relevant = relevant.join(excluded, on=["user", "position"], how="anti").sort("user", "position")
        # Users with nothing left to find are not evaluated: renumber the rest in their order.
        kept = relevant["user"].unique().sort()
        renumber = pl.DataFrame({"user": kept, "new": np.arange(len(kept), dtype=np.int64)})
        rows = rows[kept.to_numpy()]
        relevant, excluded = (frame.join(renumber, on="user").select(pl.col("new").alias("user"), "position")
                              .sort("user", "position") for frame in (relevant, excluded))
        users = users[kept.to_numpy()]
    count = users.height
    return _Targets(users=_Rows(rows, schema, Entity.USER, f"{data_dir / split} (users)"),
                    relevant=_csr(relevant, count), excluded=_csr(excluded, count))


def _mask(csr: tuple[np.ndarray, np.ndarray], start: int, stop: int, items: int,
          device: torch.device) -> torch.Tensor:
    """(stop - start, items) bool: the CSR's catalogue rows of users [start, stop)."""
    offsets, positions = csr
    lo, hi = offsets[start], offsets[stop]
    rows = np.repeat(np.arange(stop - start), np.diff(offsets[start:stop + 1]))
    mask = torch.zeros(stop - start, items, dtype=torch.bool, device=device)
    mask[torch.from_numpy(rows).to(device), torch.from_numpy(positions[lo:hi]).to(device)] = True
    return mask


# ---- evaluation -------------------------------------------------------------------------------------

def _scores(users: torch.Tensor, items: torch.Tensor, similarity: Similarity) -> torch.Tensor:
    """(U, d) × (N, d) → (U, N) float32: the Retriever's ``score``."""
    if similarity is Similarity.DOT:
        return users.float() @ items.float().T
    return -torch.cdist(users.float(), items.float()).square()


def _finite(vectors: torch.Tensor, what: str, rows: int) -> torch.Tensor:
    if vectors.dim() != 2 or vectors.shape[0] != rows:
        raise RecsysError(f"{what}: expected ({rows}, d) vectors, got shape {tuple(vectors.shape)}")
    if not torch.isfinite(vectors).all():
        raise RecsysError(f"{what}: the model gave non-finite vectors (NaN or inf); training diverged?")
    return vectors


def metric_keys(cutoffs: Sequence[int] = CUTOFFS) -> list[str]:
    """The keys ``evaluate_retriever`` returns, in order (before ``users`` and ``items``)."""
    return [*(f"{name}@{k}" for name in ("recall", "ndcg", "hr") for k in cutoffs), "mrr"]


@torch.no_grad()
def evaluate_retriever(user_vectors: VectorFn, item_vectors: VectorFn, similarity: Similarity | str,
                       data_dir: str | Path, split: str, *, batch_size: int = 4096,
                       cutoffs: Sequence[int] = CUTOFFS) -> dict[str, float | int]:
    """Full-ranking Recall@K, NDCG@K, HR@K (K in ``cutoffs``) and MRR of a retriever on ``split``.

    user_vectors, item_vectors: Batch (on the CPU; move it where the model is) → (B, d) vectors. Called
        with the same batches in the same order on every process (see the module docstring).
    similarity: "dot" or "l2", as the model's ``similarity``.
    Returns the metric keys (``metric_keys(cutoffs)``) averaged over the evaluated users, plus ``users``
    (evaluated users; 0 when the split has none, and then every metric is 0.0) and ``items`` (catalogue size).
    """
    try:
        similarity = Similarity(similarity)
    except ValueError:
        raise RecsysError(f"similarity must be 'dot' or 'l2', got {similarity!r}") from None
    if batch_size < 1:
        raise RecsysError(f"batch_size must be at least 1, got {batch_size}")
    cutoffs = sorted(set(int(k) for k in cutoffs))
    if not cutoffs or cutoffs[0] < 1:
        raise RecsysError(f"cutoffs must be positive integers, got {list(cutoffs)}")
    data_dir = Path(data_dir)
    schema = load_schema(data_dir)
    catalogue = item_catalogue(data_dir, schema)
    targets = _targets(data_dir, schema, split, catalogue)
    parts = [_finite(item_vectors(batch), "item vectors", batch.batch_size)
             for batch in catalogue.batches(batch_size)]
    items = torch.cat(parts)  # (N, d)
    count, depth = len(catalogue), cutoffs[-1]
    sums = dict.fromkeys(metric_keys(cutoffs), 0.0)
    block = max(1, SCORE_BLOCK // max(count, 1))  # users scored at once
    for start, batch in zip(range(0, len(targets.users), batch_size), targets.users.batches(batch_size)):
        vectors = _finite(user_vectors(batch), "user vectors", batch.batch_size)  # (B, d)
        for lo in range(0, len(vectors), block):
            hi = min(lo + block, len(vectors))
            scores = _scores(vectors[lo:hi], items, similarity)  # (b, N)
            a, b = start + lo, start + hi
            ranked = rank(scores, _mask(targets.relevant, a, b, count, scores.device),
                          _mask(targets.excluded, a, b, count, scores.device), depth)
            for k in cutoffs:
                sums[f"recall@{k}"] += float(recall_at_k(ranked.hits, ranked.relevant, k).sum())
                sums[f"ndcg@{k}"] += float(ndcg_at_k(ranked.hits, ranked.relevant, k).sum())
                sums[f"hr@{k}"] += float(hit_rate_at_k(ranked.hits, k).sum())
            sums["mrr"] += float(reciprocal_rank(ranked.first).sum())
    users = len(targets.users)
    result: dict[str, float | int] = {key: value / users if users else 0.0 for key, value in sums.items()}
    result.update(users=users, items=count)
    return result

