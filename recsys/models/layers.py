"""Building blocks several models share: dense features as fields, pooled embeddings as a field matrix."""

from __future__ import annotations

import torch
from torch import nn

from recsys.embeddings import Embedded
from recsys.errors import RecsysError


class DenseFields(nn.Module):
    """Dense features in the embedding space: each feature its own learned vector, scaled by its value.

    AutoInt's treatment of numerical fields (Song et al., 2019, §4.2: e_m = v_m · x_m), which lets attention and
    interaction layers treat dense and sparse fields alike.

        fields = DenseFields(num_dense=13, dim=16)
        vectors = fields(batch.dense)      # (B, 13, 16)
    """

    def __init__(self, num_dense: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_dense, dim))
        nn.init.normal_(self.weight, std=dim ** -0.5)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.unsqueeze(2) * self.weight  # (B, D, 1) * (D, dim) → (B, D, dim)


def field_dim(embeddings: nn.Module, model: str) -> int:
    """The one embedding dim of every pooled feature, which field-matrix models need."""
    dims = set(embeddings.embedding_dims)
    if len(dims) != 1:
        raise RecsysError(f"{model}: all tables need one embedding dim to form a field matrix, got "
                          f"{sorted(dims)}; set embedding.dim")
    return dims.pop()


def fields(embedded: Embedded, dim: int) -> torch.Tensor:
    """The pooled vectors as a field matrix (B, F, dim), in ``feature_names`` order."""
    pooled = embedded.pooled.values()  # (B, F * dim)
    return pooled.view(pooled.shape[0], -1, dim)
