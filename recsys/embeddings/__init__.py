"""Embedding schemes by name: how a Schema's tables become the module that embeds sparse and sequence features.

A scheme embeds one *logical* table (a schema table: its rows, its dim, the
features that look it up) with *physical* torchrec tables plus cheap index maths:
``hash`` maps ids into fewer rows, ``qr`` composes a vector from a quotient and a
remainder table, ``unified`` lets several logical tables share one physical table.
Schemes are chosen per table (``embedding.scheme`` the default,
``embedding.tables.<table>.scheme`` an override; ``recsys.config.EmbeddingConfig``),
so one model can mix them. Every physical table lives in one of the module's
torchrec collections (``EmbeddingBagCollection`` for pooled lookups,
``EmbeddingCollection`` for per-id ones), so the sharding planner sees and shards
them and fbgemm's fused optimizers train them, whatever model uses them.

The module built by ``build_embeddings`` takes the batch's KeyedJaggedTensor and
returns ``Embedded``: pooled vectors for every sparse and sequence feature (a
torchrec ``KeyedTensor``; sequences pooled as the schema says, mean by default)
and, for each sequence feature, its un-pooled jagged vectors (a torchrec
``JaggedTensor``), as DIN-style models attend over a history. A history and its
target item (``hist_item_id`` and ``item_id``) are looked up in one table, so
their vectors are comparable.

The module exposes ``feature_names`` (the pooled KeyedTensor's key order),
``embedding_dims`` (per pooled key), ``sequence_names``, ``feature_tables``
(feature → logical table), ``physical_tables`` (logical table → its physical
tables) and ``schemes`` (logical table → scheme name). Adding a scheme is one new
file in this package that calls ``register_scheme`` with a ``TablePart`` builder;
it is imported automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recsys.config import EmbeddingConfig
from recsys.errors import RecsysError
from recsys.schema import Schema, describe_validation_error


@dataclass
class Embedded:
    """What an embedding module returns for a batch of B rows.

    pooled:    keys ``module.feature_names``, values (B, Σ embedding_dims): one vector per sparse feature and
               per sequence feature (its history pooled).
    sequences: per sequence feature, values (Σ lengths, dim) with lengths (B,): the history's vectors, newest
               first, unpadded.
    """

    pooled: KeyedTensor
    sequences: dict[str, JaggedTensor]


@dataclass(frozen=True)
class LogicalTable:
    """A schema table as a scheme sees it: ids in [0, rows), vectors of ``dim``."""

    name: str
    rows: int
    dim: int
    features: tuple[str, ...]
    per_id: bool  # a sequence looks it up: every id's vector is needed, not only pooled sums


@dataclass(frozen=True)
class PhysicalTable:
    """A torchrec table a scheme creates. Tables of one ``shared`` name (Unified Embedding's) are one table
    whose rows are the sum of what each logical table brings."""

    name: str
    rows: int
    dim: int
    shared: bool = False


class TablePart(nn.Module):
    """One logical table as its scheme embeds it: ids → per-physical-table ids → one vector.

    ``remap`` is the index maths (ids of one feature → ids into each physical table, same length);
    ``combine`` turns the physical tables' vectors into the logical one, either per id (N, dim_j), with the
    logical ``ids`` (N,), or on pooled sums (B, dim_j) when ``linear`` (it then commutes with sum pooling, so
    fbgemm pools inside the lookup, and ``ids`` is None). A part that needs the ids sets ``linear = False``.
    The default is the identity: one full table.
    """

    linear: bool = True
    scheme: str = "standard"  # set by ``build_part``

    def __init__(self, table: LogicalTable, physical: list[PhysicalTable]) -> None:
        super().__init__()
        self.table = table
        self.physical = physical

    @property
    def identity(self) -> bool:
        return type(self).remap is TablePart.remap and [p.name for p in self.physical] == [self.table.name]

    @property
    def parameter_count(self) -> int:
        """Embedding weights this table keeps, the count a memory budget limits (a sparse scheme's active ones)."""
        return sum(t.rows * t.dim for t in self.physical)

    def bind(self, rows: dict[str, int]) -> None:
        """The final row count of every physical table (a shared table's is known once all are built)."""

    def remap(self, feature: str, ids: torch.Tensor) -> list[torch.Tensor]:
        return [ids]

    def combine(self, vectors: list[torch.Tensor], ids: torch.Tensor | None) -> torch.Tensor:
        return vectors[0]


class SchemeOptions(BaseModel):
    """Options every scheme takes; a scheme's own class adds its knobs (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ratio: float = Field(1.0, ge=1, description="memory divisor against the full table")


PartBuilder = Callable[[LogicalTable, Any], TablePart]


@dataclass(frozen=True)
class SchemeSpec:
    name: str
    options: type[SchemeOptions]
    build: PartBuilder


_SCHEMES: dict[str, SchemeSpec] = {}


def register_scheme(name: str, options: type[SchemeOptions] = SchemeOptions) -> Callable[[PartBuilder], PartBuilder]:
    def add(build: PartBuilder) -> PartBuilder:
        if name in _SCHEMES:
            raise ValueError(f"embedding scheme '{name}' is registered twice")
        _SCHEMES[name] = SchemeSpec(name, options, build)
        return build
    return add


def scheme_names() -> list[str]:
    return sorted(_SCHEMES)


def scheme_spec(name: str, where: str = "embedding.scheme") -> SchemeSpec:
    if name not in _SCHEMES:
        raise RecsysError(f"{where}: unknown scheme '{name}'; known: {', '.join(scheme_names())}")
    return _SCHEMES[name]


def logical_tables(schema: Schema, config: EmbeddingConfig) -> dict[str, tuple[LogicalTable, dict[str, Any]]]:
    """Every table some feature looks up, with its resolved settings (``EmbeddingConfig.for_table``)."""
    unknown = sorted(set(config.tables) - {t.name for t in schema.tables})
    if unknown:
        raise RecsysError(f"embedding.tables: unknown table '{unknown[0]}'; tables: "
                          f"{', '.join(t.name for t in schema.tables)}")
    per_id = {f.table for f in schema.sequences}
    out = {}
    for table in schema.tables:
        features = tuple(f for f in schema.sparse_keys if schema.feature_table(f).name == table.name)
        if not features:
            continue
        assert table.cardinality is not None  # resolved schema
        settings = config.for_table(table.name)
        where = "embedding.scheme" if table.name not in config.tables else f"embedding.tables.{table.name}.scheme"
        accepted = scheme_spec(settings["scheme"], where).options.model_fields
        own = config.tables[table.name].model_dump(exclude_none=True) if table.name in config.tables else {}
        # a section-wide option (embedding.operation) is for the tables whose scheme takes it
        settings = {k: v for k, v in settings.items()
                    if k in ("scheme", "dim") or k in accepted or k in own}
        dim = settings.pop("dim") or table.embedding_dim
        out[table.name] = (LogicalTable(table.name, table.cardinality, dim, features, table.name in per_id),
                           settings)
    return out


def build_part(table: LogicalTable, settings: dict[str, Any]) -> TablePart:
    """The table's part by its scheme, the settings checked by the scheme's options class."""
    settings = dict(settings)
    where = f"embedding.tables.{table.name}"
    spec = scheme_spec(settings.pop("scheme"), f"{where}.scheme")
    try:
        options = spec.options.model_validate(settings)
    except ValidationError as exc:
        raise RecsysError(f"{where} (scheme {spec.name}): {describe_validation_error(exc, settings)}") from None
    part = spec.build(table, options)
    part.scheme = spec.name
    return part


def build_embeddings(schema: Schema, config: EmbeddingConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The module embedding the schema's sparse and sequence features with each table's scheme.

    All tables standard: ``StandardEmbeddings`` (full tables, fbgemm pooling, no index maths); otherwise
    ``MixedEmbeddings`` over every table's part.
    """
    schema.require_resolved("schema")
    if not schema.sparse_keys:
        raise RecsysError("schema: no sparse or sequence features to embed")
    tables = logical_tables(schema, config)
    used = sorted({settings["scheme"] for _, settings in tables.values()})
    for key in config.model_extra or {}:
        if not any(key in scheme_spec(name).options.model_fields for name in used):
            raise RecsysError(f"embedding.{key}: no table's scheme takes this option (schemes in use: "
                              f"{', '.join(used)}); see each scheme's options in recsys/embeddings/")
    from recsys.embeddings.mixed import MixedEmbeddings
    from recsys.embeddings.standard import StandardEmbeddings

    if all(settings["scheme"] == "standard" for _, settings in tables.values()):
        for table, settings in tables.values():
            build_part(table, settings)  # checks the options
        return StandardEmbeddings(schema, config, torch.device(device))
    parts = {name: build_part(table, settings) for name, (table, settings) in tables.items()}
    return MixedEmbeddings(schema, parts, torch.device(device))


def embedding_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, EmbeddingBagCollection | EmbeddingCollection)]


