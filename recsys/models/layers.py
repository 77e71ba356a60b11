"""Building blocks several models share: dense features as fields, pooled embeddings as a field matrix."""

from __future__ import annotations

import torch
from torch import nn

from recsys.embeddings import Embedded


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


class FieldMatrix(nn.Module):
    """The pooled vectors as a field matrix (B, F, dim), in ``feature_names`` order.

    Tables of one dim are a view. Tables of several dims (per-table ``embedding.tables.<t>.dim``) are projected
    to the widest, or to ``dim``, each by its own bias-free linear map, as mixed-dimension embeddings are
    (Ginart et al., "Mixed Dimension Embeddings with Application to Memory-Efficient Recommendation Systems",
    ISIT 2021): models that need one dim (DLRM's dot interaction, attention over fields) keep working.

        matrix = FieldMatrix(embeddings)
        sparse = matrix(embeddings(batch.sparse))     # (B, F, matrix.dim)
    """

    def __init__(self, embeddings: nn.Module, dim: int | None = None) -> None:
        super().__init__()
        self.dims: list[int] = list(embeddings.embedding_dims)
        self.dim = dim or max(self.dims)
        self.mixed = set(self.dims) != {self.dim}
        self.projections = nn.ModuleDict({
            feature: nn.Linear(width, self.dim, bias=False)
            for feature, width in zip(embeddings.feature_names, self.dims) if width != self.dim
        }) if self.mixed else None
        self._features: list[str] = list(embeddings.feature_names)

    def forward(self, embedded: Embedded) -> torch.Tensor:
        pooled = embedded.pooled.values()  # (B, Σ dims)
        if not self.mixed:
            return pooled.view(pooled.shape[0], -1, self.dim)
        assert self.projections is not None
        parts = pooled.split(self.dims, dim=1)
        return torch.stack([self.projections[f](part) if f in self.projections else part
                            for f, part in zip(self._features, parts)], dim=1)  # (B, F, dim)
