"""DIN: attention over the user's behaviour history with respect to the target item, then an MLP.

Paper: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction",
KDD 2018 (arXiv:1706.06978). Each history element h is weighted by a local
activation unit a(h, t) — an MLP with Dice on [h, t, h - t, h * t] for target t —
and the history is sum-pooled with those weights; the pooled interest vector,
the other features' embeddings and the dense features feed an MLP with Dice.

What this file computes, and where it differs from the paper:

- Attention pairs: every sequence feature whose table is the table of a sparse
  feature (``hist_item_id`` ↔ ``item_id``, ``hist_category`` ↔ ``item_category``)
  gets its own activation unit. The paper concatenates goods, shop and category
  ids into one item vector with one unit; here the histories need not be aligned.
  A sequence without such a target is mean-pooled (its schema pooling) instead.
- Weights are un-normalised by default, as in the paper (no softmax: the sum of
  the weights keeps the intensity of the user's interest). ``attention_norm:
  softmax`` is the normalised variant of the authors' released code; ``mean``
  divides the weighted sum by the history's length (a weighted mean, whose
  weights still need not sum to one). ``configs/din.yaml`` says which it uses.
- The activation unit's input is [h, t, h - t, h ⊙ t] with the element-wise
  product, as the authors' code does; the paper's figure says "out product".
- The history stays jagged: the target is repeated per history element by its
  row's length and the weighted elements are summed per row by a segment sum, so
  the cost follows the total history length, not batch × max length, and
  padding never enters the maths (nor Dice's batch statistics).
- Dense features are concatenated to the top MLP's input as they are (already
  log1p-standardised by data preparation); the paper's data has none.
- Mini-batch aware L2 (paper section 4.1), in training only: each embedding row
  present in the batch gets λ·w added to its gradient once per step, rows absent
  from the batch nothing. The paper also divides by n_j, the id's count over the
  whole training set, which the model does not know, so here a frequent row is
  decayed in more steps rather than less. The penalty is added in the backward of
  the looked-up vectors (λ·v / the row's count in the batch, per occurrence)
  because the tables are trained by fused optimizers that never materialise a
  table gradient. Single-id bags and history elements are penalised; multi-id
  pooled bags are not (their pooled vector is not one row). With several
  processes each penalises the rows of its own share of the batch, so a row
  present in k shares is decayed k times.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torchrec.modules.mlp import Perceptron
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys.embeddings import Embedded
from recsys.errors import RecsysError
from recsys.models import Contribution, register_model
from recsys.schema import Schema
from recsys.types import Batch


class DINConfig(BaseModel):
    """The ``model:`` section for ``--model din``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    attention_mlp: list[int] = Field([36, 1], min_length=2, description="the activation unit; ends with 1")
    top_mlp: list[int] = Field([200, 80, 1], min_length=2, description="ends with 1")
    attention_norm: Literal["none", "softmax", "mean"] = "none"
    l2: float = Field(0.0, ge=0, description="mini-batch aware L2 on the embedding rows in the batch; 0: off")

    @model_validator(mode="after")
    def _sizes(self) -> DINConfig:
        if any(size < 1 for size in [*self.attention_mlp, *self.top_mlp]):
            raise ValueError("layer sizes must be at least 1")
        for key in ("attention_mlp", "top_mlp"):
            if getattr(self, key)[-1] != 1:
                raise ValueError(f"{key} must end with 1, got {getattr(self, key)[-1]}")
        return self


class Dice(nn.Module):
    """The paper's data-adaptive activation: f(s) = p(s)·s + (1 - p(s))·α·s.

    p(s) = σ((s - E[s]) / √(Var[s] + ε)), a soft rectifier point that follows the data.
    E[s] and Var[s] are the mini-batch statistics per channel in training and their
    moving averages in evaluation (a ``BatchNorm1d`` without affine parameters); α
    is learned per channel, zero at the start as in the authors' code. A training
    batch of one row has no variance and is normalised by the moving averages.

    forward: (N, C) → (N, C)
    """

    def __init__(self, channels: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels, eps=eps, momentum=momentum, affine=False)
        self.alpha = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            normed = F.batch_norm(x, self.norm.running_mean, self.norm.running_var, training=False, eps=self.norm.eps)
        else:
            normed = self.norm(x)  # (N, C)
        p = torch.sigmoid(normed)
        return x * (p + (1 - p) * self.alpha)


def _mlp(in_size: int, sizes: list[int]) -> nn.Sequential:
    """Linear + Dice layers, the last one a plain linear output."""
    layers: list[nn.Module] = []
    for size in sizes[:-1]:
        layers.append(Perceptron(in_size, size, activation=Dice(size)))
        in_size = size
    layers.append(nn.Linear(in_size, sizes[-1]))
    return nn.Sequential(*layers)


