"""OptFeature: hybrid field-level and value-level selection of pairwise feature interactions.

Paper: Fuyuan Lyu, Xing Tang, Dugang Liu, Chen Ma, Weihong Luo, Liang Chen, Xiuqiang He, Xue Liu,
"Towards Hybrid-grained Feature Interaction Selection for Deep Sparse Network", NeurIPS 2023.
Every pairwise interaction gets a gate that is either field-grained (one gate
for the pair of fields) or value-grained (a gate per pair of values, decomposed
into a product of per-value gates, as the full value-pair space is far too
large); which granularity a pair uses is learnt too. Gates train with the model
by the continuation of ``recsys.features.gates`` and binarise at the end.

Here the backbone is the project's DLRM (``model_options``: its ``model:``
section; ``embedding``: its embedding section), the model whose interaction mask
(``Schema.interactions``) the result becomes, trained with its pairwise dot
products gated. For the pair (i, j) of a row x:

    h_ij(x) = α_ij · G_ij + (1 − α_ij) · g_i(x_i) · g_j(x_j)

with ``G_ij`` the continuation gate of the field pair, ``g_f`` the per-value
gates (``ValueGates``; DLRM's dense vector has none: 1), and ``α_ij =
sigmoid(a_ij)`` the relaxed choice of granularity (no penalty; it starts at 0.88,
``choice_init``, so a pair goes value-grained only where that earns it; α ≥ 0.5
at the end means field-grained). The L1 push is on the hybrid gates each batch uses, plus,
as in OptFS, on the value gates the batch uses and on one gate per dense field
scaling its input to the bottom MLP (the mean over pairs and the mean over
fields are summed, so the ~F²/2 pairs do not drown the F fields).

What differs from the paper, and what the output keeps:

- one backbone (DLRM) rather than the paper's several (DeepFM, DCN, IPNN);
- the value-level selection tensor is decomposed at rank one, as the product
  of per-value gates (OptFS's decomposition), where the paper factorises it
  with learnt low-rank factors computed on the fly; the hybrid choice α is a
  plain sigmoid relaxation binarised at the end, where the paper trains it
  with a straight-through estimator;
- the temperature rises per step over ``steps`` (per epoch in the paper);
- a Schema can only keep or drop whole pairs, so a pair's *open mass* is its
  binary field gate when field-grained, or, when value-grained, the share of
  sampled rows whose two values both keep their gates; pairs whose mass is at
  least ``min_open`` (default 0.05) become ``Ranking.interactions`` (value-level selection
  inside a kept pair is not carried into the schema);
- DLRM merges the dense features into one bottom-MLP vector, so its pairs are
  named by the first dense field whose gate stays open, or else by one left
  out of the ranking (kept anyway), (any dense name means
  that vector in a DLRM mask). List-valued features (histories, multi-valued
  fields) are not candidates and have no value gates (1), but their pairs with
  candidates are gated like any other; pairs of two of them are always kept;
- per-field scores: a sparse field's is the summed open mass of the pairs it
  takes part in; a dense field's is its gate (0/1) times the dense vector's
  summed pair mass shared equally by the open dense fields that feed it;
  0.001 × the mean ``sigmoid`` of the field's gate logits breaks ties.
  ``suggested``: the sparse fields in a kept pair, and the dense fields whose gate
  stays open. ``interactions`` names only suggested fields and list-valued ones;
- the paper retrains on the selection; here that is ``recsys features select``
  then ``recsys train --schema`` (by the user or the benchmark).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch
from pydantic import Field, ValidationError
from torch import nn

from recsys.config import EmbeddingConfig
from recsys.errors import RecsysError
from recsys.features import register_feature_method
from recsys.features.base import FeatureData, FeatureMethod, Ranking
from recsys.features.gates import ContinuationOptions, ValueGates, row_gates, train_gated, train_schema
from recsys.models import build_model
from recsys.models.dlrm import DLRM
from recsys.schema import describe_validation_error
from recsys.types import Batch


class OptFeatureOptions(ContinuationOptions):
    """The continuation settings, and the DLRM backbone's sections."""

    l1: float = Field(0.03, ge=0, description="weight of the L1 push on the gates (pairs, then fields)")
    min_open: float = Field(0.05, ge=0, le=1, description="a pair is kept when at least this share of the sampled "
                                                          "rows keeps it open")
    choice_init: float = Field(2.0, ge=-10, le=10, description="start logit of each pair's granularity choice "
                                                               "(α = sigmoid: 0.88, mostly field-grained)")
    model_options: dict = Field(default_factory=dict, description="the DLRM backbone's model: section")
    embedding: dict = Field(default_factory=dict, description="its embedding: section")


