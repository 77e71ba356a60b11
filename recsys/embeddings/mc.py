"""``mc``: managed collisions — an open vocabulary of raw (hashed) ids in ``zch_size`` rows, cold ids evicted.

Zero-collision hashing as in Monolith (Liu et al., "Monolith: Real Time Recommendation
System With Collisionless Embedding Table", 2022) and torchrec's managed-collision
modules, which this scheme uses unchanged (``MCHManagedCollisionModule`` in a
``ManagedCollisionEmbeddingCollection``). The table's input ids are a large id space
(a schema table of ``encoding: hash`` with ``hash_buckets`` up to 2³¹, so raw user
and item ids reach the model, new ones included); every training step records the
ids it sees, and every ``eviction_interval`` steps the ids seen most (by the
eviction policy's score) take rows, evicting the coldest. A new id therefore gets
a row of its own once it is seen in training, where a vocabulary maps every id not
in it to one OOV row. An id without a row (not seen yet, or evicted) reads the last
row of its range, a shared "miss" row. Eval and serving only look ids up.

What differs from the paper: rows are fixed (``zch_size``), not a growing hash map;
the remapping (sorted raw ids → row, per-row counts) is buffers of the collection,
so checkpoints, the artifact and the service carry it with the weights. Sharding
is row-wise only (torchrec's managed collisions split the id space into
``buckets`` ranges, a multiple of the process count); the table is looked up per
id in its own collection and pooled after, as torchrec has no CPU sharding for the
bag version (torchrec issue 2958).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig as TableConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection
from torchrec.modules.mc_modules import (DistanceLFU_EvictionPolicy, LFU_EvictionPolicy, LRU_EvictionPolicy,
                                         ManagedCollisionCollection, MCHEvictionPolicy, MCHManagedCollisionModule)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys.embeddings import LogicalTable, PhysicalTable, SchemeOptions, TablePart, register_scheme

Eviction = Literal["distance_lfu", "lfu", "lru"]


class ManagedCollisionOptions(SchemeOptions):
    zch_size: int | None = Field(None, ge=2, description="rows of the managed table (default: the table's rows / "
                                 "ratio), rounded up to whole buckets of at least 2 rows")
    eviction: Eviction = Field("distance_lfu", description="which rows are cold: distance_lfu (counts decayed "
                               "by age), lfu (counts), lru (last seen)")
    eviction_interval: int = Field(1, ge=1, description="training steps between admissions of new ids")
    buckets: int = Field(8, ge=1, description="ranges the id space is split into for row-wise sharding; "
                         "the process count must divide it")


def eviction_policy(name: Eviction) -> MCHEvictionPolicy:
    if name == "lfu":
        return LFU_EvictionPolicy()
    if name == "lru":
        return LRU_EvictionPolicy()
    return DistanceLFU_EvictionPolicy()


class ManagedCollisionModule(MCHManagedCollisionModule):
    """torchrec's zero-collision module, whose unsharded copy of a row-wise trained table reads an id it has no
    row for from the miss row of the shard that id went to in training, as the sharded module did.

    Each shard's module sends its misses to the last row of its range; the unsharded module (the artifact's,
    the service's) would send them all to its last row. The shards' ranges come with the weights
    (``_output_segments_tensor``, which torchrec resets on load, so they are kept here first), and an id's shard
    is torchrec's row-wise routing (each shard's module has one bucket per shard): ``id // ceil(input_hash_size
    / shards)``. Only the module ``build_collection`` made is unsharded (``unsharded``); the sharder's modules
    (``rebuild_with_output_id_range``), also under another process count after a resume, keep torchrec's remap.
    """

    unsharded = False
    _trained_segments: torch.Tensor | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # torchrec's copy of its own ranges is the buffer itself, which a checkpoint load overwrites in place
        self._own_segments = self._output_segments_tensor.clone()

    def validate_state(self) -> None:
        self._trained_segments = self._output_segments_tensor.clone()
        super().validate_state()
        self._output_segments_tensor.copy_(self._own_segments)  # this module's ranges are what it saves next

    def remap(self, features: dict[str, JaggedTensor], mutate_miss_lengths: bool = True,
              write_weights: torch.Tensor | None = None) -> dict[str, JaggedTensor]:
        remapped = super().remap(features, mutate_miss_lengths, write_weights)
        segments = self._trained_segments
        if not self.unsharded or segments is None:
            return remapped
        ends = segments[segments >= 0][1:]  # (shards,): each shard's range end
        shards = ends.numel()
        if shards < 2:
            return remapped
        block = -(-self._input_hash_size // shards)
        out = {}
        for name, feature in features.items():
            rows = remapped[name].values()
            shard = (feature.values() // block).clamp(max=shards - 1)
            rows = torch.where(rows == self._zch_size - 1, ends.to(rows.device)[shard] - 1, rows)
            out[name] = JaggedTensor(values=rows, lengths=feature.lengths(), offsets=feature.offsets(),
                                     weights=feature.weights_or_none())
        return out


class ManagedLookup(nn.Module):
    """Per-id vectors of a managed-collision collection: KJT → {feature: JaggedTensor (Σ lengths, dim)}.

    Holds the ``ManagedCollisionEmbeddingCollection`` (which the sharder replaces by its sharded version) and
    drops its second output (the remapped ids, not asked for)."""

    def __init__(self, collection: ManagedCollisionEmbeddingCollection) -> None:
        super().__init__()
        self.collection = collection

    def forward(self, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        vectors, _ = self.collection(features)
        return vectors


class ManagedCollisionPart(TablePart):
    """One physical table of ``rows`` rows; ids are remapped by the collection, not here (``remap`` is the
    identity), so the part owns its torchrec module (``build_collection``)."""

    linear = False

    def __init__(self, table: LogicalTable, rows: int, options: ManagedCollisionOptions) -> None:
        super().__init__(table, [PhysicalTable(f"{table.name}__mc", rows, table.dim)])
        self.rows = rows
        self.options = options

    def build_collection(self, features: list[str], device: torch.device) -> nn.Module:
        """The managed-collision collection of this table for its physical ``features``."""
        config = TableConfig(name=self.physical[0].name, embedding_dim=self.table.dim, num_embeddings=self.rows,
                             feature_names=list(features))
        # The remapping state is small (a few int64 per row) and must be real even when the tables are on meta.
        state_device = torch.device("cpu") if device.type == "meta" else device
        module = ManagedCollisionModule(
            zch_size=self.rows, device=state_device, eviction_policy=eviction_policy(self.options.eviction),
            eviction_interval=self.options.eviction_interval, input_hash_size=self.table.rows,
            buckets=self.options.buckets, name=config.name)
        module.unsharded = True
        return ManagedLookup(ManagedCollisionEmbeddingCollection(
            EmbeddingCollection(tables=[config], device=device),
            ManagedCollisionCollection({config.name: module}, [config])))


def managed_rows(table: LogicalTable, options: ManagedCollisionOptions) -> int:
    """zch_size (or rows / ratio) rounded up to whole buckets of at least 2 rows (a shard's last is its miss
    row)."""
    rows = options.zch_size or math.ceil(table.rows / options.ratio)
    return max(2, math.ceil(rows / options.buckets)) * options.buckets


@register_scheme("mc", ManagedCollisionOptions)
def build(table: LogicalTable, options: ManagedCollisionOptions) -> TablePart:
    return ManagedCollisionPart(table, managed_rows(table, options), options)
