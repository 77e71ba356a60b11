"""ARM-Net: exponential neurons whose sparse, per-instance attention picks the fields they cross.

Paper: Cai et al., "ARM-Net: Adaptive Relation Modeling Network for Structured
Data", SIGMOD 2021 (arXiv:2107.01830).

The field vectors, batch-normalised per field, are the log-space embeddings e_j
(B, F, D): exp(e_j) is the field's factor in a product. Each of ``heads``
heads has ``neurons`` (K) exponential neurons; neuron (h, k) has a query q_hk,
head h a bilinear key map W_h, and the neuron a static value vector v_hk (F,):

    z_hk = α-entmax_j( q_hkᵀ W_hᵀ e_j / √d_k )      sparse gates over fields, Σ_j z_hkj = 1
    w_hk = z_hk ⊙ v_hk                              the paper's (gated) interaction weights
    y_hk = exp( Σ_j w_hkj · e_j )  (D,)             = Π_j exp(e_j)^w_hkj, a cross feature of
                                                     the fields the gate kept, of adaptive order

The H·K cross features are batch-normalized and an MLP maps them to the logit.
With ``dnn`` an MLP over the flattened embeddings runs beside it and a linear
layer (initialised to 0.5, 0.5) mixes the two logits: the paper's ensemble.

``interaction_weights(batch)`` returns the gates z (B, H·K, F): exact zeros where
entmax pruned a field. ``explain`` names, per row, the crosses the neurons compute
("C1×C4×I2": the fields of a neuron's non-zero gates, in field order; neurons with
the same fields are merged), weighted by the share of the row's Σ |w| those
neurons carry (Σ over a row's crosses = 1), largest first: how strongly the
neurons' products depend on their fields, before the batch norm and the MLP, not
a gradient attribution of the logit.

Differences from the paper:

- the fields are batch-normalised before the neurons (the paper's code declares but
  does not apply such a layer): with torchrec-sized embedding inits (±1/√rows) the
  raw vectors stay so small that the attention scores cannot separate fields and
  the neurons compute exp(x) ≈ 1 + x, a linear term, not a product; the DNN reads
  the raw vectors;
- one embedding table per feature feeds both ARM and the ensemble DNN (the paper's
  code gives the DNN its own embeddings);
- dense features are fields whose embedding is a learned vector scaled by the value
  (``layers.DenseFields``), so a dense value raises its factor to a power, as the
  paper's numerical fields do (without the paper's clamping of values to [0.001, 1]);
  sequence features enter as their pooled vectors;
- ``alpha`` 1.5 uses ``entmax15`` (exact, sort-based), 2 ``sparsemax``, values
  between ``entmax_bisect`` (the paper's code uses bisection for every α); α = 1
  (softmax, no sparsity) is refused;
- the MLPs have no dropout.
"""

from __future__ import annotations

import math

import torch
from entmax import entmax15, entmax_bisect, sparsemax
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torchrec.modules.mlp import MLP

from recsys.models import Contribution, register_model
from recsys.models.layers import DenseFields, FieldMatrix
from recsys.schema import Schema
from recsys.types import Batch


class ARMNetConfig(BaseModel):
    """The ``model:`` section for ``--model armnet``."""

    model_config = ConfigDict(extra="forbid")

    heads: int = Field(4, ge=1, description="attention heads, each with its own bilinear key map")
    neurons: int = Field(16, ge=1, description="exponential neurons (cross features) per head")
    alpha: float = Field(1.5, gt=1.0, le=2.0, description="entmax α: 1.5 entmax, 2 sparsemax")
    key_dim: int | None = Field(None, ge=1, description="attention key/query dim (default: the embedding dim)")
    mlp: list[int] = Field([256, 64, 1], min_length=2, description="MLP over the cross features; ends with 1")
    dnn: list[int] | None = Field(None, min_length=2,
                                  description="ensemble DNN over the embeddings; ends with 1; null: none")

    @model_validator(mode="after")
    def _sizes(self) -> ARMNetConfig:
        for key in ("mlp", "dnn"):
            sizes = getattr(self, key)
            if sizes is None:
                continue
            if any(size < 1 for size in sizes):
                raise ValueError(f"{key}: layer sizes must be at least 1")
            if sizes[-1] != 1:
                raise ValueError(f"{key} must end with 1 (one logit), got {sizes[-1]}")
        return self


@torch.fx.wrap  # a leaf for torchrec's pipeline tracer: entmax's autograd functions sort and branch
def sparse_attention(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """α-entmax over the last dim: sparse weights that sum to 1."""
    if alpha == 1.5:
        return entmax15(scores, dim=-1)
    if alpha == 2.0:
        return sparsemax(scores, dim=-1)
    return entmax_bisect(scores, alpha=alpha, dim=-1)


class SparseGates(nn.Module):
    """Field embeddings (B, F, D) → sparse gates (B, H, K, F), each neuron's summing to 1 over fields."""

    def __init__(self, heads: int, neurons: int, dim: int, key_dim: int, alpha: float) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.empty(heads, dim, key_dim))  # W_h
        self.queries = nn.Parameter(torch.empty(heads, neurons, key_dim))  # q_hk
        nn.init.xavier_uniform_(self.keys, gain=math.sqrt(2.0))
        nn.init.xavier_uniform_(self.queries, gain=math.sqrt(2.0))
        self.scale = key_dim ** -0.5
        self.alpha = alpha

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        keys = torch.einsum("bfd,hdk->bhfk", embeddings, self.keys)  # (B, H, F, d_k)
        scores = torch.einsum("hnk,bhfk->bhnf", self.queries, keys) * self.scale  # (B, H, K, F)
        return sparse_attention(scores, self.alpha)  # (B, H, K, F)


