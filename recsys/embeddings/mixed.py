"""Tables embedded by their own schemes in one module: each logical table's part maps ids, torchrec looks up.

Every part's physical tables go into shared torchrec collections, as the standard
scheme's do, so the planner shards them all together and one fbgemm lookup serves
many tables: an ``EmbeddingBagCollection`` (sum pooling inside the lookup) for the
parts whose ``combine`` is linear and whose table no sequence uses, and
``EmbeddingCollection``s (one per dim, as torchrec needs) for the rest, whose
vectors are combined per id and then pooled here.

The batch's KeyedJaggedTensor is rewritten once per forward: each feature of a
non-identity part becomes one feature per physical table (``C1`` → ``C1__0``,
``C1__1``) holding the part's remapped ids, with the same lengths. Full tables
keep their feature and table names, so their weights are named as the standard
scheme names them.

A part may own its torchrec module (``build_collection(features, device)``, e.g. a
managed-collision collection, which torchrec shards only as a whole): it is built
once for the part's physical features, holds the part's tables instead of the
shared collections, and its per-id vectors (``{feature: JaggedTensor}``) are
combined and pooled as an ``EmbeddingCollection``'s are.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig as TableConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recsys.embeddings import Embedded, PhysicalTable, TablePart
from recsys.embeddings.standard import pool
from recsys.errors import RecsysError
from recsys.schema import Pooling, Schema


def _merged(parts: dict[str, TablePart]) -> dict[str, PhysicalTable]:
    """Physical tables by name; a shared name's rows summed over the parts that bring it."""
    merged: dict[str, PhysicalTable] = {}
    for logical, part in parts.items():
        for table in part.physical:
            known = merged.get(table.name)
            if known is None:
                merged[table.name] = table
                continue
            if not (known.shared and table.shared):
                raise RecsysError(f"embedding: table '{logical}' creates a physical table '{table.name}' that "
                                  "another table already has; rename one of the tables")
            if known.dim != table.dim:
                raise RecsysError(f"embedding.tables.{logical}: shares table '{table.name}' of dim {known.dim} "
                                  f"with dim {table.dim}; tables sharing one need one dim")
            merged[table.name] = PhysicalTable(table.name, known.rows + table.rows, table.dim, shared=True)
    return merged


def _per_id_parts(parts: dict[str, TablePart]) -> set[str]:
    """Logical tables looked up per id: a sequence uses them or their combine is not linear, and every part
    that shares a physical table with one of them (a physical table is in one collection)."""
    chosen = {name for name, part in parts.items() if part.table.per_id or not part.linear}
    while True:
        tables = {t.name for name in chosen for t in parts[name].physical}
        grown = chosen | {name for name, part in parts.items() if any(t.name in tables for t in part.physical)}
        if grown == chosen:
            return chosen
        chosen = grown


class MixedEmbeddings(nn.Module):
    """Schema features → pooled vectors for all, jagged vectors for sequences, each table by its part.

    forward: KeyedJaggedTensor with keys ``schema.sparse_keys`` (B rows each) → ``Embedded``.
    """

    def __init__(self, schema: Schema, parts: dict[str, TablePart], device: torch.device) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        merged = _merged(parts)
        for part in parts.values():
            part.bind({t.name: merged[t.name].rows for t in part.physical})
        # a list, in the parts' order: every process must build (and shard) the owned modules in one order
        owners = [name for name, part in parts.items() if hasattr(part, "build_collection")]
        per_id = _per_id_parts(parts) | set(owners)
        poolings = {f.name: f.pooling for f in [*schema.sparse, *schema.sequences]}
        self.input_names: list[str] = list(schema.sparse_keys)
        self.feature_tables: dict[str, str] = {f: schema.feature_table(f).name for f in self.input_names}
        self.feature_names: list[str] = list(self.input_names)
        self.embedding_dims: list[int] = [parts[self.feature_tables[f]].table.dim for f in self.feature_names]
        self.sequence_names: list[str] = [f.name for f in schema.sequences]
        self.physical_tables: dict[str, list[str]] = {n: [t.name for t in p.physical] for n, p in parts.items()}
        self.schemes: dict[str, str] = {n: p.scheme for n, p in parts.items()}
        # per input feature: its physical features (one per physical table of its part), and where they go
        routes: list[Route] = []
        features_of: dict[str, list[str]] = {name: [] for name in merged}
        for feature in self.input_names:
            table = self.feature_tables[feature]
            part = parts[table]
            names = [feature] if part.identity else [f"{feature}__{j}" for j in range(len(part.physical))]
            for name, physical in zip(names, part.physical):
                features_of[physical.name].append(name)
            routes.append((feature, table, names, table in per_id))
        per_id_tables = {t.name for name in per_id for t in parts[name].physical}
        owned_tables = {t.name for name in owners for t in parts[name].physical}
        bags = [EmbeddingBagConfig(name=t.name, embedding_dim=t.dim, num_embeddings=t.rows,
                                   feature_names=features_of[t.name], pooling=PoolingType.SUM)
                for t in merged.values() if t.name not in per_id_tables]
        by_dim: dict[int, list[TableConfig]] = {}
        for t in merged.values():
            if t.name in per_id_tables and t.name not in owned_tables:
                by_dim.setdefault(t.dim, []).append(TableConfig(name=t.name, embedding_dim=t.dim,
                                                                num_embeddings=t.rows,
                                                                feature_names=features_of[t.name]))
        self.ebc = EmbeddingBagCollection(tables=bags, device=device) if bags else None
        self.ecs = nn.ModuleList(EmbeddingCollection(tables=tables, device=device) for tables in by_dim.values())
        self.owned = nn.ModuleDict({  # logical table → its own module
            name: parts[name].build_collection(  # type: ignore[operator]
                [f for t in parts[name].physical for f in features_of[t.name]], device) for name in owners})
        mean = {f for f in self.input_names if poolings[f] is Pooling.MEAN}
        self.remap = _Remap(parts, routes, all(part.identity for part in parts.values()))
        self.combine = _Combine(parts, routes, self.feature_names, self.embedding_dims, self.sequence_names, mean)

    def forward(self, features: KeyedJaggedTensor) -> Embedded:
        physical = self.remap(features)
        bags = self.ebc(physical) if self.ebc is not None else None
        return self.combine(features, bags, [*(ec(physical) for ec in self.ecs),
                                             *(module(physical) for module in self.owned.values())])