class ActivationUnit(nn.Module):
    """The local activation unit over a jagged history: one weight per history element, then weighted sum pooling.

        unit = ActivationUnit(dim=16, sizes=[36, 1])
        weights = unit.weights(history, target)    # (N,) for N = history.values().shape[0]
        interest = unit(history, target)           # (B, 16)

    history: JaggedTensor, values (N, D) for N = sum of lengths, lengths (B,); target (B, D).
    """

    def __init__(self, dim: int, sizes: list[int], norm: Literal["none", "softmax", "mean"] = "none") -> None:
        super().__init__()
        self.mlp = _mlp(4 * dim, sizes)
        self.norm = norm

    def weights(self, history: JaggedTensor, target: torch.Tensor) -> torch.Tensor:
        values = history.values()  # (N, D)
        lengths = history.lengths().long()  # (B,)
        targets = torch.repeat_interleave(target, lengths, dim=0, output_size=values.shape[0])  # (N, D)
        units = torch.cat([values, targets, values - targets, values * targets], dim=1)  # (N, 4D)
        scores = self.mlp(units).squeeze(1)  # (N,)
        if self.norm == "softmax":
            scores = _jagged_softmax(scores, lengths)
        elif self.norm == "mean":
            scores = scores / torch.repeat_interleave(lengths, lengths, output_size=scores.shape[0]).to(scores.dtype)
        return scores

    def forward(self, history: JaggedTensor, target: torch.Tensor) -> torch.Tensor:
        weights = self.weights(history, target)  # (N,)
        weighted = weights.unsqueeze(1) * history.values()  # (N, D)
        return torch.segment_reduce(weighted, "sum", lengths=history.lengths(), axis=0, unsafe=True)  # (B, D)


