"""AutoInt: multi-head self-attention over field embeddings, with the AutoInt+ DNN branch.

Paper: Song et al., "AutoInt: Automatic Feature Interaction Learning via
Self-Attentive Neural Networks", CIKM 2019 (arXiv:1810.11921). Every field, dense
or sparse, is one vector in one space (dense features through
``layers.DenseFields``: a learned vector per feature scaled by its value); a stack
of interacting layers lets every field attend to every other; a final linear layer
reads the flattened output. ``dnn: [sizes]`` adds AutoInt+'s feed-forward network on
the flattened field vectors, its logit summed with the attention branch's.
Differences from the paper:

- ``scaled: true`` divides the attention logits by sqrt(attention_dim) as
  Transformers do; ``false`` is the paper's plain inner product ψ(e_m, e_k).
  Computed by ``torch.nn.functional.scaled_dot_product_attention``;
- the per-head W_Q, W_K, W_V of a layer are one ``nn.Linear`` each, to
  heads * attention_dim outputs (the heads' matrices stacked: the same maps);
- sequence features (behaviour histories) are mean-pooled bags, one field each;
- the DNN of AutoInt+ is torchrec's ``MLP`` (ReLU) and a linear layer to its logit.

Explanation: ``attention(batch)`` gives every layer's (B, heads, F, F) weights;
``explain(batch, top)`` ranks field pairs by the *first* layer's weights (whose
rows and columns are still the raw fields), averaged over heads and over the two
directions, (w[a, b] + w[b, a]) / 2; a field's attention to itself is left out.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torchrec.modules.mlp import MLP

from recsys.models import Contribution, register_model
from recsys.models.layers import DenseFields, FieldMatrix
from recsys.schema import Schema
from recsys.types import Batch


class AutoIntConfig(BaseModel):
    """The ``model:`` section for ``--model autoint``."""

    model_config = ConfigDict(extra="forbid")

    attention_layers: int = Field(3, ge=1, le=16, description="interacting layers stacked")
    heads: int = Field(2, ge=1, le=64)
    attention_dim: int = Field(16, ge=1, le=1024, description="per head (d' in the paper)")
    residual: bool = Field(True, description="add the paper's W_res projection of the layer's input")
    scaled: bool = Field(True, description="divide the attention logits by sqrt(attention_dim); the paper does not")
    dnn: list[int] = Field([], description="AutoInt+: hidden sizes of the parallel DNN; [] = plain AutoInt")

    @model_validator(mode="after")
    def _sizes(self) -> AutoIntConfig:
        if any(size < 1 for size in self.dnn):
            raise ValueError(f"dnn layer sizes must be at least 1, got {self.dnn}")
        return self


class InteractingLayer(nn.Module):
    """One interacting layer (paper §4.4): multi-head self-attention over fields, residual, ReLU.

    forward: (B, F, in_dim) → (B, F, heads * attention_dim), and the (B, heads, F, F)
    attention weights when asked (rows: the attending field, summing to 1 over keys).
    """

    def __init__(self, in_dim: int, heads: int, attention_dim: int, residual: bool, scaled: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.attention_dim = attention_dim
        self.scale = attention_dim ** -0.5 if scaled else 1.0
        out_dim = heads * attention_dim
        self.query = nn.Linear(in_dim, out_dim, bias=False)
        self.key = nn.Linear(in_dim, out_dim, bias=False)
        self.value = nn.Linear(in_dim, out_dim, bias=False)
        self.residual = nn.Linear(in_dim, out_dim, bias=False) if residual else None  # W_res

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, num_fields, _ = x.shape
        q, k, v = (linear(x).view(batch, num_fields, self.heads, self.attention_dim).transpose(1, 2)
                   for linear in (self.query, self.key, self.value))  # (B, H, F, d')
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) * self.scale  # (B, H, F, F)
            weights = scores.softmax(dim=-1)
            attended = weights @ v  # (B, H, F, d')
        else:
            attended = nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, H, F, d')
        out = attended.transpose(1, 2).reshape(batch, num_fields, self.heads * self.attention_dim)  # (B, F, H d')
        if self.residual is not None:
            out = out + self.residual(x)
        return torch.relu(out), weights


class AutoInt(nn.Module):
    """Batch → logits (B,).

        model = AutoInt(schema, AutoIntConfig(dnn=[256, 128]), embeddings)   # AutoInt+
        logits = model(batch)                 # (B,)
        weights = model.attention(batch)      # per layer (B, heads, F, F)
        model.explain(batch, top=3)           # per row [Contribution("C1×C7", 0.31), ...]
    """

    def __init__(self, schema: Schema, config: AutoIntConfig, embeddings: nn.Module) -> None:
        super().__init__()
        self.field_matrix = FieldMatrix(embeddings)
        self.dim = self.field_matrix.dim
        self.sparse_arch = embeddings
        self.dense_fields = DenseFields(len(schema.dense), self.dim) if schema.dense else None
        self.field_names: list[str] = [f.name for f in schema.dense] + list(embeddings.feature_names)
        num_fields = len(self.field_names)
        out_dim = config.heads * config.attention_dim
        self.interacting = nn.ModuleList(
            InteractingLayer(self.dim if i == 0 else out_dim, config.heads, config.attention_dim, config.residual,
                             config.scaled)
            for i in range(config.attention_layers))
        self.output = nn.Linear(num_fields * out_dim, 1)
        self.dnn = (nn.Sequential(MLP(num_fields * self.dim, config.dnn), nn.Linear(config.dnn[-1], 1))
                    if config.dnn else None)

    def field_vectors(self, batch: Batch) -> torch.Tensor:
        """The (B, F, dim) field vectors: the dense features first, then ``sparse_arch.feature_names``."""
        embedded = self.sparse_arch(batch.sparse)
        sparse = self.field_matrix(embedded)  # (B, Fs, d)
        if self.dense_fields is None:
            return sparse
        return torch.cat([self.dense_fields(batch.dense), sparse], dim=1)  # (B, Fd + Fs, d)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.field_vectors(batch)  # (B, F, d)
        h = x
        for layer in self.interacting:
            h, _ = layer(h)  # (B, F, H d')
        logits = self.output(h.flatten(1)).squeeze(1)  # (B,)
        if self.dnn is not None:
            logits = logits + self.dnn(x.flatten(1)).squeeze(1)  # AutoInt+: the two logits summed
        return logits

    @torch.no_grad()
    def attention(self, batch: Batch) -> list[torch.Tensor]:
        """Each interacting layer's (B, heads, F, F) weights, rows summing to 1, fields in ``field_names`` order."""
        h = self.field_vectors(batch)
        weights: list[torch.Tensor] = []
        for layer in self.interacting:
            h, w = layer(h, need_weights=True)
            assert w is not None
            weights.append(w)
        return weights

    @torch.no_grad()
    def explain(self, batch: Batch, top: int) -> list[list[Contribution]]:
        """Per row, the ``top`` field pairs "A×B" by the first layer's attention weight (see the module docstring)."""
        first = self.attention(batch)[0].mean(dim=1)  # (B, F, F), mean over heads
        pair = (first + first.transpose(1, 2)) / 2  # (B, F, F), both directions averaged
        a, b = torch.triu_indices(len(self.field_names), len(self.field_names), offset=1)  # pairs a < b
        scores = pair[:, a, b]  # (B, P)
        values, index = scores.topk(min(top, scores.shape[1]), dim=1)  # (B, top), descending
        return [[Contribution(f"{self.field_names[a[j]]}×{self.field_names[b[j]]}", float(v))
                 for v, j in zip(row_values.tolist(), row_index.tolist())]
                for row_values, row_index in zip(values, index)]


@register_model("autoint", AutoIntConfig)
def build(schema: Schema, config: AutoIntConfig, embeddings: nn.Module) -> nn.Module:
    return AutoInt(schema, config, embeddings)
