"""``dnis``: differentiable neural input search — a soft selection over each table's dims per frequency bucket.

Cheng et al., "Differentiable Neural Input Search for Recommender Systems",
arXiv:2006.04466 (2020). A table's ids are cut into ``buckets`` by frequency;
search mode multiplies each id's full vector by a learnable selection vector of
its bucket, ``v = e[id] ⊙ α[bucket(id)]`` (α: buckets × dim, initialised to 1),
and ``recsys embeddings search`` (``recsys.train.dnis_search``) learns α on
validation batches while the model learns on training batches, then prunes the
(bucket, dim) entries of least magnitude to a parameter budget. Final mode
(``dims`` given, one per bucket) is what the search chose: one table of ``dims[b]``
columns per bucket, projected back to the table's dim by the bucket's own linear
map (no bias), so models that need one dim (DLRM's dot interaction) take it as
is; a bucket of dim 0 has no table and gives zero vectors.

Buckets: vocabularies are sorted by descending frequency (index 0 the OOV row),
so a bucket is an id range. ``bounds`` (``[0, …, rows]``, increasing) sets the
ranges; unset, the ids are split into ``buckets`` ranges of equal numbers of ids
(the head bucket then holds the frequent ids, the tail ones the rare). The search
writes the bounds beside the dims, so a chosen config does not depend on them.

``ratio`` does not shrink a search-mode table (it is a full table): it is the
budget the search prunes to (full / ratio). A final-mode table's size is set by
its dims. Differences from the paper: the chosen dims are a count per bucket
(the model is retrained from scratch, so which columns survived does not matter);
each bucket of reduced dim has its own projection (the paper projects to a
common dim only where the model needs one); the α step uses Adam rather than the
paper's gradient normalisation.
"""

from __future__ import annotations

import itertools

import torch
from pydantic import Field, model_validator
from torch import nn

from recsys.embeddings import LogicalTable, PhysicalTable, SchemeOptions, TablePart, register_scheme
from recsys.errors import RecsysError


class DnisOptions(SchemeOptions):
    buckets: int = Field(4, ge=1, le=64, description="frequency buckets (id ranges) of each table")
    dims: list[int] | None = Field(None, description="per bucket, its dim (0 prunes it); unset: search mode")
    bounds: list[int] | None = Field(None, description="the buckets' id ranges [0, b1, ..., rows]; unset: equal "
                                     "numbers of ids per bucket")

    @model_validator(mode="after")
    def _consistent(self) -> DnisOptions:
        if self.dims is not None and any(d < 0 for d in self.dims):
            raise ValueError(f"dims: {self.dims} has a negative dim")
        bounds = self.bounds
        rising = bounds is not None and len(bounds) >= 2 and bounds[0] == 0 \
            and all(a < b for a, b in itertools.pairwise(bounds))
        if bounds is not None and not rising:
            raise ValueError(f"bounds: {self.bounds} should rise strictly from 0 to the table's rows")
        return self


