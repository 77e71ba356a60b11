"""The retriever contract: models that embed users and items into one space, for candidate generation.

A retriever is a registered model (``recsys.models``) of an ``implicit`` schema. It
gives a user vector from the user-entity features of a batch and an item vector from
its item-entity features; the score of a (user, item) pair is their ``similarity``
(a dot product, or minus the squared distance for metric-learning models). That is
all the index, the full-ranking evaluation and the retrieval service use.

Its ``forward`` is for training only: it returns ``PairScores``, the scores of each
row's user against its positive item and some negatives (sampled ids, or the other
rows' items), and the ``implicit`` task (``recsys.tasks.implicit``) turns them into a
loss: BPR, sampled softmax with log-Q correction, or hinge.

    model = build_model("mf", schema, {"loss": "bpr"}, EmbeddingConfig())
    out = model(batch)                       # PairScores: scores (B, C), target (B,)
    users = model.user_vectors(batch)        # (B, d)
    items = model.item_vectors(batch)        # (B, d)
    scores = model.score(users, items)       # (B, B): every user against every item
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from enum import StrEnum

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recsys.types import Batch


class Similarity(StrEnum):
    DOT = "dot"  # inner product (faiss METRIC_INNER_PRODUCT)
    L2 = "l2"  # minus the squared euclidean distance (faiss METRIC_L2, ranked ascending by distance)


class RetrievalLoss(StrEnum):
    BPR = "bpr"  # Rendle et al., UAI 2009: -log σ(s⁺ - s⁻)
    SOFTMAX = "softmax"  # sampled softmax over the candidates, logits corrected by -log q (Yi et al., RecSys 2019)
    HINGE = "hinge"  # max(0, margin - s⁺ + s⁻): with s = -d², CML's loss (Hsieh et al., WWW 2017)


class NegativeSampling(StrEnum):
    UNIFORM = "uniform"  # item ids drawn uniformly from the item table
    IN_BATCH = "in_batch"  # the other rows' items (their features come with them: two-tower models)


class RetrieverConfig(BaseModel):
    """The fields every retriever's ``model:`` section has; a model's own class adds its knobs."""

    model_config = ConfigDict(extra="forbid")

    loss: RetrievalLoss = RetrievalLoss.BPR
    negatives: int = Field(1, ge=0, description="bpr/hinge: negatives per row; softmax: extra uniformly sampled "
                                                "negatives shared by the batch (0: in-batch only)")
    sampling: NegativeSampling = NegativeSampling.UNIFORM
    temperature: float = Field(1.0, gt=0, description="softmax: logits are divided by it")
    margin: float = Field(0.5, gt=0, description="hinge: the margin")


@dataclass
class PairScores:
    """A training batch's scores, for the implicit task's loss.

    scores:  (B, C) similarity of each row's user to C candidate items.
    target:  (B,) int64, the column of each row's positive item.
    exclude: (B, C) bool or None: candidates to ignore for a row (another row's copy of its positive).
    log_q:   (C,) or (B, C) or None: log of each candidate's sampling probability; softmax subtracts it.
    penalty: scalar or None, added to the loss (regularisers: CML's covariance term, L2 on embeddings).
    """

    scores: torch.Tensor
    target: torch.Tensor
    loss: RetrievalLoss
    margin: float = 0.5
    temperature: float = 1.0
    exclude: torch.Tensor | None = None
    log_q: torch.Tensor | None = None
    penalty: torch.Tensor | None = None


class Retriever(nn.Module):
    """Base class of retrieval models; see the module docstring."""

    similarity: Similarity = Similarity.DOT
    # torchrec's train pipeline prefetches the embeddings of the batch's own ids; a retriever also looks up ids it
    # draws inside forward (sampled negatives), which the pipeline would answer with the batch's: never pipelined.
    pipelineable: bool = False

    @abstractmethod
    def user_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, d) from the batch's user-entity features only (the rest may be empty)."""

    @abstractmethod
    def item_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, d) from the batch's item-entity features only (the rest may be empty)."""

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(U, d) × (I, d) → (U, I) scores, higher is better."""
        if self.similarity is Similarity.DOT:
            return users @ items.T
        return -torch.cdist(users, items).square()


def is_retriever(model: nn.Module) -> bool:
    return isinstance(getattr(model, "module", model), Retriever) or isinstance(model, Retriever)
