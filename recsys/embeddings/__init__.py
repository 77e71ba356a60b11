"""Embedding schemes by name: how a Schema's tables become the module that pools sparse features.

A scheme is a callable ``(schema, config, device) -> nn.Module`` whose forward takes
the batch's KeyedJaggedTensor and returns a torchrec ``KeyedTensor`` of pooled
embeddings, one key per sparse and sequence feature; the module exposes
``feature_names`` (the KeyedTensor's key order) and ``embedding_dims`` (per key).
Schemes build their tables from torchrec modules, so the sharding planner sees and
shards them whatever model uses them. Adding a scheme is one new file in this
package that calls ``register_scheme``; it is imported automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import torch
from torch import nn

from recsys.config import EmbeddingConfig
from recsys.errors import RecsysError
from recsys.schema import Schema

EmbeddingScheme = Callable[[Schema, EmbeddingConfig, torch.device], nn.Module]

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


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