def bucket_bounds(rows: int, buckets: int) -> list[int]:
    """[0, …, rows]: ``min(buckets, rows)`` id ranges of equal numbers of ids (±1)."""
    count = max(1, min(buckets, rows))
    return [rows * b // count for b in range(count + 1)]


def table_bounds(table: LogicalTable, options: DnisOptions) -> list[int]:
    """The table's bucket bounds, checked against its rows and dims."""
    where = f"embedding.tables.{table.name}"
    bounds = options.bounds if options.bounds is not None else bucket_bounds(table.rows, options.buckets)
    if bounds[-1] != table.rows:
        raise RecsysError(f"{where}.bounds: ends at {bounds[-1]} but the table has {table.rows} rows (were the "
                          "dims searched on other data?)")
    if options.dims is not None:
        if len(options.dims) != len(bounds) - 1:
            raise RecsysError(f"{where}.dims: {len(options.dims)} dims for {len(bounds) - 1} buckets")
        odd = [d for d in options.dims if d % 4 and d != table.dim]
        if odd:
            raise RecsysError(f"{where}.dims: {odd[0]} is not a multiple of 4 (fbgemm's tables need dims in "
                              "multiples of 4)")
        if max(options.dims) > table.dim:
            raise RecsysError(f"{where}.dims: {max(options.dims)} is above the table's dim {table.dim}")
        if not any(options.dims):
            raise RecsysError(f"{where}.dims: every bucket is pruned, the feature would be a constant; "
                              "keep at least one dim")
    return bounds


class DnisPart(TablePart):
    """Search mode (``dims`` None): the full table, each id's vector times its bucket's α.
    Final mode: one table per kept bucket, ids remapped to the bucket's rows, projected to the table's dim.

    combine: vectors per physical table (N, dim_j) and the logical ids (N,) → (N, dim).
    """

    linear = False  # the bucket of each id decides its α or its projection

    def __init__(self, table: LogicalTable, options: DnisOptions) -> None:
        bounds = table_bounds(table, options)
        self.dims: list[int] | None = options.dims
        if self.dims is None:
            # the full table, named apart from a standard one so the plan lists it under its scheme
            physical = [PhysicalTable(f"{table.name}__dnis", table.rows, table.dim)]
        else:
            physical = [PhysicalTable(f"{table.name}__dnis{b}", bounds[b + 1] - bounds[b], d)
                        for b, d in enumerate(self.dims) if d > 0]
        super().__init__(table, physical)
        self.bounds = bounds
        # interior bounds: bucket(id) = the number of them <= id; not saved (recomputed from the config)
        self.register_buffer("edges", torch.tensor(bounds[1:-1], dtype=torch.int64), persistent=False)
        if self.dims is None:
            self.alpha = nn.Parameter(torch.ones(len(bounds) - 1, table.dim))  # (buckets, dim)
            self.kept: list[int] = []
            self.projections = nn.ModuleDict()
        else:
            self.alpha = None
            self.kept = [b for b, d in enumerate(self.dims) if d > 0]
            self.projections = nn.ModuleDict({str(b): nn.Linear(self.dims[b], table.dim, bias=False)
                                              for b in self.kept if self.dims[b] != table.dim})

    @property
    def searching(self) -> bool:
        return self.alpha is not None

    def bucket(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) ids → (N,) bucket of each."""
        return torch.bucketize(ids.to(torch.int64), self.edges, right=True)

    def remap(self, feature: str, ids: torch.Tensor) -> list[torch.Tensor]:
        if self.searching:
            return [ids]
        ids = ids.to(torch.int64)
        # every id is looked up in every kept bucket's table (its own row there, row 0 elsewhere, masked out in
        # combine): torchrec needs one id per table per input id
        out = []
        for b in self.kept:
            start, end = self.bounds[b], self.bounds[b + 1]
            inside = (ids >= start) & (ids < end)
            out.append(torch.where(inside, ids - start, torch.zeros_like(ids)))
        return out

    def combine(self, vectors: list[torch.Tensor], ids: torch.Tensor | None) -> torch.Tensor:
        assert ids is not None  # linear = False: the per-id path
        buckets = self.bucket(ids)  # (N,)
        if self.alpha is not None:
            return vectors[0] * self.alpha[buckets]  # (N, dim) ⊙ (N, dim)
        out = vectors[0].new_zeros(ids.numel(), self.table.dim)  # (N, dim); pruned buckets stay zero
        for b, vector in zip(self.kept, vectors):
            key = str(b)
            projected = self.projections[key](vector) if key in self.projections else vector  # (N, d_b) → (N, dim)
            out = torch.where((buckets == b).unsqueeze(1), projected, out)
        return out


@register_scheme("dnis", DnisOptions)
def build(table: LogicalTable, options: DnisOptions) -> TablePart:
    return DnisPart(table, options)
