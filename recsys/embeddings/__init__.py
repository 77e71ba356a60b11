"""Embedding schemes by name: how a Schema's tables become the module that embeds sparse and sequence features.

A scheme is a callable ``(schema, config, device) -> nn.Module`` whose forward takes
the batch's KeyedJaggedTensor and returns ``Embedded``: pooled vectors for every
sparse and sequence feature (a torchrec ``KeyedTensor``; sequences pooled as the
schema says, mean by default) and, for each sequence feature, its un-pooled jagged
vectors (a torchrec ``JaggedTensor``), as DIN-style models attend over a history.
A history and its target item (``hist_item_id`` and ``item_id``) are looked up in
one table, so their vectors are comparable.

The module exposes ``feature_names`` (the pooled KeyedTensor's key order),
``embedding_dims`` (per pooled key), ``sequence_names`` and ``feature_tables``
(feature → table). Schemes build their tables from torchrec modules
(``EmbeddingBagCollection``, ``EmbeddingCollection``), so the sharding planner sees
and shards them whatever model uses them, and every table and parameter name is
read from those modules (``embedding_tables``). Adding
a scheme is one new file in this package that calls ``register_scheme``; it is
imported automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedTensor

from recsys.config import EmbeddingConfig
from recsys.errors import RecsysError
from recsys.schema import Schema

EmbeddingScheme = Callable[[Schema, EmbeddingConfig, torch.device], nn.Module]


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


_SCHEMES: dict[str, EmbeddingScheme] = {}


def register_scheme(name: str) -> Callable[[EmbeddingScheme], EmbeddingScheme]:
    def add(scheme: EmbeddingScheme) -> EmbeddingScheme:
        if name in _SCHEMES:
            raise ValueError(f"embedding scheme '{name}' is registered twice")
        _SCHEMES[name] = scheme
        return scheme
    return add


def scheme_names() -> list[str]:
    return sorted(_SCHEMES)


def build_embeddings(schema: Schema, config: EmbeddingConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The configured scheme's module for the schema's sparse and sequence features."""
    if config.scheme not in _SCHEMES:
        raise RecsysError(f"embedding.scheme: unknown scheme '{config.scheme}'; known: {', '.join(scheme_names())}")
    schema.require_resolved("schema")
    if not schema.sparse_keys:
        raise RecsysError("schema: no sparse or sequence features to embed")
    return _SCHEMES[config.scheme](schema, config, torch.device(device))


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


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
