"""FGCNN: convolutions generate new feature embeddings, an IPNN classifies raw and generated fields.

Paper: Liu et al., "Feature Generation by Convolutional Neural Network for
Click-Through Rate Prediction", WWW 2019 (arXiv:1904.04447).

Feature generation: the raw field embeddings form a (fields × dim) matrix with one
input channel. Each layer i convolves it with ``channels[i]`` kernels of
``kernel_heights[i]`` × 1 (along fields only, "same" padding, tanh), max-pools
``pooling_heights[i]`` × 1 along fields (height F_i = F_{i-1} // p_i), and a
fully-connected recombination layer (tanh) maps the pooled (channels, F_i, dim)
maps to ``recombined[i]`` × F_i new embeddings of ``dim``. The next layer
convolves the pooled maps, so the generated count is Σ_i F_i · r_i.

Classifier: IPNN over all raw and generated fields N = F + Σ_i F_i · r_i: the
N·(N-1)/2 pairwise inner products (``kernels.interaction``) concatenated with the
flattened embeddings, then an MLP to the logit.

Differences from the paper:

- one embedding table per feature feeds both the generator and the classifier
  (the paper's reference code keeps a second set of embeddings for the generator);
- dense features (the paper has none) are fields too: each its own learned vector
  scaled by its value (``layers.DenseFields``), after the sparse fields, so they
  are convolved, recombined and crossed like the sparse ones; sequence features
  enter as their pooled vectors;
- the MLP has no batch norm or dropout.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torchrec.modules.mlp import MLP

from kernels.interaction import dot_interaction
from recsys.errors import RecsysError
from recsys.models import register_model
from recsys.models.layers import DenseFields, FieldMatrix
from recsys.schema import Schema
from recsys.types import Batch


class FGCNNConfig(BaseModel):
    """The ``model:`` section for ``--model fgcnn``: one entry per convolution layer in the first four lists."""

    model_config = ConfigDict(extra="forbid")

    channels: list[int] = Field([8, 10], min_length=1, description="feature maps of each convolution")
    kernel_heights: list[int] = Field([7, 7], min_length=1, description="kernel height along fields")
    pooling_heights: list[int] = Field([2, 2], min_length=1, description="max pooling height along fields")
    recombined: list[int] = Field([2, 2], min_length=1,
                                  description="new features per pooled row of each layer")
    mlp: list[int] = Field([256, 64, 1], min_length=2, description="classifier MLP; ends with 1")

    @model_validator(mode="after")
    def _sizes(self) -> FGCNNConfig:
        layers = len(self.channels)
        for key in ("kernel_heights", "pooling_heights", "recombined"):
            if len(getattr(self, key)) != layers:
                raise ValueError(f"{key} needs one entry per convolution layer ({layers}, as channels), "
                                 f"got {len(getattr(self, key))}")
        for key in ("channels", "kernel_heights", "pooling_heights", "recombined", "mlp"):
            if any(size < 1 for size in getattr(self, key)):
                raise ValueError(f"{key}: sizes must be at least 1")
        if self.mlp[-1] != 1:
            raise ValueError(f"mlp must end with 1 (one logit), got {self.mlp[-1]}")
        return self


class FeatureGeneration(nn.Module):
    """Raw fields (B, F, D) → generated fields (B, G, D), G = Σ_i F_i · r_i with F_i = F_{i-1} // p_i.

        generation = FeatureGeneration(num_fields=10, dim=8, channels=[6, 8], kernel_heights=[3, 3],
                                       pooling_heights=[2, 2], recombined=[2, 2])
        new = generation(torch.randn(4, 10, 8))   # (4, 2 * 5 + 2 * 2, 8)
    """

    def __init__(self, num_fields: int, dim: int, channels: list[int], kernel_heights: list[int],
                 pooling_heights: list[int], recombined: list[int]) -> None:
        super().__init__()
        self.dim = dim
        self.convolutions = nn.ModuleList()
        self.poolings = nn.ModuleList()
        self.recombinations = nn.ModuleList()
        self.counts: list[int] = []  # new features of each layer, F_i · r_i
        height, in_channels = num_fields, 1
        for layer, (out_channels, kernel, pool, new) in enumerate(
                zip(channels, kernel_heights, pooling_heights, recombined, strict=True)):
            if height < pool:
                raise RecsysError(f"model.pooling_heights: layer {layer + 1} pools {height} rows by {pool} "
                                  f"to none ({num_fields} fields in); use fewer layers or smaller pooling")
            height //= pool
            self.convolutions.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, (kernel, 1), padding="same"), nn.Tanh()))
            self.poolings.append(nn.MaxPool2d((pool, 1)))
            self.recombinations.append(nn.Sequential(
                nn.Linear(out_channels * height * dim, new * height * dim), nn.Tanh()))
            self.counts.append(new * height)
            in_channels = out_channels
        self.num_generated = sum(self.counts)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        batch = raw.shape[0]
        maps = raw.unsqueeze(1)  # (B, 1, F, D)
        generated = []
        for convolution, pooling, recombination, count in zip(
                self.convolutions, self.poolings, self.recombinations, self.counts, strict=True):
            maps = pooling(convolution(maps))  # (B, C_i, F_i, D)
            generated.append(recombination(maps.flatten(1)).view(batch, count, self.dim))  # (B, F_i * r_i, D)
        return torch.cat(generated, dim=1)  # (B, G, D)


class FGCNN(nn.Module):
    """Batch → logits (B,).

        model = FGCNN(schema, FGCNNConfig(), embeddings)
        logits = model(batch)     # (B,)
    """

    def __init__(self, schema: Schema, config: FGCNNConfig, embeddings: nn.Module) -> None:
        super().__init__()
        self.sparse_arch = embeddings
        num_sparse = len(embeddings.feature_names)
        self.field_matrix = FieldMatrix(embeddings)
        self.dim = self.field_matrix.dim
        self.dense_fields = DenseFields(len(schema.dense), self.dim) if schema.dense else None
        num_raw = num_sparse + len(schema.dense)
        self.generation = FeatureGeneration(num_raw, self.dim, config.channels, config.kernel_heights,
                                            config.pooling_heights, config.recombined)
        self.num_fields = num_raw + self.generation.num_generated
        over_in = self.num_fields * (self.num_fields - 1) // 2 + self.num_fields * self.dim
        self.classifier = MLP(over_in, config.mlp, activation_on_last=False)

    def raw_fields(self, batch: Batch) -> torch.Tensor:
        """The sparse fields, then the dense ones: (B, F, D)."""
        sparse = self.field_matrix(self.sparse_arch(batch.sparse))  # (B, F_sparse, D)
        if self.dense_fields is None:
            return sparse
        return torch.cat([sparse, self.dense_fields(batch.dense)], dim=1)  # (B, F, D)

    def interaction(self, all_fields: torch.Tensor) -> torch.Tensor:
        """IPNN's product layer: (B, N, D) → (B, N * D + N(N-1)/2), the embeddings then the inner products."""
        return torch.cat([all_fields.flatten(1), dot_interaction(all_fields)], dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        raw = self.raw_fields(batch)  # (B, F, D)
        all_fields = torch.cat([raw, self.generation(raw)], dim=1)  # (B, N, D), N = F + G
        return self.classifier(self.interaction(all_fields)).squeeze(1)  # (B,)


@register_model("fgcnn", FGCNNConfig)
def build(schema: Schema, config: FGCNNConfig, embeddings: nn.Module) -> nn.Module:
    return FGCNN(schema, config, embeddings)
