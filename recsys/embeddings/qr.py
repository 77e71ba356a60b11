"""``qr``: compositional embeddings from complementary partitions — a distinct vector per id in few rows.

Shi et al., "Compositional Embeddings Using Complementary Partitions for
Memory-Efficient Recommendation Systems", KDD 2020. An id is written in a mixed
radix, ``id = d₀ + r₀·(d₁ + r₁·(d₂ + …))``; digit i indexes table i of ``rᵢ`` rows,
and the k vectors are combined by ``operation``: ``mult`` (element-wise product,
the paper's best), ``add``, or ``concat`` (each table holds a slice of the dim).
With ``partitions: 2`` this is the quotient-remainder trick: table 0 holds the
remainder ``id mod c`` and table 1 the quotient ``id div c``. The digits of
distinct ids differ, so (the partitions being complementary) no two ids share
every vector.

Sizes: the first k−1 radices are one ``c``, the last ``ceil(rows / c^(k−1))``;
``c`` is the smallest that keeps the tables within ``rows × dim / ratio``
elements, so the large quotient table takes the budget and each of its rows is
shared by only ``c^(k−1)`` ids. Below the smallest possible size (c ≈ rows^(1/k))
the tables take that size and ``budget_met`` is false. Differences from the paper:
path-based compositions (MLPs over the partitions) are not implemented; ``mult``
and sequence tables are looked up per id and pooled after the product, ``add``
and ``concat`` on bags are pooled inside fbgemm's lookup (they commute with sums).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from recsys.embeddings import LogicalTable, PhysicalTable, SchemeOptions, TablePart, register_scheme


class QROptions(SchemeOptions):
    operation: Literal["mult", "add", "concat"] = "mult"
    partitions: int = Field(2, ge=2, le=8, description="k complementary partitions (2: quotient-remainder)")


def radices(rows: int, partitions: int, budget_rows: float) -> list[int]:
    """Rows of each partition's table: [c] * (k - 1) + [ceil(rows / c^(k-1))], total at most ``budget_rows``
    when any c allows it, else the smallest total."""
    def sizes(c: int) -> list[int]:
        return [c] * (partitions - 1) + [max(1, math.ceil(rows / c ** (partitions - 1)))]

    low, high = 1, max(1, math.ceil(rows ** (1 / partitions)))  # total(c) decreases from 1 to about high
    if sum(sizes(high)) > budget_rows:
        best = min(range(max(1, high - 2), high + 3), key=lambda c: sum(sizes(c)))
        return sizes(best)
    while low < high:  # the smallest c whose total fits
        middle = (low + high) // 2
        if sum(sizes(middle)) <= budget_rows:
            high = middle
        else:
            low = middle + 1
    return sizes(low)


def split_dim(dim: int, parts: int) -> list[int]:
    """``dim`` in ``parts`` slices as even as possible (concat)."""
    return [dim // parts + (1 if i < dim % parts else 0) for i in range(parts)]


class QRPart(TablePart):
    def __init__(self, table: LogicalTable, options: QROptions) -> None:
        k = options.partitions
        dims = split_dim(table.dim, k) if options.operation == "concat" else [table.dim] * k
        if min(dims) < 1:
            raise ValueError(f"dim {table.dim} cannot be split over {k} partitions")
        budget_rows = table.rows * table.dim / options.ratio / (table.dim / k if options.operation == "concat"
                                                                 else table.dim)
        self.radices = radices(table.rows, k, budget_rows)
        super().__init__(table, [PhysicalTable(f"{table.name}__qr{i}", rows, dim)
                                 for i, (rows, dim) in enumerate(zip(self.radices, dims))])
        self.operation = options.operation
        self.linear = options.operation != "mult"
        self.budget_met = sum(r * d for r, d in zip(self.radices, dims)) <= table.rows * table.dim / options.ratio
        self.places = [math.prod(self.radices[:i]) for i in range(k)]  # the value of each digit's place

    def remap(self, feature: str, ids: torch.Tensor) -> list[torch.Tensor]:
        ids = ids.to(torch.int64)
        last = len(self.radices) - 1
        return [ids // place % radix if i < last else ids // place
                for i, (place, radix) in enumerate(zip(self.places, self.radices))]

    def combine(self, vectors: list[torch.Tensor], ids: torch.Tensor | None) -> torch.Tensor:
        if self.operation == "concat":
            return torch.cat(vectors, dim=1)
        out = vectors[0]
        for vector in vectors[1:]:
            out = out * vector if self.operation == "mult" else out + vector
        return out


@register_scheme("qr", QROptions)
def build(table: LogicalTable, options: QROptions) -> TablePart:
    return QRPart(table, options)