# Route: (input feature, its logical table, its physical features, looked up per id)
Route = tuple[str, str, list[str], bool]


class _Remap(nn.Module):
    """The batch with each feature of a non-identity part replaced by one feature per physical table, holding the
    part's remapped ids with the same lengths. A module without torchrec collections, so torchrec's pipeline
    tracer keeps it a leaf (the parts are held unregistered: they are the embedding module's)."""

    def __init__(self, parts: dict[str, TablePart], routes: list[Route], identity: bool) -> None:
        super().__init__()
        self._parts, self._routes, self._identity = dict(parts), routes, identity

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        if self._identity:
            return features
        rows = features.stride()
        values = features.values().split(features.length_per_key())
        lengths = features.lengths().view(len(self._routes), rows)
        keys: list[str] = []
        parts_values: list[torch.Tensor] = []
        parts_lengths: list[torch.Tensor] = []
        for index, (feature, table, names, _) in enumerate(self._routes):
            mapped = self._parts[table].remap(feature, values[index]) if names != [feature] else [values[index]]
            for name, ids in zip(names, mapped):
                keys.append(name)
                parts_values.append(ids)
                parts_lengths.append(lengths[index])
        return KeyedJaggedTensor(keys=keys, values=torch.cat(parts_values), lengths=torch.cat(parts_lengths),
                                 stride=rows)


class _Combine(nn.Module):
    """Each feature's logical vectors from its physical ones (per id, then pooled, or on fbgemm's pooled sums), in
    ``feature_names`` order, and the sequences' jagged vectors. A leaf for torchrec's pipeline tracer, like
    ``_Remap``."""

    def __init__(self, parts: dict[str, TablePart], routes: list[Route], feature_names: list[str], dims: list[int],
                 sequence_names: list[str], mean: set[str]) -> None:
        super().__init__()
        self._parts, self._routes = dict(parts), routes
        self._feature_names, self._dims, self._sequence_names, self._mean = feature_names, dims, sequence_names, mean

    def forward(self, features: KeyedJaggedTensor, bags: KeyedTensor | None,
                unpooled: list[dict[str, JaggedTensor]]) -> Embedded:
        pooled_bags = bags.to_dict() if bags is not None else {}
        jagged = {name: value for part in unpooled for name, value in part.items()}
        rows = features.stride()
        lengths = features.lengths().view(len(self._routes), rows)
        offsets = [0, *itertools.accumulate(features.length_per_key())]
        pooled: list[torch.Tensor] = []
        sequences: dict[str, JaggedTensor] = {}
        for index, (feature, table, names, per_id) in enumerate(self._routes):
            part = self._parts[table]
            mean = feature in self._mean
            if per_id:
                ids = features.values()[offsets[index]:offsets[index + 1]]
                vectors = part.combine([jagged[name].values() for name in names], ids)  # (Σ lengths, dim)
                value = JaggedTensor(values=vectors, lengths=lengths[index])
                if feature in self._sequence_names:
                    sequences[feature] = value
                pooled.append(pool(value, rows, mean))
                continue
            summed = part.combine([pooled_bags[name] for name in names], None)  # (B, dim): sums pooled by fbgemm
            if mean:
                summed = summed / lengths[index].clamp(min=1).to(summed.dtype).unsqueeze(1)
            pooled.append(summed)
        return Embedded(KeyedTensor(keys=self._feature_names, length_per_key=self._dims,
                                    values=torch.cat(pooled, dim=1)), sequences)
