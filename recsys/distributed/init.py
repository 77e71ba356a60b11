"""Embedding initialisation that does not depend on the sharding plan.

torchrec initialises each shard on its own, so a table would start from other
values under another plan or process count. Here every table is drawn in fixed
chunks of rows, each from a generator seeded by (seed, table, chunk), and each
process fills only the rows and columns of its own shards: one process and W
processes, table-wise or column-wise, start from the same tables, and no process
ever holds a whole large table.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

_CHUNK_ROWS = 1 << 16


def _chunk(seed: int, table: str, index: int, rows: int, dim: int) -> torch.Tensor:
    """Rows [index * CHUNK, index * CHUNK + rows) of the table, uniform in ±sqrt(1 / table rows)."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{table}/{index}".encode()))
    return torch.rand(rows, dim, generator=generator)


def _fill(target: torch.Tensor, seed: int, table: str, total_rows: int, dim: int,
          row_offset: int, col_offset: int) -> None:
    """Write the table's values for rows/cols [offset, offset + size) of the full table into target."""
    bound = math.sqrt(1.0 / total_rows)
    rows, cols = target.shape
    first, last = row_offset // _CHUNK_ROWS, (row_offset + rows - 1) // _CHUNK_ROWS
    for index in range(first, last + 1):
        lo = index * _CHUNK_ROWS
        chunk = _chunk(seed, table, index, min(_CHUNK_ROWS, total_rows - lo), dim)
        a, b = max(row_offset, lo), min(row_offset + rows, lo + chunk.shape[0])
        values = chunk[a - lo:b - lo, col_offset:col_offset + cols] * (2 * bound) - bound
        target[a - row_offset:b - row_offset].copy_(values.to(target.dtype))


@torch.no_grad()
def init_embeddings(model: nn.Module, tables: dict[str, str], seed: int) -> None:
    """Fill the (sharded or replicated) embedding weights named in ``tables`` (state-dict key → table name)."""
    state = model.state_dict()
    for key, table in tables.items():
        value = state[key]
        if isinstance(value, ShardedTensor):
            total_rows, dim = value.size()
            for shard in value.local_shards():
                rows, cols = shard.metadata.shard_offsets
                _fill(shard.tensor, seed, table, total_rows, dim, rows, cols)
        else:
            _fill(value, seed, table, value.shape[0], value.shape[1], 0, 0)
