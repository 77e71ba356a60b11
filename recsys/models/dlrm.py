"""DLRM: bottom MLP on dense features, pooled embeddings, pairwise interaction, top MLP.

Paper: Naumov et al., "Deep Learning Recommendation Model for Personalization and
Recommendation Systems", 2019 (arXiv:1906.00091). Built from torchrec's
``DenseArch`` and ``OverArch``; the embeddings come from ``recsys.embeddings`` (any
scheme, sharded by ``recsys.distributed``). Differences from the paper:

- sequence features (behaviour histories) are mean-pooled bags, one more vector in
  the interaction;
- ``interaction: dot`` uses ``kernels.interaction`` (the values of torchrec's
  ``InteractionArch``, as the op ``recsys::dlrm_interaction``, whose native CPU
  kernel reads the dense and sparse vectors in place and computes only the
  pairs); ``cat`` is the paper's
  concatenation variant;
- a schema without dense features skips the bottom MLP;
- tables of several dims (``embedding.tables.<t>.dim``) are projected to one
  (``layers.FieldMatrix``), as mixed-dimension embeddings do;
- an interaction mask (``Schema.interactions``, from ``recsys features select``
  with an interaction selector such as OptFeature) keeps only the named pairs'
  dot products, so the top MLP's input shrinks to D + kept pairs. A pair names
  sparse or sequence features; any dense feature's name stands for the
  bottom-MLP vector (DLRM merges all dense features into that one vector), so
  ("I1", "C3") keeps <dense, C3>, and a pair of two dense names keeps nothing.
  Only ``interaction: dot`` takes a mask.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torchrec.models.dlrm import DenseArch, OverArch

from kernels.interaction import dlrm_interaction, dot_interaction
from recsys.errors import RecsysError
from recsys.models import register_model
from recsys.models.layers import FieldMatrix
from recsys.schema import Schema
from recsys.types import Batch


class DLRMConfig(BaseModel):
    """The ``model:`` section for ``--model dlrm``."""

    model_config = ConfigDict(extra="forbid")

    bottom_mlp: list[int] = Field([64, 16], min_length=1, description="ends with the embedding dim")
    top_mlp: list[int] = Field([256, 64, 1], min_length=1, description="ends with 1")
    interaction: Literal["dot", "cat"] = "dot"

    @model_validator(mode="after")
    def _sizes(self) -> DLRMConfig:
        if any(size < 1 for size in [*self.bottom_mlp, *self.top_mlp]):
            raise ValueError("layer sizes must be at least 1")
        if self.top_mlp[-1] != 1:
            raise ValueError(f"top_mlp must end with 1 (one logit), got {self.top_mlp[-1]}")
        return self


class DLRM(nn.Module):
    """Batch → logits (B,).

        model = DLRM(schema, DLRMConfig(), embeddings)
        logits = model(batch)     # (B,)
    """

    def __init__(self, schema: Schema, config: DLRMConfig, embeddings: nn.Module) -> None:
        super().__init__()
        dims = set(embeddings.embedding_dims)
        self.has_dense = bool(schema.dense)
        if len(dims) == 1 and self.has_dense and config.bottom_mlp[-1] != next(iter(dims)):
            raise RecsysError(f"model.bottom_mlp must end with the embedding dim {next(iter(dims))}, "
                              f"got {config.bottom_mlp[-1]}")
        # tables of several dims are projected to the bottom MLP's output (or the widest)
        self.field_matrix = FieldMatrix(embeddings, config.bottom_mlp[-1] if self.has_dense and len(dims) > 1
                                        else None)
        self.dim = self.field_matrix.dim
        self.num_sparse = len(embeddings.feature_names)
        self.sparse_arch = embeddings
        self.dense_arch = DenseArch(len(schema.dense), config.bottom_mlp) if self.has_dense else None
        vectors = self.num_sparse + int(self.has_dense)
        self.interaction = config.interaction
        if self.interaction == "dot":
            over_in = vectors * (vectors - 1) // 2 + (self.dim if self.has_dense else 0)
        else:
            over_in = vectors * self.dim
        # the kept pairs' columns of the interaction output (None: all pairs); not in the state dict, as the
        # schema (saved with every artifact) rebuilds it
        keep = _mask_columns(schema, list(embeddings.feature_names), self.dim if self.has_dense else 0,
                             config.interaction)
        self.register_buffer("pair_columns", keep, persistent=False)
        self.kept_pairs = None if keep is None else len(keep) - (self.dim if self.has_dense else 0)
        if keep is not None:
            over_in = len(keep)
        if len(config.top_mlp) == 1:
            raise RecsysError("model.top_mlp needs at least one hidden layer before the final 1")
        self.over_arch = OverArch(over_in, config.top_mlp)

    def forward(self, batch: Batch) -> torch.Tensor:
        sparse = self.field_matrix(self.sparse_arch(batch.sparse))  # (B, F, D)
        dense = self.dense_arch(batch.dense) if self.dense_arch is not None else None  # (B, D)
        if self.interaction == "dot":
            # (B, D + P): the dense vector, then the dot products of [dense, sparse...] pairs
            features = dlrm_interaction(dense, sparse) if dense is not None else dot_interaction(sparse)
            if self.pair_columns is not None:
                features = features.index_select(1, self.pair_columns)
        else:
            vectors = torch.cat([dense.unsqueeze(1), sparse], dim=1) if dense is not None else sparse
            features = vectors.flatten(1)  # (B, (F + 1) * D)
        return self.over_arch(features).squeeze(1)  # (B,)


def _mask_columns(schema: Schema, sparse_names: list[str], dense_dim: int, interaction: str
                  ) -> torch.Tensor | None:
    """Columns of the dot interaction's output to keep for ``schema.interactions``: the dense vector's D
    columns (when there are dense features), then the kept pairs in the kernel's row-major order."""
    if schema.interactions is None:
        return None
    if interaction != "dot":
        raise RecsysError("model.interaction: the schema sets an interaction mask, which only 'dot' honours "
                          f"(got '{interaction}')")
    dense_names = {f.name for f in schema.dense}
    has_dense = dense_dim > 0
    vector = {name: i + int(has_dense) for i, name in enumerate(sparse_names)}  # 0: the bottom-MLP vector
    kept: set[tuple[int, int]] = set()
    for a, b in schema.interactions:
        ends = []
        for name in (a, b):
            if name in dense_names:
                ends.append(0)
            elif name in vector:
                ends.append(vector[name])
            else:
                raise RecsysError(f"schema interactions: '{name}' in ({a}, {b}) is not a feature DLRM embeds")
        i, j = sorted(ends)
        if i != j:
            kept.add((i, j))
    vectors = len(sparse_names) + int(has_dense)
    pairs = [(i, j) for i in range(vectors) for j in range(i + 1, vectors)]
    columns = list(range(dense_dim)) + [dense_dim + p for p, pair in enumerate(pairs) if pair in kept]
    if not columns:
        raise RecsysError("schema interactions: no pair of two different DLRM vectors is kept and there are no "
                          "dense features, so the top MLP would have no input")
    return torch.tensor(columns, dtype=torch.long)


@register_model("dlrm", DLRMConfig, interaction_mask=True)
def build(schema: Schema, config: DLRMConfig, embeddings: nn.Module) -> nn.Module:
    return DLRM(schema, config, embeddings)