class ARMNet(nn.Module):
    """Batch → logits (B,).

        model = ARMNet(schema, ARMNetConfig(), embeddings)
        logits = model(batch)                         # (B,)
        gates = model.interaction_weights(batch)      # (B, heads * neurons, F)
        model.explain(batch, top=3)[0]                # [Contribution("C1×C4×I2", 0.21), ...]
    """

    def __init__(self, schema: Schema, config: ARMNetConfig, embeddings: nn.Module) -> None:
        super().__init__()
        self.sparse_arch = embeddings
        self.sparse_names = list(embeddings.feature_names)
        self.field_matrix = FieldMatrix(embeddings)
        self.dim = self.field_matrix.dim
        self.field_names = self.sparse_names + [feature.name for feature in schema.dense]
        self.dense_fields = DenseFields(len(schema.dense), self.dim) if schema.dense else None
        num_fields = len(self.field_names)
        # Log-space fields standardised per field: the embedding init (±1/√rows) and the dense scales leave raw
        # vectors too small for the attention scores to separate fields, and the exponents near 0 (exp ≈ 1 + x).
        self.field_norm = nn.BatchNorm1d(num_fields)
        self.num_crosses = config.heads * config.neurons
        self.gates = SparseGates(config.heads, config.neurons, self.dim, config.key_dim or self.dim, config.alpha)
        self.values = nn.Parameter(torch.empty(config.heads, config.neurons, num_fields))  # v_hk
        nn.init.xavier_uniform_(self.values, gain=math.sqrt(2.0))
        self.cross_norm = nn.BatchNorm1d(self.num_crosses)
        self.mlp = MLP(self.num_crosses * self.dim, config.mlp, activation_on_last=False)
        self.dnn = MLP(num_fields * self.dim, config.dnn, activation_on_last=False) if config.dnn else None
        if self.dnn is not None:
            self.ensemble = nn.Linear(2, 1)
            nn.init.constant_(self.ensemble.weight, 0.5)
            nn.init.zeros_(self.ensemble.bias)

    def raw_fields(self, batch: Batch) -> torch.Tensor:
        """The sparse fields, then the dense ones: (B, F, D)."""
        sparse = self.field_matrix(self.sparse_arch(batch.sparse))  # (B, F_sparse, D)
        if self.dense_fields is None:
            return sparse
        return torch.cat([sparse, self.dense_fields(batch.dense)], dim=1)  # (B, F, D)

    def field_embeddings(self, batch: Batch) -> torch.Tensor:
        """The log-space field embeddings e_j the neurons cross: the fields batch-normalised per field, (B, F, D).

        As the forward normalises them, but without updating the running statistics (momentum 0), so that
        reading the weights of a model in training mode changes nothing.
        """
        norm = self.field_norm
        return nn.functional.batch_norm(self.raw_fields(batch), norm.running_mean, norm.running_var, norm.weight,
                                        norm.bias, training=self.training, momentum=0.0, eps=norm.eps)

    def crosses(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Exponential neurons: (B, F, D) → cross features exp(Σ_j w_j e_j), (B, H·K, D)."""
        weights = self.gates(embeddings) * self.values  # (B, H, K, F)
        return torch.exp(torch.einsum("bhnf,bfd->bhnd", weights, embeddings)).flatten(1, 2)  # (B, H·K, D)

    def forward(self, batch: Batch) -> torch.Tensor:
        raw = self.raw_fields(batch)  # (B, F, D)
        crosses = self.cross_norm(self.crosses(self.field_norm(raw)))  # (B, H·K, D)
        logits = self.mlp(crosses.flatten(1))  # (B, 1)
        if self.dnn is not None:
            deep = self.dnn(raw.flatten(1))  # (B, 1)
            logits = self.ensemble(torch.cat([logits, deep], dim=1))  # (B, 1)
        return logits.squeeze(1)  # (B,)

    @torch.no_grad()
    def interaction_weights(self, batch: Batch) -> torch.Tensor:
        """The sparse gates z (B, H·K, F): each neuron's sum to 1, exact zeros on the fields entmax pruned.

        The exponents the neurons use are these times ``values`` (H, K, F) flattened to (H·K, F).
        """
        return self.gates(self.field_embeddings(batch)).flatten(1, 2)  # (B, H·K, F)

    @torch.no_grad()
    def explain(self, batch: Batch, top: int) -> list[list[Contribution]]:
        """Per row, the ``top`` crosses by their share of the row's absolute interaction weight Σ |z ⊙ v|."""
        gates = self.interaction_weights(batch)  # (B, H·K, F)
        mass = (gates * self.values.flatten(0, 1)).abs().sum(dim=2)  # (B, H·K)
        mass = mass / mass.sum(dim=1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)
        kept = (gates > 0).cpu()
        explained = []
        for row_kept, row_mass in zip(kept, mass.cpu().tolist(), strict=True):
            shares: dict[tuple[int, ...], float] = {}
            for neuron_kept, share in zip(row_kept, row_mass, strict=True):
                key = tuple(neuron_kept.nonzero().flatten().tolist())
                shares[key] = shares.get(key, 0.0) + share
            ranked = sorted(shares.items(), key=lambda item: -item[1])[:top]
            explained.append([Contribution("×".join(self.field_names[j] for j in key), share)
                              for key, share in ranked])
        return explained


@register_model("armnet", ARMNetConfig)
def build(schema: Schema, config: ARMNetConfig, embeddings: nn.Module) -> nn.Module:
    return ARMNet(schema, config, embeddings)