def _tables_of(module: nn.Module) -> dict[str, nn.Module]:
    """A torchrec collection's per-table modules, by table name."""
    return dict(module.embedding_bags.items() if isinstance(module, EmbeddingBagCollection)
                else module.embeddings.items())


def embedding_tables(model: nn.Module) -> dict[str, tuple[str, str]]:
    """Every embedding table's weight, by its parameter name in ``model``: (collection's module path, table name).

    Read from the modules (which parameter is which table's), never built from names, so it holds for any
    collection or scheme. Names are those of the unsharded model, which are also the sharded model's state-dict
    keys and the artifact's weight names.
    """
    owners = {id(parameter): (path, table) for path, module in embedding_modules(model)
              for table, lookup in _tables_of(module).items() for parameter in lookup.parameters()}
    return {name: owners[id(parameter)] for name, parameter in model.named_parameters() if id(parameter) in owners}


def table_names(model: nn.Module) -> list[str]:
    return [table for _, module in embedding_modules(model) for table in _tables_of(module)]


def table_users(model: nn.Module) -> dict[str, list[str]]:
    """Physical table → the logical tables it embeds (itself for a full table; several for a shared one)."""
    users: dict[str, list[str]] = {}
    for module in model.modules():
        for logical, physical in (getattr(module, "physical_tables", None) or {}).items():
            for name in physical:
                users.setdefault(name, []).append(logical)
    return {name: users.get(name, [name]) for name in table_names(model)}


