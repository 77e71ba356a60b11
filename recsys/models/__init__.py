"""Models by name. Each model is one file here that calls ``register_model``; it is imported automatically.

A model is built as ``build_model(name, schema, model_config, embedding_config)``
and its forward takes a ``Batch`` and returns logits (B,); what a logit means (its
loss, link and metrics) is the task's business (``recsys.tasks``). Models hold no
sharding or device code: ``recsys.distributed`` shards the torchrec embedding
modules they contain.

A model that embeds only some of the schema's sparse features (a retriever: ``mf``
looks up user_id and item_id alone) registers ``inputs(schema, config)``, the
features it uses: its embedding module then holds only their tables, so no table
is sharded, trained and exported for nothing. Its forward still takes batches
with every schema key (``select_features`` picks its own).

A model that can say why it scored a row as it did has ``explain(batch, top)``,
returning per row its ``top`` largest ``Contribution``s (``explains(model)``): the
ranking service answers ``"explain": true`` with them and the report counts them
over the test set. It must not change what forward computes.

A model that honours an interaction mask (``Schema.interactions``: the feature pairs
whose interactions it keeps, written by ``recsys features select`` with an
interaction selector) registers with ``interaction_mask=True``; ``build_model``
refuses a schema that sets a mask for any other model, so a mask is never
silently ignored.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import EmbeddingConfig
from recsys.embeddings import build_embeddings
from recsys.errors import RecsysError
from recsys.schema import Schema, describe_validation_error

ModelBuilder = Callable[[Schema, Any, nn.Module], nn.Module]
InputsOf = Callable[[Schema, Any], list[str]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_class: type[BaseModel]  # the ``model:`` section of the training config
    build: ModelBuilder  # (schema, validated config, embeddings module) → model
    inputs: InputsOf | None = None  # (schema, validated config) → the sparse features it embeds; None: all
    interaction_mask: bool = False  # honours ``Schema.interactions`` (keeps only those feature pairs)

    @property
    def retriever(self) -> bool:
        """A retriever (trains on implicit data, its forward gives PairScores), not a ranking model."""
        from recsys.models.retriever import RetrieverConfig  # the module imports this one

        return issubclass(self.config_class, RetrieverConfig)


@dataclass(frozen=True)
class Contribution:
    """What a prediction used: a feature ("C1"), an interaction ("C1×C2") or a history position
    ("hist_item_id[3]", 0 = newest), and the model's own measure of it (an attention weight, a gate)."""

    name: str
    weight: float


def explains(model: nn.Module) -> bool:
    return callable(getattr(model, "explain", None))


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, config_class: type[BaseModel], inputs: InputsOf | None = None,
                   interaction_mask: bool = False) -> Callable[[ModelBuilder], ModelBuilder]:
    def add(build: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = ModelSpec(name, config_class, build, inputs, interaction_mask)
        return build
    return add


def model_names() -> list[str]:
    return sorted(_MODELS)


def model_spec(name: str) -> ModelSpec:
    if name not in _MODELS:
        raise RecsysError(f"--model: unknown model '{name}'; known: {', '.join(model_names())}")
    return _MODELS[name]


def model_config(name: str, section: dict[str, Any]) -> BaseModel:
    """The ``model:`` section checked by the model's config class (unknown keys are errors)."""
    try:
        return model_spec(name).config_class.model_validate(section)
    except ValidationError as exc:
        raise RecsysError(f"model ({name}): {describe_validation_error(exc, section)}") from None


def build_model(name: str, schema: Schema, section: dict[str, Any], embedding: EmbeddingConfig,
                embedding_device: torch.device | str = "cpu") -> nn.Module:
    """The model with its embedding tables on ``embedding_device`` ('meta' lets the sharder allocate them)."""
    spec = model_spec(name)
    check_interaction_mask(name, schema)
    config = model_config(name, section)
    return spec.build(schema, config, build_embeddings(embedded_schema(name, schema, section), embedding,
                                                       embedding_device))


def check_interaction_mask(name: str, schema: Schema) -> None:
    """A schema with an interaction mask only goes to a model that honours one (one-line error otherwise)."""
    if schema.interactions is not None and not model_spec(name).interaction_mask:
        takers = [n for n in model_names() if _MODELS[n].interaction_mask]
        raise RecsysError(f"--model {name}: the schema sets an interaction mask (interactions: "
                          f"{len(schema.interactions)} pairs), which this model cannot honour; models that "
                          f"take one: {', '.join(takers) or 'none'} (or drop 'interactions' from the schema)")


def embedded_schema(name: str, schema: Schema, section: dict[str, Any]) -> Schema:
    """The part of the schema the model's embedding module covers (all of it unless the model has ``inputs``)."""
    spec = model_spec(name)
    if spec.inputs is None:
        return schema
    return embedding_schema(schema, spec.inputs(schema, model_config(name, section)))


def embedding_schema(schema: Schema, features: list[str]) -> Schema:
    """The schema with only ``features`` among its sparse and sequence features, and the tables they use."""
    unknown = sorted(set(features) - set(schema.sparse_keys))
    if unknown:
        raise RecsysError(f"schema: no sparse or sequence feature named '{unknown[0]}'; features: "
                          f"{', '.join(schema.sparse_keys)}")
    kept = set(features)
    tables = {schema.feature_table(f).name for f in kept}
    return schema.model_copy(update={
        "sparse": [f for f in schema.sparse if f.name in kept],
        "sequences": [f for f in schema.sequences if f.name in kept],
        "tables": [t for t in schema.tables if t.name in tables]}, deep=True)


def select_features(features: KeyedJaggedTensor, keys: list[str]) -> KeyedJaggedTensor:
    """The batch's KeyedJaggedTensor with only ``keys``, in that order (as is when it has exactly those)."""
    have = features.keys()
    if have == keys:
        return features
    return features.permute([have.index(key) for key in keys])


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
