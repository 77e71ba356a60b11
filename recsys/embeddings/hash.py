"""``hash``: the hashing trick — ids hashed into ``rows / ratio`` rows of one table, colliding ids share a vector.

Weinberger et al., "Feature Hashing for Large Scale Multitask Learning", ICML 2009;
the baseline every compositional scheme is compared with. The hash is a universal
one, ``((a·id + b) mod p) mod rows`` with p = 2³¹ − 1 and (a, b) drawn from the
table's name, so a table hashes the same way in training, export and serving, and
the features sharing a table (an item and its history) share its rows.
"""

from __future__ import annotations

import math
import zlib

import torch

from recsys.embeddings import LogicalTable, PhysicalTable, SchemeOptions, TablePart, register_scheme

PRIME = (1 << 31) - 1


def hash_coefficients(key: str) -> tuple[int, int]:
    """(a, b) of the universal hash for ``key``: 1 <= a < p, 0 <= b < p, fixed by the name."""
    a = zlib.crc32(f"a/{key}".encode()) % (PRIME - 1) + 1
    b = zlib.crc32(f"b/{key}".encode()) % PRIME
    return a, b


def hashed(ids: torch.Tensor, a: int, b: int, rows: int) -> torch.Tensor:
    """Row of each id (int64, ids < 2³¹ so a·id fits): ((a·id + b) mod p) mod rows."""
    return (ids.to(torch.int64) * a + b) % PRIME % rows


def hashed_rows(table: LogicalTable, ratio: float) -> int:
    return max(1, math.ceil(table.rows / ratio))


class HashPart(TablePart):
    def __init__(self, table: LogicalTable, rows: int) -> None:
        super().__init__(table, [PhysicalTable(f"{table.name}__hash", rows, table.dim)])
        self.a, self.b = hash_coefficients(table.name)
        self.rows = rows

    def remap(self, feature: str, ids: torch.Tensor) -> list[torch.Tensor]:
        return [hashed(ids, self.a, self.b, self.rows)]


@register_scheme("hash", SchemeOptions)
def build(table: LogicalTable, options: SchemeOptions) -> TablePart:
    return HashPart(table, hashed_rows(table, options.ratio))
