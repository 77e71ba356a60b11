"""Two-tower retrieval: a user tower and an item tower over the schema's user and item features, dot product.

Paper: Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019 (YouTube's two-tower model): each tower is an MLP over
its entity's features (here: every user-entity, respectively item-entity, sparse
feature of the Schema pooled by ``recsys.embeddings``, histories mean-pooled, and
its dense features), the outputs L2-normalised, the loss a softmax over the batch's
items with temperature and the logits corrected by -log q, q each item's in-batch
frequency estimated on the stream (their Algorithm 2; ``recsys.models.candidates``).
A candidate that is another row's copy of a row's positive is masked for that row.
Differences from the paper:

- one item-frequency array indexed by item id instead of hashed arrays;
- no seed-video/context features in the user tower: a user vector is a function of
  the user's features alone, so the service can compute it from the feature store;
- uniformly sampled extra negatives (``negatives: N``) are supported only when the
  item tower's sole input is item_id, as a sampled id brings no other features;
- bpr/hinge losses are also available (over in-batch negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from recsys.errors import RecsysError
from recsys.models import register_model, select_features
from recsys.models.candidates import ITEM_ID, Candidates, SampledConfig, id_features
from recsys.models.retriever import NegativeSampling, PairScores, RetrievalLoss, Retriever
from recsys.schema import Entity, Schema
from recsys.types import Batch


class TwoTowerConfig(SampledConfig):
    """The ``model:`` section for ``--model two_tower``."""

    loss: RetrievalLoss = RetrievalLoss.SOFTMAX
    sampling: NegativeSampling = NegativeSampling.IN_BATCH
    negatives: int = Field(0, ge=0, description="extra uniformly sampled negatives shared by the batch")
    temperature: float = Field(0.05, gt=0)
    tower: list[int] = Field([128, 64], min_length=1, description="hidden layers, then the output dim")
    normalize: bool = Field(True, description="L2-normalise both towers' outputs (the paper's)")

    @model_validator(mode="after")
    def _sizes(self) -> TwoTowerConfig:
        if any(size < 1 for size in self.tower):
            raise ValueError("tower sizes must be at least 1")
        return self


def _mlp(width: int, sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, size in enumerate(sizes):
        layers.append(nn.Linear(width, size))
        if i < len(sizes) - 1:
            layers.append(nn.ReLU())
        width = size
    return nn.Sequential(*layers)


class Tower(nn.Module):
    """One entity's features → its vector: pooled sparse vectors and dense values, concatenated, through an MLP.

        tower = Tower(["user_id"], [16], [], [128, 64])
        vectors = tower(pooled, batch.dense)     # (B, 64)
    """

    def __init__(self, features: list[str], dims: list[int], dense: list[int], sizes: list[int],
                 normalize: bool) -> None:
        super().__init__()
        self.features, self.dense, self.normalize = features, dense, normalize
        self.mlp = _mlp(sum(dims) + len(dense), sizes)

    def forward(self, pooled: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        parts = [pooled[f] for f in self.features]
        if self.dense:
            parts.append(dense[:, self.dense])
        out = self.mlp(torch.cat(parts, dim=1))  # (B, Σ dims + dense) → (B, d)
        return F.normalize(out, dim=1) if self.normalize else out


class TwoTower(Retriever):
    """Batch → PairScores over the batch's items (and sampled ones).

        model = TwoTower(schema, TwoTowerConfig(), embeddings)
        out = model(batch)                   # PairScores: scores (B, B + negatives)
        users = model.user_vectors(batch)    # (B, tower[-1])
    """

    def __init__(self, schema: Schema, config: TwoTowerConfig, embeddings: nn.Module) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.keys: list[str] = list(embeddings.input_names)
        dims = dict(zip(embeddings.feature_names, embeddings.embedding_dims))
        dense = [f.name for f in schema.dense]
        towers = {}
        for entity in (Entity.USER, Entity.ITEM):
            sparse = [f for f in self.keys if f in schema.features_of(entity)]
            own_dense = [dense.index(f.name) for f in schema.dense if f.entity is entity]
            if not sparse and not own_dense:
                raise RecsysError(f"schema: two_tower needs {entity.value} features; the schema has none")
            towers[entity] = Tower(sparse, [dims[f] for f in sparse], own_dense, config.tower, config.normalize)
        self.user_tower, self.item_tower = towers[Entity.USER], towers[Entity.ITEM]
        if config.negatives and (self.item_tower.features != [ITEM_ID] or self.item_tower.dense):
            raise RecsysError(f"model.negatives: two_tower samples extra negatives by item id, which brings no other "
                              f"item features, but its item tower also reads "
                              f"{[f for f in self.item_tower.features if f != ITEM_ID] + self.item_tower.dense}; "
                              "use negatives 0 (the batch's items)")
        self.num_dense = len(dense)
        self.candidates = Candidates(schema, config, self.similarity)

    def _pooled(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.embeddings(select_features(batch.sparse, self.keys)).pooled.to_dict()

    def _items(self, ids: torch.Tensor) -> torch.Tensor:
        pooled = self.embeddings(id_features(self.keys, ITEM_ID, ids)).pooled.to_dict()
        return self.item_tower(pooled, torch.zeros(ids.numel(), self.num_dense, device=ids.device))  # (N, d)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        return self.user_tower(self._pooled(batch), batch.dense)  # (B, d)

    def item_vectors(self, batch: Batch) -> torch.Tensor:
        return self.item_tower(self._pooled(batch), batch.dense)  # (B, d)

    def forward(self, batch: Batch) -> PairScores:
        pooled = self._pooled(batch)
        users = self.user_tower(pooled, batch.dense)  # (B, d)
        items = self.item_tower(pooled, batch.dense)  # (B, d)
        ids = batch.sparse[ITEM_ID].values()  # (B,): one item per row
        return self.candidates(users, items, ids, self._items, self.score)


def inputs(schema: Schema, config: TwoTowerConfig) -> list[str]:
    """The user's and the item's sparse features (context features have no place in either tower)."""
    if ITEM_ID not in schema.sparse_keys:
        raise RecsysError("schema: two_tower needs the sparse feature item_id (one row per item): the batch's "
                          "candidates are told apart by it")
    entities = set(schema.features_of(Entity.USER)) | set(schema.features_of(Entity.ITEM))
    return [f for f in schema.sparse_keys if f in entities]


@register_model("two_tower", TwoTowerConfig, inputs)
def build(schema: Schema, config: TwoTowerConfig, embeddings: nn.Module) -> nn.Module:
    return TwoTower(schema, config, embeddings)
