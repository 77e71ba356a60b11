"""Implicit feedback for retrieval: observed user-item interactions, a retriever's pair scores, ranking metrics.

A retriever's forward returns ``PairScores`` (``recsys.models.retriever``): each
row's user scored against its positive item and some negatives. The loss is the
one the model's config names:

- ``bpr``: mean over negatives of -log σ(s⁺ - s⁻) (Rendle et al., "BPR: Bayesian
  Personalized Ranking from Implicit Feedback", UAI 2009);
- ``softmax``: cross entropy over the candidates with logits (s - log q) / τ, the
  sampling-bias correction of Yi et al., "Sampling-Bias-Corrected Neural Modeling
  for Large Corpus Item Recommendations", RecSys 2019; excluded candidates (another
  row's copy of the positive) are masked out. The candidates are the batch's
  positives plus ``negatives`` item ids sampled uniformly once for the batch: as
  Partial FC samples class centres for faces, a step looks up B + N rows of the
  (sharded) item table however large the catalogue (``recsys.models.candidates``);
- ``hinge``: mean over negatives of max(0, m - s⁺ + s⁻); with s = -d² this is
  Collaborative Metric Learning's loss (Hsieh et al., WWW 2017).

Metrics are full-ranking (every catalogue item is scored, the user's training
items excluded): Recall@K, NDCG@K, HR@K for K in ``CUTOFFS`` and MRR, computed by
``recsys.eval``; Recall@20 is the primary one, as on the BARS matching benchmarks.
The trainer asks for them through ``evaluate_model`` (the task contract's hook for
tasks judged on whole models), not batch by batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.distributed.types import LazyAwaitable

from recsys.errors import RecsysError
from recsys.models.retriever import PairScores, RetrievalLoss, Retriever
from recsys.tasks import EvalSplit, Metric, MetricState, TaskSpec, register_task
from recsys.types import Batch

CUTOFFS = (5, 10, 20, 50)

METRICS = [
    *(Metric(f"recall@{k}", f"Recall@{k}", 1, f"recall at {k} (full ranking)", logged=k in (20, 50))
      for k in CUTOFFS),
    *(Metric(f"ndcg@{k}", f"NDCG@{k}", 1, f"NDCG at {k} (full ranking)", logged=k == 20) for k in CUTOFFS),
    *(Metric(f"hr@{k}", f"HR@{k}", 1, f"hit rate at {k} (full ranking)", logged=False) for k in CUTOFFS),
    Metric("mrr", "MRR", 1, "mean reciprocal rank of the first relevant item (full ranking)"),
]


def pair_loss(out: PairScores) -> torch.Tensor:
    """The mean training loss of a batch's pair scores (see the module docstring)."""
    scores = out.scores.float()
    if out.loss is RetrievalLoss.SOFTMAX:
        logits = scores if out.log_q is None else scores - out.log_q
        if out.exclude is not None:
            logits = logits.masked_fill(out.exclude, float("-inf"))
        loss = F.cross_entropy(logits / out.temperature, out.target)
    else:
        positive = scores.gather(1, out.target.unsqueeze(1))  # (B, 1)
        negative = torch.ones_like(scores, dtype=torch.bool).scatter_(1, out.target.unsqueeze(1), False)
        if out.exclude is not None:
            negative &= ~out.exclude
        margins = positive - scores  # (B, C): s⁺ - s⁻ for every negative column
        if out.loss is RetrievalLoss.BPR:
            per_pair = -F.logsigmoid(margins)
        else:
            per_pair = F.relu(out.margin - margins)
        loss = (per_pair * negative).sum() / negative.sum().clamp(min=1)
    if out.penalty is not None:
        loss = loss + out.penalty
    return loss


@register_task("implicit")
class ImplicitRetrieval(TaskSpec):
    name = "implicit"
    primary = "recall@20"
    score_description = "the retriever's similarity of user and item (dot product, or minus squared distance)"

    def loss(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, PairScores):
            raise RecsysError(f"--model: the implicit task trains retrievers, whose forward returns PairScores; "
                              f"this model gives {type(logits).__name__}")
        return pair_loss(logits)

    def link(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float()

    def link_numpy(self, logits: np.ndarray) -> np.ndarray:
        return logits.astype(np.float64)

    def metric_state(self, device: torch.device) -> MetricState:
        raise NotImplementedError("implicit: evaluation is full-ranking (recsys.eval), not per batch")

    @property
    def metrics(self) -> list[Metric]:
        return METRICS

    def offline_metrics(self, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        return {"rows": len(labels)}

    def evaluate_model(self, model: nn.Module, split: EvalSplit) -> dict[str, float]:
        """Full ranking of the split's users over the catalogue (``recsys.eval.retrieval``), from the retriever's
        user and item vectors: the same calls on every process (each a collective for a sharded model)."""
        from recsys.eval.retrieval import evaluate_retriever

        if not isinstance(model, Retriever):
            raise RecsysError(f"{split.data_dir}: implicit data trains retrievers (models whose forward gives "
                              f"PairScores); {type(model).__name__} is a ranking model")

        def users(batch: Batch) -> torch.Tensor:
            return _resolved(model.user_vectors(batch.to(split.device)))

        def items(batch: Batch) -> torch.Tensor:
            return _resolved(model.item_vectors(batch.to(split.device)))

        return evaluate_retriever(users, items, model.similarity, split.data_dir, split.split)


def _resolved(vectors: torch.Tensor | LazyAwaitable[torch.Tensor]) -> torch.Tensor:
    """A sharded embedding module answers with a lazy awaitable of its output: wait for it."""
    return vectors.wait() if isinstance(vectors, LazyAwaitable) else vectors
