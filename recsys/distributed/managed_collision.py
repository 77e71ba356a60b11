"""torchrec's sharded managed-collision embedding collection, with evicted rows reset on a CPU too.

When managed collisions give a row to a new id, torchrec resets the row's optimizer
state through ``fbgemm::reset_weight_momentum``, which fbgemm-gpu-cpu 1.8 has no CPU
kernel for (NotImplementedError on the first admitted id), then re-draws the row's
weights. On a CPU this module does the same two steps with tensor ops on the
table-batched module's per-table views: every optimizer state of the rows (row-wise
Adagrad's accumulator, Adagrad's per-element one) is zeroed and the weights re-drawn
by the table's ``init_fn``. On other devices torchrec's own path runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torchrec.distributed.mc_embedding import (ManagedCollisionEmbeddingCollectionSharder,
                                               ShardedManagedCollisionEmbeddingCollection)
from torchrec.distributed.types import ParameterSharding, ShardingEnv
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection


class CpuEvictingManagedCollisionEmbeddingCollection(ShardedManagedCollisionEmbeddingCollection):
    def _evict(self, evictions_per_table: dict[str, torch.Tensor | None]) -> None:  # type: ignore[override]
        if self._device.type != "cpu":
            super()._evict(evictions_per_table)
            return
        for table, rows in evictions_per_table.items():
            if rows is None or rows.numel() == 0:
                continue
            tbe, index = self._table_to_tbe_and_index[table]
            rows = rows.long()  # local rows of this process's shard
            with torch.no_grad():
                for state in tbe.split_optimizer_states()[int(index)]:
                    state[rows] = 0
                weight = self._embedding_module.embeddings.get_parameter(f"{table}.weight")
                init_fn = self._embedding_module._table_name_to_config[table].init_fn
                weight[rows] = init_fn(weight[rows])


class ManagedCollisionSharder(ManagedCollisionEmbeddingCollectionSharder):
    """torchrec's sharder for ``ManagedCollisionEmbeddingCollection``, building the module above."""

    def shard(self, module: ManagedCollisionEmbeddingCollection, params: dict[str, ParameterSharding],
              env: ShardingEnv, device: torch.device | None = None, module_fqn: str | None = None,
              **kwargs: Any) -> ShardedManagedCollisionEmbeddingCollection:
        return CpuEvictingManagedCollisionEmbeddingCollection(
            module, params, ec_sharder=self._e_sharder, mc_sharder=self._mc_sharder, env=env,  # type: ignore[arg-type]
            device=device or torch.device("cuda"))