def _jagged_softmax(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Softmax within each row's segment of the flat (N,) scores."""
    peak = torch.segment_reduce(scores.detach(), "max", lengths=lengths, unsafe=True)  # (B,)
    rows = torch.repeat_interleave(peak, lengths, output_size=scores.shape[0])  # (N,)
    exp = torch.exp(scores - rows)  # (N,)
    total = torch.segment_reduce(exp, "sum", lengths=lengths, unsafe=True)  # (B,)
    return exp / torch.repeat_interleave(total, lengths, output_size=scores.shape[0])


class _MiniBatchL2(torch.autograd.Function):
    """Identity forward; backward adds ``scale · v`` to each looked-up vector's gradient."""

    @staticmethod
    def forward(ctx, vectors: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(vectors, scale)
        return vectors.view_as(vectors)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        vectors, scale = ctx.saved_tensors
        return grad + scale.unsqueeze(1) * vectors, None


def _mini_batch_l2(features: KeyedJaggedTensor, vectors: dict[str, torch.Tensor], tables: list[list[str]],
                   sequences: list[str], l2: float) -> dict[str, torch.Tensor]:
    """``vectors`` (name → (B, D) pooled or (N, D) history values) with the MBA L2 backward attached.

    An occurrence of row r of a table gets λ / (occurrences of r in this batch), so
    the row's gradient grows by λ·w once however often it appears. ``tables``
    groups the names that look up one table; a pooled bag of other than one id
    is no single row and gets no penalty (nor counts).
    """
    keys = features.keys()
    stride = features.stride()
    values = dict(zip(keys, features.values().split(features.length_per_key())))
    lengths = features.lengths().view(len(keys), stride)  # (K, B)
    out = dict(vectors)
    for names in tables:
        ids = []
        for name in names:
            if name in sequences:
                ids.append(values[name])  # (N,)
            else:
                count = lengths[keys.index(name)].long()  # (B,)
                single = count == 1
                row = torch.full_like(count, -1)  # (B,) -1: not one row, not penalised
                row[single] = values[name][(torch.cumsum(count, 0) - count)[single]].long()
                ids.append(row)
        flat = torch.cat(ids)
        _, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
        scale = torch.where(flat >= 0, l2 / counts[inverse].to(torch.float32), 0.0)
        for name, part in zip(names, scale.split([len(i) for i in ids])):
            out[name] = _MiniBatchL2.apply(vectors[name], part.to(vectors[name].dtype))
    return out


class InterestArch(nn.Module):
    """Embedded features → the top MLP's input: the sparse vectors, one interest vector per
    (history, target) pair, the unpaired histories' pooled vectors, the dense features.

    forward: (Embedded, Batch) → (B, Σ sparse dims + Σ paired history dims + Σ unpaired dims + num dense)

    Holds no embedding table, so torchrec's pipeline tracer takes it as one leaf and
    only ``DIN.forward``'s call of the (sharded) embeddings is rewritten.
    """

    def __init__(self, schema: Schema, config: DINConfig, embeddings: nn.Module) -> None:
        super().__init__()
        tables: dict[str, str] = embeddings.feature_tables
        sequences = list(embeddings.sequence_names)
        dims = dict(zip(embeddings.feature_names, embeddings.embedding_dims))
        self.sparse_names = [name for name in embeddings.feature_names if name not in sequences]
        # (history, target) pairs: a history and the sparse feature that looks up the same table
        self.pairs = [(seq, name) for seq in sequences for name in self.sparse_names if tables[name] == tables[seq]]
        if not self.pairs:
            raise RecsysError("din: no sequence feature shares its table with a sparse feature (its target item); "
                              f"sequences {sequences}, tables {tables}")
        paired = {seq for seq, _ in self.pairs}
        self.unpaired = [seq for seq in sequences if seq not in paired]  # mean-pooled into the top MLP
        self.units = nn.ModuleDict({f"{seq}__{target}": ActivationUnit(dims[seq], config.attention_mlp,
                                                                        config.attention_norm)
                                    for seq, target in self.pairs})
        self.has_dense = bool(schema.dense)
        self.out_size = (sum(dims[n] for n in self.sparse_names) + sum(dims[seq] for seq, _ in self.pairs)
                         + sum(dims[seq] for seq in self.unpaired) + len(schema.dense))
        self.l2 = config.l2
        # names looking up each table, for counting a row's occurrences in the batch
        used = [*self.sparse_names, *paired]
        self._l2_tables = [[n for n in used if tables[n] == t] for t in dict.fromkeys(tables[n] for n in used)]
        self._sequences = sequences
        self._names = list(embeddings.feature_names)
        self._dims = list(embeddings.embedding_dims)

    def inputs(self, embedded: Embedded, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, JaggedTensor]]:
        """Pooled vectors by feature and the paired histories, with the MBA L2 backward in training."""
        pooled = dict(zip(self._names, embedded.pooled.values().split(self._dims, dim=1)))  # name → (B, D)
        histories = {seq: embedded.sequences[seq] for seq, _ in self.pairs}
        if self.training and self.l2 > 0:
            vectors = {n: pooled[n] for n in self.sparse_names} | {s: h.values() for s, h in histories.items()}
            vectors = _mini_batch_l2(batch.sparse, vectors, self._l2_tables, self._sequences, self.l2)
            pooled |= {n: vectors[n] for n in self.sparse_names}
            histories = {s: JaggedTensor(values=vectors[s], lengths=h.lengths()) for s, h in histories.items()}
        return pooled, histories

    def forward(self, embedded: Embedded, batch: Batch) -> torch.Tensor:
        pooled, histories = self.inputs(embedded, batch)
        parts = [pooled[n] for n in self.sparse_names]  # (B, D) each
        for seq, target in self.pairs:
            parts.append(self.units[f"{seq}__{target}"](histories[seq], pooled[target]))  # (B, D)
        parts += [pooled[seq] for seq in self.unpaired]
        if self.has_dense:
            parts.append(batch.dense)  # (B, num dense)
        return torch.cat(parts, dim=1)  # (B, out_size)


class DIN(nn.Module):
    """Batch → logits (B,).

        model = DIN(schema, DINConfig(), embeddings)
        logits = model(batch)                 # (B,)
        model.explain(batch, top=3)           # per row: [Contribution("hist_item_id[2]", 0.9), ...]
    """

    def __init__(self, schema: Schema, config: DINConfig, embeddings: nn.Module) -> None:
        super().__init__()
        self.sparse_arch = embeddings
        self.interest_arch = InterestArch(schema, config, embeddings)
        self.over_arch = _mlp(self.interest_arch.out_size, config.top_mlp)

    def forward(self, batch: Batch) -> torch.Tensor:
        embedded = self.sparse_arch(batch.sparse)
        features = self.interest_arch(embedded, batch)  # (B, F)
        return self.over_arch(features).squeeze(1)  # (B,)

    @torch.no_grad()
    def explain(self, batch: Batch, top: int) -> list[list[Contribution]]:
        """Per row, the ``top`` history positions with the largest attention weights (0 = newest).

        Weights are those of the evaluation forward (Dice with its moving averages),
        whatever mode the model is in; the mode and the statistics are left as found.
        """
        training = self.training
        self.eval()
        try:
            arch = self.interest_arch
            pooled, histories = arch.inputs(self.sparse_arch(batch.sparse), batch)
            rows: list[list[Contribution]] = [[] for _ in range(batch.batch_size)]
            for seq, target in arch.pairs:
                history = histories[seq]
                weights = arch.units[f"{seq}__{target}"].weights(history, pooled[target]).tolist()  # (N,)
                start = 0
                for row, length in enumerate(history.lengths().tolist()):
                    rows[row] += [Contribution(f"{seq}[{p}]", weights[start + p]) for p in range(length)]
                    start += length
        finally:
            self.train(training)
        return [sorted(row, key=lambda c: c.weight, reverse=True)[:top] for row in rows]


@register_model("din", DINConfig)
def build(schema: Schema, config: DINConfig, embeddings: nn.Module) -> nn.Module:
    if not embeddings.sequence_names:
        raise RecsysError("din: the schema has no sequence features (behaviour histories) to attend over")
    return DIN(schema, config, embeddings)