def logical_of(model: nn.Module) -> dict[str, str]:
    """Physical table → the logical table it embeds; a shared table maps to the first logical table using it."""
    return {name: users[0] for name, users in table_users(model).items()}


def model_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the embedding tables (every torchrec collection's parameters and buffers) and of the rest,
    as the model holds them (meta tensors count their size)."""
    def size(module: nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])

    tables = sum(size(m) for _, m in embedding_modules(model))
    return {"embedding_bytes": tables, "dense_bytes": size(model) - tables}


def embedding_parameters(model: nn.Module) -> int:
    """Embedding weights the model's tables keep (``TablePart.parameter_count`` summed; full tables' sizes)."""
    parts = [m for m in model.modules() if isinstance(m, TablePart)]
    if parts:
        return sum(part.parameter_count for part in parts)
    return sum(p.numel() for _, m in embedding_modules(model) for p in m.parameters())


def full_table_bytes(schema: Schema, config: EmbeddingConfig) -> int:
    """Bytes of full fp32 tables of the configured dims: what the schemes' ratios divide."""
    return sum(table.rows * table.dim * 4 for table, _ in logical_tables(schema, config).values())


@torch.no_grad()
def table_vectors(module: nn.Module, table: str, ids: torch.Tensor) -> torch.Tensor:
    """(N, dim) vectors the embedding module gives ids of logical ``table`` (any scheme): each id is looked up
    alone through the table's first feature, so the result is the vector a model sees for it."""
    keys: list[str] = list(module.input_names)
    feature = next(f for f, t in module.feature_tables.items() if t == table)
    rows = ids.numel()
    lengths = torch.zeros(len(keys), rows, dtype=torch.int64)
    lengths[keys.index(feature)] = 1
    kjt = KeyedJaggedTensor(keys=keys, values=ids.to(torch.int64), lengths=lengths.flatten(), stride=rows)
    return module(kjt).pooled[feature]


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
