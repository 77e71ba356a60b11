"""DLRM: bottom MLP on dense features, pooled embeddings, pairwise interaction, top MLP.

Paper: Naumov et al., "Deep Learning Recommendation Model for Personalization and
Recommendation Systems", 2019 (arXiv:1906.00091). Built from torchrec's
``DenseArch`` and ``OverArch``; the embeddings come from ``recsys.embeddings`` (any
scheme, sharded by ``recsys.distributed``). Differences from the paper:

- sequence features (behaviour histories) are mean-pooled bags, one more vector in
  the interaction;
- ``interaction: dot`` uses ``kernels.interaction`` (the values of torchrec's
  ``InteractionArch``, through a native CPU kernel that reads the dense and sparse
  vectors in place and computes only the pairs); ``cat`` is the paper's
  concatenation variant;
- a schema without dense features skips the bottom MLP;
- tables of several dims (``embedding.tables.<t>.dim``) are projected to one
  (``layers.FieldMatrix``), as mixed-dimension embeddings do.
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

# Leaves for torchrec's pipeline tracer: they pick their kernel at run time.
torch.fx.wrap("dot_interaction")
torch.fx.wrap("dlrm_interaction")


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
        if len(config.top_mlp) == 1:
            raise RecsysError("model.top_mlp needs at least one hidden layer before the final 1")
        self.over_arch = OverArch(over_in, config.top_mlp)

    def forward(self, batch: Batch) -> torch.Tensor:
        sparse = self.field_matrix(self.sparse_arch(batch.sparse))  # (B, F, D)
        dense = self.dense_arch(batch.dense) if self.dense_arch is not None else None  # (B, D)
        if self.interaction == "dot":
            # (B, D + P): the dense vector, then the dot products of [dense, sparse...] pairs
            features = dlrm_interaction(dense, sparse) if dense is not None else dot_interaction(sparse)
        else:
            vectors = torch.cat([dense.unsqueeze(1), sparse], dim=1) if dense is not None else sparse
            features = vectors.flatten(1)  # (B, (F + 1) * D)
        return self.over_arch(features).squeeze(1)  # (B,)


@register_model("dlrm", DLRMConfig)
def build(schema: Schema, config: DLRMConfig, embeddings: nn.Module) -> nn.Module:
    return DLRM(schema, config, embeddings)