class HybridGatedDLRM(nn.Module):
    """DLRM whose pairwise dot products pass through hybrid gates. Vectors in DLRM's order: the dense vector
    (when the schema has dense features), then the embedding module's pooled keys."""

    def __init__(self, dlrm: DLRM, sparse: list[str], dense: list[str], dense_at: list[int], rows: dict[str, int],
                 init: float, choice_init: float) -> None:
        super().__init__()
        self.dense_at = torch.tensor(dense_at, dtype=torch.long)  # gated dense fields' columns of batch.dense
        if dlrm.interaction != "dot":
            raise RecsysError("optfeature: model_options.interaction must be 'dot' (it gates the dot products)")
        self.dlrm = dlrm
        self.gates = ValueGates(rows, dense, init)
        names = list(dlrm.sparse_arch.feature_names)
        self.vectors: list[str | None] = ([None] if dlrm.has_dense else []) + names  # None: the dense vector
        self.sparse = sparse
        self.pairs = list(combinations(range(len(self.vectors)), 2))
        gated = set(sparse) | {None}
        # gated pairs: those with a candidate end (a list-valued feature is never dropped, but its pairs with
        # candidates can be); pairs of two list-valued features stay ungated and kept
        self.candidate = torch.tensor([self.vectors[i] in gated or self.vectors[j] in gated for i, j in self.pairs])
        self.left = torch.tensor([i for i, _ in self.pairs], dtype=torch.long)
        self.right = torch.tensor([j for _, j in self.pairs], dtype=torch.long)
        self.sparse_at = torch.tensor([self.vectors.index(f) for f in sparse], dtype=torch.long)
        self.flat = self.left * len(self.vectors) + self.right  # (P,) positions in a flattened (V, V) matrix
        self.field_logits = nn.Parameter(torch.full((len(self.pairs),), init))
        self.choice_logits = nn.Parameter(torch.full((len(self.pairs),), choice_init))  # α = sigmoid(·)
        self.used: dict[str, torch.Tensor] = {}  # the last forward's gates, by group, for the L1 push

    def value_gates(self, batch: Batch) -> torch.Tensor:
        """(B, V): each vector's value gate per row (1 for the dense vector and for non-candidates)."""
        rows = batch.dense.shape[0]
        columns = []
        for name in self.vectors:
            if name in self.sparse:
                columns.append(row_gates(batch.sparse, name, lambda ids, n=name: self.gates.sparse_gate(n, ids)))
            else:
                columns.append(torch.ones(rows))
        return torch.stack(columns, dim=1)

    def hybrid(self, batch: Batch) -> torch.Tensor:
        """(B, P) the pair gates h_ij(x); 1 for a pair of two list-valued features (never gated)."""
        values = self.value_gates(batch)  # (B, V)
        if self.sparse:
            self.used["values"] = values[:, self.sparse_at].mean(0)  # (F_gated,) each field's mean value gate
        by_value = values[:, self.left] * values[:, self.right]  # (B, P)
        alpha = torch.sigmoid(self.choice_logits)
        field = self.gates.open(self.field_logits)
        h = alpha * field + (1 - alpha) * by_value
        return torch.where(self.candidate, h, torch.ones_like(h))

    def forward(self, batch: Batch) -> torch.Tensor:
        dlrm = self.dlrm
        sparse = dlrm.field_matrix(dlrm.sparse_arch(batch.sparse))  # (B, F, D)
        parts = [sparse]
        dense = None
        if dlrm.dense_arch is not None:
            g = self.gates.dense_gate()
            self.used["dense"] = g
            scale = torch.ones(batch.dense.shape[1], dtype=batch.dense.dtype).index_put((self.dense_at,), g)
            dense = dlrm.dense_arch(batch.dense * scale)  # (B, D)
            parts.insert(0, dense.unsqueeze(1))
        vectors = torch.cat(parts, dim=1)  # (B, V, D)
        dots = torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)[:, self.flat]  # (B, V, V) → (B, P)
        h = self.hybrid(batch)
        if bool(self.candidate.any()):
            self.used["pairs"] = h[:, self.candidate].mean(0)  # (P_gated,)
        gated = dots * h
        features = torch.cat([dense, gated], dim=1) if dense is not None else gated
        return dlrm.over_arch(features).squeeze(1)

    def penalty(self) -> torch.Tensor:
        """The L1 push: the mean pair gate plus the mean gate of the fields (a sparse field's: its values'
        mean in the batch, as OptFS; a dense field's: its gate), so that neither group drowns the other."""
        fields = [self.used[k] for k in ("values", "dense") if k in self.used]
        push = torch.cat(fields).mean() if fields else torch.zeros(())
        if "pairs" in self.used:
            push = push + self.used["pairs"].mean()
        self.used.clear()
        return push


