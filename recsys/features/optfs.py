"""OptFS: a learnable gate per feature value, trained with any registered ranking model by continuation.

Paper: Fuyuan Lyu, Xing Tang, Dugang Liu, Liang Chen, Xiuqiang He, Xue Liu, "Optimizing
Feature Set for Click-Through Rate Prediction", WWW 2023. Each feature value (an
embedding row) gets a gate multiplying its embedding; gates and model
train jointly by learning-by-continuation (``recsys.features.gates``), gates
binarise at the end, and the model is retrained on the kept feature set.

What differs here:

- the backbone is any registered ranking model (``model``, ``model_options``,
  ``embedding``), gated from outside through hooks, not a re-implementation;
- dense fields get one gate each (the paper gates categorical values only);
- the temperature rises per step over a fixed ``steps`` budget (per epoch in the
  paper) and the L1 push is on the gates each batch uses (frequency-weighted);
- the output is per field, since a Schema keeps or drops whole fields: a field's
  score is the share of its sampled values (so weighted by frequency) whose gate
  stays open (dense: 1 or 0), plus 0.001 × the mean ``sigmoid(m)`` of those
  values as a tie-break; ``suggested`` holds the fields whose open share is at
  least ``min_open`` (default 0.2). Value-level pruning inside a kept field is
  not carried into the schema;
- the paper's retraining on the kept features is not done here: it is
  ``recsys features select`` then ``recsys train --schema`` (by the user or the
  benchmark).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from recsys.features import register_feature_method
from recsys.features.base import FeatureData, FeatureMethod, Ranking
from recsys.features.gates import ContinuationOptions, gate_model, train_gated, train_schema


class OptFSOptions(ContinuationOptions):
    """The continuation settings, and the ranking model the gates train with."""

    model: str = Field("dlrm", description="the registered ranking model the gates train with")
    model_options: dict = Field(default_factory=dict, description="its model: section")
    embedding: dict = Field(default_factory=dict, description="its embedding: section")


@register_feature_method
class OptFS(FeatureMethod):
    """Fields scored by the frequency-weighted share of their values whose learnt gate stays open."""

    name = "optfs"
    paper = ("Lyu, Tang, Liu, Chen, He, Liu, WWW 2023: Optimizing Feature Set for Click-Through Rate Prediction")
    Options = OptFSOptions
    trains_model = True
    quick = {"steps": 60}

    def rank(self, data: FeatureData) -> Ranking:
        options: OptFSOptions = self.options  # type: ignore[assignment]
        seed = data.seed if options.seed is None else options.seed
        torch.manual_seed(seed)
        schema = train_schema(data)
        gated = gate_model(options.model, schema, options.model_options, options.embedding, data.sparse_fields,
                           data.dense_fields, options.init)

        report = train_gated(nn.ModuleList([gated.model, gated.gates]), gated.gates, list(gated.gates.parameters()),
                             gated.penalty, gated.model,
                             data, schema, options, seed)
        gated.penalties.clear()
        scores: dict[str, float] = {}
        open_share: dict[str, float] = {}
        for f in data.sparse_fields:
            ids = data.column(f)
            open_share[f] = gated.gates.open_share(f, ids)
            scores[f] = open_share[f] + 1e-3 * gated.gates.soft_share(f, ids)
        logits = gated.gates.dense.detach()
        for j, f in enumerate(data.dense_fields):
            open_share[f] = float(logits[j] > 0)
            scores[f] = open_share[f] + 1e-3 * float(torch.sigmoid(logits[j]))
        suggested = [f for f in data.fields if open_share[f] >= options.min_open]
        report |= {"model": options.model, "gate_sparsity": round(gated.gates.closed_fraction(), 5),
                   "open_share": {f: round(v, 5) for f, v in open_share.items()},
                   "min_open": options.min_open,
                   "retrain": "not done here: `recsys features select` then `recsys train --schema` on the kept fields"}
        return Ranking(method=self.name, scores=scores, suggested=suggested, details=report)

