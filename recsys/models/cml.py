"""CML: Collaborative Metric Learning, users and items as points, closer is better.

Paper: Hsieh et al., "Collaborative Metric Learning", WWW 2017. A user and an item
vector per id (tables from ``recsys.embeddings``, sharded by torchrec); the score
is minus the squared euclidean distance (similarity ``l2``: the index ranks by
distance); the loss the hinge [m + d(u, v⁺)² - d(u, v⁻)²]₊ over uniformly sampled
negatives (the implicit task's ``hinge`` on s = -d²); every vector is kept in the
unit ball; the covariance regulariser (the paper's L_c: the off-diagonal
covariances of the batch's user and item vectors, ``covariance`` × (‖C‖²_F -
‖diag C‖²) / N over its N vectors) de-correlates the dimensions and is the
``PairScores.penalty``. With ``content: true`` the item-entity features but the id
(pooled sparse vectors and dense values) go through an MLP f whose output is pulled
toward the item's vector (the paper's L_f = Σ‖f(x_j) - v_j‖², weight
``content_weight``), which shapes the space for items with few interactions.
Differences from the paper:

- the unit-ball constraint is a projection in the forward (v / max(1, ‖v‖)),
  where the paper clips the stored vectors after each update: the two give the
  same vectors, and the projection works with fbgemm's fused optimizers, which
  update the tables inside the backward;
- the hinge is averaged over ``negatives`` per row instead of taking the paper's
  rank-weighted (WARP) hardest impostor among U samples;
- the covariance is over the batch's vectors (the paper: over all of them), and
  the content MLP has no dropout.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from recsys.errors import RecsysError
from recsys.models import register_model, select_features
from recsys.models.candidates import ITEM_ID, USER_ID, Candidates, SampledConfig, id_features
from recsys.models.retriever import PairScores, RetrievalLoss, Retriever, Similarity
from recsys.models.two_tower import Tower
from recsys.schema import Entity, Schema
from recsys.types import Batch


class CMLConfig(SampledConfig):
    """The ``model:`` section for ``--model cml``."""

    loss: RetrievalLoss = RetrievalLoss.HINGE
    negatives: int = Field(10, ge=0)
    covariance: float = Field(1.0, ge=0, description="weight of the covariance regulariser (the paper's λ_c)")
    content: bool = Field(False, description="pull item vectors toward an MLP of the item's other features")
    content_weight: float = Field(1.0, ge=0, description="weight of the content loss (the paper's λ_f)")
    content_mlp: list[int] = Field([64], description="hidden layers of the content MLP (its output: the dim)")


def unit_ball(vectors: torch.Tensor) -> torch.Tensor:
    """Each row scaled back to norm 1 if it is longer: (N, d) → (N, d)."""
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1.0)


def covariance_penalty(vectors: torch.Tensor) -> torch.Tensor:
    """(‖C‖²_F - ‖diag C‖²) / N of the covariance C (d, d) of N vectors (N, d): the paper's L_c."""
    centred = vectors - vectors.mean(dim=0, keepdim=True)
    rows = vectors.shape[0]
    covariance = centred.T @ centred / rows  # (d, d)
    return (covariance.square().sum() - covariance.diagonal().square().sum()) / rows


class CML(Retriever):
    """Batch → PairScores of -d² between each user and its positive and sampled items.

        model = CML(schema, CMLConfig(), embeddings)
        out = model(batch)                   # PairScores: scores (B, 1 + negatives), penalty: L_c (+ L_f)
        users = model.user_vectors(batch)    # (B, d), norms <= 1
    """

    similarity = Similarity.L2

    def __init__(self, schema: Schema, config: CMLConfig, embeddings: nn.Module) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.keys: list[str] = list(embeddings.input_names)
        dims = dict(zip(embeddings.feature_names, embeddings.embedding_dims))
        if dims[USER_ID] != dims[ITEM_ID]:
            raise RecsysError(f"embedding: cml needs one dim for user_id and item_id, got {dims[USER_ID]} and "
                              f"{dims[ITEM_ID]}")
        self.config = config
        self.content: Tower | None = None
        if config.content:
            features = _content_features(schema)
            dense = [i for i, f in enumerate(schema.dense) if f.entity is Entity.ITEM]
            if not features and not dense:
                raise RecsysError("model.content: the schema has no item feature besides item_id to learn content "
                                  "vectors from")
            self.content = Tower(features, [dims[f] for f in features], dense,
                                 [*config.content_mlp, dims[ITEM_ID]], normalize=False)
        self.candidates = Candidates(schema, config, self.similarity)

    def _items(self, ids: torch.Tensor) -> torch.Tensor:
        return unit_ball(self.embeddings(id_features(self.keys, ITEM_ID, ids)).pooled[ITEM_ID])  # (N, d)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        return unit_ball(self.embeddings(select_features(batch.sparse, self.keys)).pooled[USER_ID])  # (B, d)

    def item_vectors(self, batch: Batch) -> torch.Tensor:
        return unit_ball(self.embeddings(select_features(batch.sparse, self.keys)).pooled[ITEM_ID])  # (B, d)

    def forward(self, batch: Batch) -> PairScores:
        features = select_features(batch.sparse, self.keys)
        pooled = self.embeddings(features).pooled.to_dict()
        users, positives = unit_ball(pooled[USER_ID]), unit_ball(pooled[ITEM_ID])  # (B, d) each
        ids = features[ITEM_ID].values()  # (B,)
        penalty = self.config.covariance * covariance_penalty(torch.cat([users, positives]))
        if self.content is not None:
            pulled = self.content(pooled, batch.dense)  # (B, d)
            penalty = penalty + self.config.content_weight * (pulled - positives).square().sum(1).mean()
        return self.candidates(users, positives, ids, self._items, self.score, penalty)


def _content_features(schema: Schema) -> list[str]:
    return [f for f in schema.sparse_keys if f in schema.features_of(Entity.ITEM) and f != ITEM_ID]


def inputs(schema: Schema, config: CMLConfig) -> list[str]:
    missing = [f for f in (USER_ID, ITEM_ID) if f not in schema.sparse_keys]
    if missing:
        raise RecsysError(f"schema: cml needs the sparse features user_id and item_id (one row per user and per "
                          f"item); '{missing[0]}' is missing")
    return [USER_ID, ITEM_ID, *(_content_features(schema) if config.content else [])]


@register_model("cml", CMLConfig, inputs)
def build(schema: Schema, config: CMLConfig, embeddings: nn.Module) -> nn.Module:
    return CML(schema, config, embeddings)
