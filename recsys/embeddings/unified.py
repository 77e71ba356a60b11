"""``unified``: Unified Embedding — several tables multiplexed into one shared table by their own hashes.

Coleman et al., "Unified Embedding: Battle-Tested Feature Representations for
Web-Scale ML Systems", NeurIPS 2023. Every table of a ``group`` hashes its ids
(a universal hash keyed by the table's name, as ``hash`` does) into one physical
table ``unified__<group>`` whose rows are the sum of each member's ``rows / ratio``:
collisions are spread over features, and a large table is sharded like any other.
Differences from the paper: one lookup per feature (the paper's multi-probe
variant, several hashes per feature summed, is not implemented), and groups are
named in the config (``embedding.tables.<t>.group``) rather than chosen by a
search; tables of one group need one dim.
"""

from __future__ import annotations

import torch
from pydantic import Field

from recsys.embeddings import LogicalTable, PhysicalTable, SchemeOptions, TablePart, register_scheme
from recsys.embeddings.hash import hash_coefficients, hashed, hashed_rows


class UnifiedOptions(SchemeOptions):
    group: str = Field("all", pattern=r"^[A-Za-z0-9_]+$", description="tables of one group share a table")


class UnifiedPart(TablePart):
    def __init__(self, table: LogicalTable, group: str, rows: int) -> None:
        super().__init__(table, [PhysicalTable(f"unified__{group}", rows, table.dim, shared=True)])
        self.a, self.b = hash_coefficients(table.name)
        self.rows = rows  # the shared table's, once bound

    def bind(self, rows: dict[str, int]) -> None:
        self.rows = rows[self.physical[0].name]

    def remap(self, feature: str, ids: torch.Tensor) -> list[torch.Tensor]:
        return [hashed(ids, self.a, self.b, self.rows)]


@register_scheme("unified", UnifiedOptions)
def build(table: LogicalTable, options: UnifiedOptions) -> TablePart:
    return UnifiedPart(table, options.group, hashed_rows(table, options.ratio))
