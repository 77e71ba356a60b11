"""MF-BPR: a user vector and an item vector per id, scored by their dot product.

Paper: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback",
UAI 2009 (matrix factorisation trained by BPR with uniformly sampled negatives).
The user_id and item_id tables come from ``recsys.embeddings`` (any scheme, sharded
by torchrec like every table); negatives are looked up through the same embedding
module, as a KeyedJaggedTensor with every key of the module and empty bags but the
item's (``recsys.models.candidates``). Differences from the paper:

- minibatches of B positives with ``negatives`` sampled items each (the paper: SGD
  on one bootstrapped triple at a time), the loss averaged over them;
- the L2 regulariser is ``l2`` × the squared norms of the batch's vectors, over the
  batch (as LightGCN's MF-BPR baseline computes it), or the sparse optimizer's
  ``weight_decay``;
- any loss of the implicit task (softmax: the batch's positives plus shared sampled
  items, log-Q corrected; see ``recsys.models.candidates``), BPR by default.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from recsys.errors import RecsysError
from recsys.models import register_model, select_features
from recsys.models.candidates import ITEM_ID, USER_ID, Candidates, SampledConfig, id_features
from recsys.models.retriever import PairScores, Retriever
from recsys.schema import Schema
from recsys.types import Batch


class MFConfig(SampledConfig):
    """The ``model:`` section for ``--model mf``."""

    l2: float = Field(0.0, ge=0, description="weight of the squared norms of the batch's vectors (mean per row)")


class MF(Retriever):
    """Batch → PairScores; user and item vectors are rows of the user_id and item_id tables.

        model = MF(schema, MFConfig(), embeddings)
        out = model(batch)                   # PairScores: scores (B, 1 + negatives)
        users = model.user_vectors(batch)    # (B, d)
    """

    def __init__(self, schema: Schema, config: MFConfig, embeddings: nn.Module) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.keys: list[str] = list(embeddings.input_names)
        dims = dict(zip(embeddings.feature_names, embeddings.embedding_dims))
        if dims[USER_ID] != dims[ITEM_ID]:
            raise RecsysError(f"embedding: mf needs one dim for user_id and item_id, got {dims[USER_ID]} and "
                              f"{dims[ITEM_ID]}")
        self.l2 = config.l2
        self.candidates = Candidates(schema, config, self.similarity)

    def _items(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(id_features(self.keys, ITEM_ID, ids)).pooled[ITEM_ID]  # (N, d)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        return self.embeddings(select_features(batch.sparse, self.keys)).pooled[USER_ID]  # (B, d)

    def item_vectors(self, batch: Batch) -> torch.Tensor:
        return self.embeddings(select_features(batch.sparse, self.keys)).pooled[ITEM_ID]  # (B, d)

    def forward(self, batch: Batch) -> PairScores:
        features = select_features(batch.sparse, self.keys)
        pooled = self.embeddings(features).pooled
        users, positives = pooled[USER_ID], pooled[ITEM_ID]  # (B, d) each
        ids = features[ITEM_ID].values()  # (B,): one item per row
        penalty = None
        if self.l2:
            penalty = self.l2 * (users.square().sum() + positives.square().sum()) / users.shape[0]
        return self.candidates(users, positives, ids, self._items, self.score, penalty)


def inputs(schema: Schema, config: MFConfig) -> list[str]:
    missing = [f for f in (USER_ID, ITEM_ID) if f not in schema.sparse_keys]
    if missing:
        raise RecsysError(f"schema: mf needs the sparse features user_id and item_id (one row per user and per "
                          f"item); '{missing[0]}' is missing")
    return [USER_ID, ITEM_ID]


@register_model("mf", MFConfig, inputs)
def build(schema: Schema, config: MFConfig, embeddings: nn.Module) -> nn.Module:
    return MF(schema, config, embeddings)
