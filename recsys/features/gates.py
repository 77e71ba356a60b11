"""Learnable feature gates trained by continuation, shared by the model-based selectors (OptFS, OptFeature).

Both papers select by *continuous sparsification* (Savarese et al., NeurIPS 2020):
a gate is ``sigmoid(β·m) / sigmoid(m0)`` for a learnable logit ``m`` (``m0`` its
start value, so every gate starts at exactly 1), the temperature ``β`` rises over
training from 1 to ``final_temperature`` and an L1 penalty pushes the gates down;
as ``β`` grows the sigmoid turns into a step, and at the end a gate binarises to
``m > 0``. This is "learning by continuation": a sequence of ever sharper
relaxations of the 0/1 selection problem.

``ValueGates`` holds one logit per embedding row of each gated sparse field (one
gate per feature *value*) and one per gated dense field. ``gate_model`` attaches
them to any registered model without touching its code: a forward hook on the
model's embedding module (the one ``recsys.embeddings.build_embeddings`` builds,
whatever the scheme) scales each gated field's pooled vector by its value's gate,
and a forward pre-hook on the model scales the gated dense columns of the batch.
For a single-valued field the pooled vector is the value's embedding, so scaling
it is scaling the embedding row, as the paper does; a multi-valued field would
get the mean of its values' gates (candidates are single-valued, see
``recsys.features.data``).

``train_gated`` is the shared loop: the data set's train split through the
project's ``ParquetReader``, binary cross-entropy plus the penalty, Adam, the
temperature raised geometrically every step (the papers raise it per epoch; a
fixed step budget makes per-step the natural unit). The penalty is the mean gate
of the values each batch uses (a frequency-weighted L1, on the scale of the
loss), where the papers sum every gate of the table: values that training never
sees keep their start logit, and the frequency-weighted scores ignore them anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.config import EmbeddingConfig
from recsys.data.reader import ParquetReader
from recsys.embeddings import Embedded, build_embeddings
from recsys.errors import RecsysError
from recsys.features.base import FeatureData
from recsys.models import check_interaction_mask, embedded_schema, model_config, model_spec
from recsys.schema import Schema, describe_validation_error
from recsys.types import Batch


class ContinuationOptions(BaseModel):
    """Training settings both gated selectors take (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    steps: int = Field(400, ge=2, le=1_000_000, description="optimiser steps over the train split (cycled)")
    batch_size: int = Field(1024, ge=8, le=1 << 20)
    lr: float = Field(1e-2, gt=0, description="Adam step of the model's parameters")
    gate_lr: float = Field(5e-2, gt=0, description="Adam step of the gate logits")
    l1: float = Field(0.02, ge=0, description="weight of the frequency-weighted L1 push on the gates")
    init: float = Field(0.5, gt=0, le=10, description="start logit m0 of every gate (all open)")
    final_temperature: float = Field(200.0, ge=1, le=1e5, description="β at the last step (β starts at 1)")
    min_open: float = Field(0.2, ge=0, le=1, description="a field is suggested when at least this share of its "
                                                         "sampled values keeps its gate open")
    seed: int | None = Field(None, ge=0, description="None: the data's sampling seed")


def temperature(step: int, steps: int, final: float) -> float:
    """β at ``step`` of ``steps``: 1 at the first, ``final`` at the last, geometric between."""
    return float(final ** (step / max(steps - 1, 1)))


class ValueGates(nn.Module):
    """One gate logit per value of each gated sparse field (its table's rows) and one per gated dense field.

        gates = ValueGates({"C1": 1000}, ["I1", "I2"], init=0.5)
        g = gates.sparse_gate("C1", ids)          # (N,) soft gates at gates.beta, or 0/1 once gates.hard
    """

    def __init__(self, sparse_rows: dict[str, int], dense: list[str], init: float) -> None:
        super().__init__()
        self.init = init
        self.beta = 1.0
        self.hard = False  # binarised gates (m > 0): the selected model
        self.sparse_names = list(sparse_rows)
        self.dense_names = list(dense)
        self.sparse = nn.ParameterDict({f: nn.Parameter(torch.full((rows,), init)) for f, rows in sparse_rows.items()})
        self.dense = nn.Parameter(torch.full((len(dense),), init))
        self.seen = {f: torch.zeros(rows, dtype=torch.bool) for f, rows in sparse_rows.items()}  # used in training

    def open(self, logits: torch.Tensor) -> torch.Tensor:
        """Gate values for logits: ``sigmoid(β·m) / sigmoid(m0)`` while training, ``m > 0`` once hard."""
        if self.hard:
            return (logits > 0).to(logits.dtype)
        return torch.sigmoid(self.beta * logits) / torch.sigmoid(torch.tensor(self.init))

    def sparse_gate(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen[name][ids] = True
        return self.open(self.sparse[name][ids])

    def dense_gate(self) -> torch.Tensor:
        return self.open(self.dense)

    def open_share(self, name: str, ids: np.ndarray) -> float:
        """Share of ``ids`` (a sample of the field's values, so frequency-weighted) whose gate is open."""
        logits = self.sparse[name].detach().numpy()
        return float(np.mean(logits[np.clip(ids, 0, len(logits) - 1)] > 0)) if len(ids) else 0.0

    def soft_share(self, name: str, ids: np.ndarray) -> float:
        """Mean ``sigmoid(m)`` over ``ids``: how far open, a tie-break among fields of equal open share."""
        logits = torch.from_numpy(self.sparse[name].detach().numpy()[np.clip(ids, 0, len(self.sparse[name]) - 1)])
        return float(torch.sigmoid(logits).mean()) if len(ids) else 0.0

    def closed_fraction(self) -> float:
        """Share of the gates training has used (values seen, dense fields) that binarise closed: the sparsity."""
        with torch.no_grad():
            closed = sum(int((p[self.seen[f]] <= 0).sum()) for f, p in self.sparse.items())
            closed += int((self.dense <= 0).sum())
            total = sum(int(s.sum()) for s in self.seen.values()) + self.dense.numel()
        return closed / max(total, 1)


def row_gates(kjt: KeyedJaggedTensor, name: str, gates: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(B,) the gate of each row's value of ``name`` (the mean over a row's values; 1 for an empty row)."""
    jagged = kjt[name]
    values, lengths = jagged.values(), jagged.lengths().long()
    g = gates(values)
    if values.numel() == lengths.numel() and bool((lengths == 1).all()):
        return g
    rows = lengths.numel()
    owner = torch.repeat_interleave(torch.arange(rows, device=values.device), lengths)
    summed = torch.zeros(rows, dtype=g.dtype, device=g.device).index_add(0, owner, g)
    return torch.where(lengths > 0, summed / lengths.clamp(min=1), torch.ones_like(summed))


def scale_pooled(out: Embedded, scales: dict[str, torch.Tensor]) -> Embedded:
    """``out`` with each named feature's pooled vector (B, dim) multiplied by its (B,) scale."""
    pooled = out.pooled
    parts = list(pooled.values().split(pooled.length_per_key(), dim=1))
    keys = pooled.keys()
    for name, scale in scales.items():
        at = keys.index(name)
        parts[at] = parts[at] * scale.unsqueeze(1)
    values = torch.cat(parts, dim=1)
    return Embedded(KeyedTensor(keys=keys, length_per_key=pooled.length_per_key(), values=values), out.sequences)


@dataclass
class GatedModel:
    """A registered model whose gated inputs pass through ``gates`` (the hooks stay attached)."""

    model: nn.Module
    gates: ValueGates
    embeddings: nn.Module
    penalties: list[torch.Tensor] = field(default_factory=list)  # per gated field, its mean gate in the batch

    def penalty(self) -> torch.Tensor:
        """The mean over gated fields of the field's mean gate in the last forward (and forget them)."""
        used = torch.cat([g.reshape(-1) for g in self.penalties]).mean() if self.penalties else torch.zeros(())
        self.penalties.clear()
        return used


def gate_model(name: str, schema: Schema, section: dict, embedding: dict, sparse: list[str], dense: list[str],
               init: float) -> GatedModel:
    """Build model ``name`` as ``recsys.models.build_model`` does and gate ``sparse`` values and ``dense`` columns."""
    spec = model_spec(name)
    check_interaction_mask(name, schema)
    try:
        embedding_config = EmbeddingConfig.model_validate(embedding)
    except ValidationError as exc:
        raise RecsysError(f"embedding: {describe_validation_error(exc, embedding)}") from None
    config = model_config(name, section)
    embeddings = build_embeddings(embedded_schema(name, schema, section), embedding_config)
    missing = [f for f in sparse if f not in embeddings.feature_names]
    if missing:
        raise RecsysError(f"--model {name}: embeds no '{missing[0]}'; gated selection needs a ranking model that "
                          "embeds every candidate field")
    model = spec.build(schema, config, embeddings)
    rows = {f: int(schema.feature_table(f).cardinality or 1) for f in sparse}
    gates = ValueGates(rows, dense, init)
    gated = GatedModel(model, gates, embeddings)
    dense_at = torch.tensor([[d.name for d in schema.dense].index(f) for f in dense], dtype=torch.long)

    def on_embedded(module: nn.Module, args: tuple, out: Embedded) -> Embedded:
        kjt = args[0]
        scales = {f: row_gates(kjt, f, lambda ids, f=f: gates.sparse_gate(f, ids)) for f in sparse}
        gated.penalties.extend(g.mean() for g in scales.values())
        return scale_pooled(out, scales)

    def on_batch(module: nn.Module, args: tuple) -> tuple:
        batch: Batch = args[0]
        if not dense:
            return args
        g = gates.dense_gate()
        gated.penalties.append(g)
        scale = torch.ones(batch.dense.shape[1], dtype=batch.dense.dtype).index_put((dense_at,), g)
        return (Batch(dense=batch.dense * scale, sparse=batch.sparse, labels=batch.labels), *args[1:])

    embeddings.register_forward_hook(on_embedded)
    model.register_forward_pre_hook(on_batch)
    return gated


def batches(data: FeatureData, schema: Schema, batch_size: int, seed: int) -> Iterator[Batch]:
    """The train split's batches, shuffled, epoch after epoch (the caller stops)."""
    reader = ParquetReader(data.data_dir, "train", batch_size, shuffle=True, seed=seed, schema=schema,
                           shuffle_buffer=max(batch_size * 16, 16_384))
    epoch = 0
    while True:
        reader.set_epoch(epoch)
        empty = True
        for batch in reader:
            empty = False
            yield batch
        if empty:
            raise RecsysError(f"{data.data_dir / 'train'}: no rows to train the gates on")
        epoch += 1


def labels_of(batch: Batch) -> torch.Tensor:
    return batch.labels if batch.labels.dim() == 1 else batch.labels[:, 0]


def train_gated(module: nn.Module, gates: ValueGates, gate_params: list[nn.Parameter],
                penalties: Callable[[], torch.Tensor], forward: Callable[[Batch], torch.Tensor], data: FeatureData,
                schema: Schema, options: ContinuationOptions, seed: int) -> dict[str, object]:
    """Train ``module`` by continuation: ``gate_params`` (the gate logits, at ``gate_lr``) and its other
    parameters (at ``lr``), ``gates.beta`` raised every step; the gates end hard. Returns what it did."""
    ids = {id(p) for p in gate_params}
    others = [p for p in module.parameters() if id(p) not in ids and p.requires_grad]
    optimiser = torch.optim.Adam([{"params": others, "lr": options.lr}, {"params": gate_params, "lr": options.gate_lr}])
    module.train()
    losses: list[float] = []
    curve: list[tuple[int, float, float]] = []  # (step, β, sparsity) ten times over the run
    stream = batches(data, schema, options.batch_size, seed)
    for step in range(options.steps):
        gates.beta = temperature(step, options.steps, options.final_temperature)
        batch = next(stream)
        logits = forward(batch)
        loss = F.binary_cross_entropy_with_logits(logits, labels_of(batch))
        total = loss + options.l1 * penalties()
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if step % max(options.steps // 10, 1) == 0 or step == options.steps - 1:
            curve.append((step, round(gates.beta, 3), round(gates.closed_fraction(), 5)))
        if not math.isfinite(losses[-1]):
            raise RecsysError(f"gate training diverged at step {step} (loss {losses[-1]}); lower lr or gate_lr")
    gates.hard = True
    module.eval()
    tail = max(len(losses) // 10, 1)
    return {"steps": options.steps, "batch_size": options.batch_size, "final_temperature": options.final_temperature,
            "loss_first": round(float(np.mean(losses[:tail])), 5),
            "loss_last": round(float(np.mean(losses[-tail:])), 5),
            "rows_seen": options.steps * options.batch_size, "sparsity_curve": curve}


def train_schema(data: FeatureData) -> Schema:
    """The data set's schema as the gated model trains on it: every feature, no interaction mask."""
    return data.schema.model_copy(update={"interactions": None}, deep=True)
