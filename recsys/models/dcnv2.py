"""DCN-v2: a cross network of full-rank (or low-rank) matrices and a deep network, stacked or in parallel.

Paper: Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems", WWW 2021 (arXiv:2008.13535). The input x0 is
the concatenation of the dense features and every pooled embedding; each cross layer
computes x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l (torchrec's ``CrossNet``), or with
``low_rank: r`` the paper's W_l = U_l V_l^T, U_l, V_l of shape (N, r) (torchrec's
``LowRankCrossNet``). ``structure``:

- ``stacked`` (paper Fig. 1b): x0 → cross → deep → linear → logit;
- ``parallel`` (paper Fig. 1a): x0 → cross and x0 → deep, the two outputs
  concatenated → linear → logit.

Differences from the paper:

- dense features enter x0 as they are (already log1p'd and standardised by data
  prep); ``bottom_mlp: [sizes]`` puts a small ReLU MLP (torchrec's ``MLP``) in front
  of them instead;
- sequence features (behaviour histories) are mean-pooled bags, part of x0 like any
  other embedding; tables may have different dims (x0 is a concatenation);
- the mixture of low-rank experts (DCN-Mix) is not offered.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet
from torchrec.modules.mlp import MLP

from recsys.errors import RecsysError
from recsys.models import register_model
from recsys.schema import Schema
from recsys.types import Batch


class DCNv2Config(BaseModel):
    """The ``model:`` section for ``--model dcnv2``."""

    model_config = ConfigDict(extra="forbid")

    structure: Literal["stacked", "parallel"] = "stacked"
    cross_layers: int = Field(3, ge=1, le=32)
    low_rank: int | None = Field(None, ge=1, description="rank r of W = U V^T; null = full-rank W")
    deep: list[int] = Field([256, 128], description="hidden sizes of the deep network; [] = cross network only")
    bottom_mlp: list[int] = Field([], description="ReLU MLP on the dense features before x0; [] = raw")

    @model_validator(mode="after")
    def _sizes(self) -> DCNv2Config:
        for key in ("deep", "bottom_mlp"):
            if any(size < 1 for size in getattr(self, key)):
                raise ValueError(f"{key} layer sizes must be at least 1, got {getattr(self, key)}")
        return self


class DCNv2(nn.Module):
    """Batch → logits (B,).

        model = DCNv2(schema, DCNv2Config(structure="parallel", low_rank=64), embeddings)
        logits = model(batch)     # (B,)
    """

    def __init__(self, schema: Schema, config: DCNv2Config, embeddings: nn.Module) -> None:
        super().__init__()
        self.structure = config.structure
        self.sparse_arch = embeddings
        num_dense = len(schema.dense)
        self.dense_arch = MLP(num_dense, config.bottom_mlp) if num_dense and config.bottom_mlp else None
        dense_width = (config.bottom_mlp[-1] if self.dense_arch is not None else num_dense) if num_dense else 0
        self.has_dense = num_dense > 0
        width = dense_width + sum(embeddings.embedding_dims)  # N, the width of x0
        if config.low_rank is not None and config.low_rank >= width:
            raise RecsysError(f"model.low_rank must be below the cross input width {width}, got {config.low_rank}; "
                              "use null for a full-rank cross network")
        self.cross = (CrossNet(width, config.cross_layers) if config.low_rank is None
                      else LowRankCrossNet(width, config.cross_layers, config.low_rank))
        self.deep = MLP(width, config.deep) if config.deep else None
        deep_width = config.deep[-1] if config.deep else 0
        if self.structure == "stacked":
            head_width = deep_width or width  # the deep network's output, or the cross net's without one
        else:
            head_width = width + deep_width
        self.output = nn.Linear(head_width, 1)

    def inputs(self, batch: Batch) -> torch.Tensor:
        """x0 (B, N): the dense features (or their bottom MLP's output), then the pooled embeddings."""
        pooled = self.sparse_arch(batch.sparse).pooled.values()  # (B, sum of dims)
        if not self.has_dense:
            return pooled
        dense = self.dense_arch(batch.dense) if self.dense_arch is not None else batch.dense  # (B, Dd)
        return torch.cat([dense, pooled], dim=1)  # (B, N)

    def forward(self, batch: Batch) -> torch.Tensor:
        x0 = self.inputs(batch)  # (B, N)
        crossed = self.cross(x0)  # (B, N)
        if self.structure == "stacked":
            head = self.deep(crossed) if self.deep is not None else crossed  # (B, deep[-1] or N)
        else:
            head = torch.cat([crossed, self.deep(x0)], dim=1) if self.deep is not None else crossed  # (B, N + deep[-1])
        return self.output(head).squeeze(1)  # (B,)


@register_model("dcnv2", DCNv2Config)
def build(schema: Schema, config: DCNv2Config, embeddings: nn.Module) -> nn.Module:
    return DCNv2(schema, config, embeddings)