@register_feature_method
class OptFeature(FeatureMethod):
    """Field pairs kept by hybrid-grained interaction gates trained inside DLRM (see the module docstring)."""

    name = "optfeature"
    paper = ("Lyu, Tang, Liu, Ma, Luo, Chen, He, Liu, NeurIPS 2023: Towards Hybrid-grained Feature Interaction "
             "Selection for Deep Sparse Network")
    Options = OptFeatureOptions
    trains_model = True
    quick = {"steps": 60}

    def rank(self, data: FeatureData) -> Ranking:
        options: OptFeatureOptions = self.options  # type: ignore[assignment]
        seed = data.seed if options.seed is None else options.seed
        torch.manual_seed(seed)
        schema = train_schema(data)
        try:
            embedding = EmbeddingConfig.model_validate(options.embedding)
        except ValidationError as exc:
            raise RecsysError(f"optfeature embedding: {describe_validation_error(exc, options.embedding)}") from None
        dlrm = build_model("dlrm", schema, options.model_options, embedding)
        rows = {f: data.cardinality[f] for f in data.sparse_fields}
        dense_at = [[f.name for f in schema.dense].index(f) for f in data.dense_fields]
        model = HybridGatedDLRM(dlrm, data.sparse_fields, data.dense_fields, dense_at, rows, options.init,
                                options.choice_init)
        gates = model.gates
        gate_params = [*gates.parameters(), model.field_logits, model.choice_logits]
        report = train_gated(model, gates, gate_params, model.penalty, model, data, schema, options, seed)
        model.used.clear()

        # open mass per pair, on the sample
        sample_open = {f: gates.sparse[f].detach().numpy()[np.clip(data.column(f), 0, rows[f] - 1)] > 0
                       for f in data.sparse_fields}
        n = data.frame.height
        dense_open = [f for j, f in enumerate(data.dense_fields) if float(gates.dense[j].detach()) > 0]
        alpha = torch.sigmoid(model.choice_logits.detach())
        mass: dict[tuple[int, int], float] = {}
        grain: dict[tuple[int, int], str] = {}
        for p, (i, j) in enumerate(model.pairs):
            if not bool(model.candidate[p]):
                continue
            if alpha[p] >= 0.5:
                mass[(i, j)] = float(model.field_logits[p].detach() > 0)
                grain[(i, j)] = "field"
            else:
                both = np.ones(n, dtype=bool)
                for v in (i, j):
                    name = model.vectors[v]
                    if name in sample_open:  # the dense vector and list-valued features have no value gates
                        both &= sample_open[name]
                mass[(i, j)] = float(both.mean()) if n else 0.0
                grain[(i, j)] = "value"
        always = [f.name for f in schema.dense if f.name not in data.dense_fields]  # dense fields left unranked
        dense_name = (dense_open + always)[0] if dense_open + always else None

        def named(v: int) -> str | None:
            name = model.vectors[v]
            return dense_name if name is None else name

        chosen = {v for (i, j), m in mass.items() if m >= options.min_open for v in (i, j)}  # ends of kept pairs
        kept: list[tuple[str, str]] = []
        for p, (i, j) in enumerate(model.pairs):
            a, b = named(i), named(j)
            if a is not None and b is not None and (not bool(model.candidate[p]) or mass[(i, j)] >= options.min_open):
                kept.append((a, b))
        scores: dict[str, float] = {}
        dense_mass = sum(m for (i, j), m in mass.items() if model.vectors[i] is None or model.vectors[j] is None)
        for f in data.sparse_fields:
            v = model.vectors.index(f)
            scores[f] = sum(m for (i, j), m in mass.items() if v in (i, j)) + 1e-3 * gates.soft_share(
                f, data.column(f))
        for k, f in enumerate(data.dense_fields):
            logit = float(gates.dense[k].detach())
            share = dense_mass / max(len(dense_open), 1)  # the dense vector's pair mass, shared by its inputs
            scores[f] = float(logit > 0) * share + 1e-3 * float(torch.sigmoid(torch.tensor(logit)))
        in_pairs = {model.vectors[v] for v in chosen}
        suggested = [f for f in data.fields
                     if (data.kinds[f] == "sparse" and f in in_pairs) or (data.kinds[f] == "dense" and f in dense_open)]
        shown = {f"{model.vectors[i] or 'dense'}×{model.vectors[j] or 'dense'}": round(m, 5)
                 for (i, j), m in sorted(mass.items(), key=lambda kv: -kv[1])}
        report |= {"model": "dlrm", "pairs": len(mass), "kept_pairs": len(kept),
                   "field_grained": sum(g == "field" for g in grain.values()),
                   "gate_sparsity": round(gates.closed_fraction(), 5), "pair_mass": shown,
                   "dense_vector_named": dense_name, "min_open": options.min_open,
                   "retrain": "not done here: `recsys features select` then `recsys train --schema` (DLRM reads "
                              "the kept pairs as Schema.interactions)"}
        return Ranking(method=self.name, scores=scores, suggested=suggested, interactions=kept, details=report)

