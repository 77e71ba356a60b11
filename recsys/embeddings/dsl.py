"""``dsl``: Dynamic Sparse Learning — a table trained sparse from scratch under a fixed budget, pruned and regrown.

Wang et al., "Dynamic Sparse Learning: A Novel Paradigm for Efficient
Recommendation", WSDM 2024. The table keeps ``1 / ratio`` of its weights active (a
mask, random at the start); every ``update_every`` steps the smallest-magnitude
active weights are pruned and as many inactive ones grown, the fraction swapped
decaying from ``swap_fraction`` to 0 by a cosine over ``stop_fraction`` of the
run, so the active count never changes. A masked weight gets no gradient (the
forward multiplies it by 0), so fbgemm's fused optimizer trains the table as it is
and only the mask moves.

Differences from the paper: weights are grown at random (the paper grows by
gradient magnitude, which fbgemm's fused optimizers never materialise), and a grown
weight resumes from the value it held (its initial value if it was never active)
instead of zero. The mask is a buffer of this part, replicated on every process:
each process gathers the table and draws the same new mask from the same seed. The
table is stored dense, so ``embedding_bytes`` is a full table's; ``embedding_params``
(the active weights) is what the budget counts, and what a sparse export would store.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from pydantic import Field

from recsys.embeddings import LogicalTable, PhysicalTable, SchemeOptions, TablePart, register_scheme


class DSLOptions(SchemeOptions):
    update_every: int = Field(100, ge=1, description="training steps between prune-and-grow updates")
    swap_fraction: float = Field(0.3, gt=0, le=1, description="fraction of active weights swapped at first")
    stop_fraction: float = Field(0.75, gt=0, le=1, description="no updates after this fraction of the run")


def swap_fraction(step: int, total_steps: int, options: DSLOptions) -> float:
    """The fraction of active weights to swap at ``step``: a cosine from ``swap_fraction`` to 0 at the stop."""
    stop = options.stop_fraction * total_steps
    if step >= stop:
        return 0.0
    return options.swap_fraction / 2 * (1 + math.cos(math.pi * step / stop))


class DSLPart(TablePart):
    linear = False  # the mask is per id: looked up per id, masked, then pooled

    def __init__(self, table: LogicalTable, options: DSLOptions) -> None:
        super().__init__(table, [PhysicalTable(f"{table.name}__dsl", table.rows, table.dim)])
        self.options = options
        self.active_weights = max(1, round(table.rows * table.dim / options.ratio))
        generator = torch.Generator().manual_seed(zlib.crc32(f"dsl/{table.name}".encode()))
        mask = torch.zeros(table.rows * table.dim, dtype=torch.bool)
        mask[torch.randperm(mask.numel(), generator=generator)[:self.active_weights]] = True
        self.register_buffer("mask", mask.view(table.rows, table.dim))

    @property
    def parameter_count(self) -> int:
        return self.active_weights

    def combine(self, vectors: list[torch.Tensor], ids: torch.Tensor | None) -> torch.Tensor:
        assert ids is not None  # a non-linear part is always looked up per id
        return vectors[0] * self.mask[ids]  # (N, dim): the inactive weights are 0 and get no gradient

    @torch.no_grad()
    def update(self, step: int, total_steps: int, weight: Callable[[str], torch.Tensor]) -> int:
        """Prune-and-grow at ``step`` (every process, with the same full table): returns the weights swapped."""
        if step % self.options.update_every:
            return 0
        swap = int(swap_fraction(step, total_steps, self.options) * self.active_weights)
        inactive = self.mask.numel() - self.active_weights
        swap = min(swap, inactive)
        if swap == 0:
            return 0
        table = weight(self.physical[0].name).abs().flatten()  # (rows * dim,)
        mask = self.mask.view(-1)
        active = mask.nonzero().squeeze(1)
        pruned = active[table[active].topk(swap, largest=False).indices]
        candidates = (~mask).nonzero().squeeze(1)
        generator = torch.Generator().manual_seed(zlib.crc32(f"dsl/{self.table.name}/{step}".encode()))
        grown = candidates[torch.randperm(candidates.numel(), generator=generator)[:swap]]
        mask[pruned] = False
        mask[grown] = True
        return swap


@register_scheme("dsl", DSLOptions)
def build(table: LogicalTable, options: DSLOptions) -> TablePart:
    return DSLPart(table, options)
