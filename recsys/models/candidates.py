"""The candidates a retriever is trained against, shared by the retrievers: sampled items, in-batch items, log-Q.

A retriever's forward scores each row's user against its positive item and some
negatives and returns ``PairScores`` (``recsys.models.retriever``); which
negatives is the config's choice (``SampledConfig``):

- ``bpr``/``hinge`` with ``sampling: uniform``: ``negatives`` item ids per row, drawn
  uniformly from the item table (Rendle et al. 2009's sampler), scores (B, 1 + N);
- ``bpr``/``hinge`` with ``sampling: in_batch``: the other rows' positives, (B, B);
- ``softmax`` (``sampling: in_batch``): the batch's positives plus ``negatives`` ids
  drawn uniformly once for the whole batch, (B, B + N). This is how sampled softmax
  scales to catalogues of millions of items: as Partial FC does for face classes
  (An et al., CVPR 2022: the positive class centres plus a random subset of the
  others), only B + N rows of the item table are looked up per step, and the table
  stays sharded by torchrec. The logits are corrected by -log q, q the expected
  number of times an item is a candidate: its in-batch frequency, estimated on the
  stream by ``ItemFrequency`` (Yi et al., "Sampling-Bias-Corrected Neural Modeling for
  Large Corpus Item Recommendations", RecSys 2019, Algorithm 2), plus N / |items| for
  the uniform part (the mixture of Yang et al., "Mixed Negative Sampling", WWW 2020).
  A candidate that is another copy of a row's positive (the same item twice in a
  batch, or drawn by the sampler) is excluded for that row.

Item ids: an identity-encoded table has a real item at row 0; a vocabulary- or
hash-encoded one keeps row 0 for values it does not know, which is never sampled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field, model_validator
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.models.retriever import NegativeSampling, PairScores, RetrievalLoss, RetrieverConfig, Similarity
from recsys.schema import Encoding, Schema

USER_ID, ITEM_ID = "user_id", "item_id"  # the sparse features whose tables hold one row per user and per item


class SampledConfig(RetrieverConfig):
    """RetrieverConfig with the log-Q correction's knobs (softmax only)."""

    logq: bool = Field(True, description="softmax: subtract the log of each candidate's expected count")
    logq_alpha: float = Field(0.01, gt=0, le=1, description="softmax: step of the streaming frequency estimate")

    @model_validator(mode="after")
    def _candidates(self) -> SampledConfig:
        if self.loss is RetrievalLoss.SOFTMAX and self.sampling is not NegativeSampling.IN_BATCH:
            raise ValueError("loss 'softmax' takes the batch's positives as candidates (sampling: in_batch), plus "
                             "`negatives` uniformly sampled items shared by the batch")
        if self.loss is not RetrievalLoss.SOFTMAX and self.sampling is NegativeSampling.UNIFORM \
                and self.negatives < 1:
            raise ValueError(f"loss '{self.loss.value}' with sampling 'uniform' needs negatives >= 1")
        return self


def first_item_row(schema: Schema) -> int:
    """0 for an identity-encoded item table; 1 for vocab/hash ones, whose row 0 is the unknown value."""
    return 0 if schema.feature_table(ITEM_ID).encoding is Encoding.IDENTITY else 1


def id_features(keys: list[str], feature: str, ids: torch.Tensor) -> KeyedJaggedTensor:
    """A KeyedJaggedTensor over ``keys`` with one id per row for ``feature`` and empty bags for the others."""
    rows = ids.numel()
    lengths = torch.zeros(len(keys), rows, dtype=torch.int32, device=ids.device)
    lengths[keys.index(feature)] = 1
    return KeyedJaggedTensor(keys=keys, values=ids.reshape(-1).to(torch.int64), lengths=lengths.flatten(),
                             stride=rows)


def rowwise(similarity: Similarity, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(B, d) users × (B, K, d) items → (B, K) similarities, row by row."""
    if similarity is Similarity.DOT:
        return torch.einsum("bd,bkd->bk", users, items)
    return -(users.unsqueeze(1) - items).square().sum(-1)


class ItemFrequency(nn.Module):
    """Yi et al. 2019's streaming estimate of each item's in-batch frequency (Algorithm 2, one row per item id
    rather than a hashed array): ``gap`` tracks the steps between an item's appearances by exponential averaging,
    and 1 / gap estimates the probability that a batch holds it. Training statistics, not model weights: the
    buffers are not saved (a resumed run re-estimates them within a few hundred steps)."""

    def __init__(self, items: int, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("last", torch.full((items,), -1, dtype=torch.int64), persistent=False)
        self.register_buffer("gap", torch.zeros(items), persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64), persistent=False)

    @torch.no_grad()
    def update(self, ids: torch.Tensor, usable: int) -> None:
        """Record a batch's positive item ids; an item seen first starts from the uniform prior usable / |batch|."""
        self.step += 1
        unique = ids.unique()
        last = self.last[unique]
        prior = torch.full_like(self.gap[unique], usable / max(1, unique.numel()))
        seen = last >= 0
        gap = torch.where(seen, (1 - self.alpha) * self.gap[unique] + self.alpha * (self.step - last).float(), prior)
        self.gap[unique] = gap
        self.last[unique] = self.step

    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) estimated probability that a batch holds each id (0 for ids never seen)."""
        gap = self.gap[ids]
        return torch.where(gap > 0, 1.0 / gap.clamp(min=1.0), torch.zeros_like(gap))


class Candidates(nn.Module):
    """Builds a training batch's ``PairScores`` from its users, positives and the config's negatives.

    ``embed_items(ids)`` gives the (N, d) vectors of item ids, looked up through the model's own (sharded)
    embedding module; ``score`` is the retriever's ``score`` (U, d) × (I, d) → (U, I).
    """

    def __init__(self, schema: Schema, config: SampledConfig, similarity: Similarity) -> None:
        super().__init__()
        table = schema.feature_table(ITEM_ID)
        assert table.cardinality is not None
        self.config, self.similarity = config, similarity
        self.low, self.high = first_item_row(schema), table.cardinality
        self.frequency = ItemFrequency(table.cardinality, config.logq_alpha) \
            if config.loss is RetrievalLoss.SOFTMAX and config.logq else None

    @property
    def usable(self) -> int:
        """Item rows that can be sampled."""
        return self.high - self.low

    def sample(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.randint(self.low, self.high, shape, device=device)

    def forward(self, users: torch.Tensor, positives: torch.Tensor, ids: torch.Tensor,
                embed_items: Callable[[torch.Tensor], torch.Tensor],
                score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                penalty: torch.Tensor | None = None) -> PairScores:
        """users, positives: (B, d); ids: (B,) the positives' item ids."""
        config, rows = self.config, users.shape[0]
        common = {"loss": config.loss, "margin": config.margin, "temperature": config.temperature, "penalty": penalty}
        if config.loss is RetrievalLoss.SOFTMAX:
            extra = self.sample((config.negatives,), users.device)  # shared by the batch
            candidate_ids = torch.cat([ids, extra])  # (B + N,)
            items = torch.cat([positives, embed_items(extra)]) if config.negatives else positives  # (B + N, d)
            target = torch.arange(rows, device=users.device)
            columns = torch.arange(candidate_ids.numel(), device=users.device)
            exclude = (candidate_ids.unsqueeze(0) == ids.unsqueeze(1)) & (columns.unsqueeze(0) != target.unsqueeze(1))
            log_q = None
            if self.frequency is not None:
                if self.training:
                    self.frequency.update(ids, self.usable)
                expected = self.frequency.probability(candidate_ids) + config.negatives / self.usable
                log_q = expected.clamp(min=1e-12).log()  # (B + N,)
            return PairScores(score(users, items), target, exclude=exclude, log_q=log_q, **common)
        if config.sampling is NegativeSampling.IN_BATCH:
            same = ids.unsqueeze(0) == ids.unsqueeze(1)  # (B, B)
            exclude = same & ~torch.eye(rows, dtype=torch.bool, device=users.device)
            return PairScores(score(users, positives), torch.arange(rows, device=users.device), exclude=exclude,
                              **common)
        negative_ids = self.sample((rows, config.negatives), users.device)  # (B, N)
        negatives = embed_items(negative_ids.flatten()).view(rows, config.negatives, -1)  # (B, N, d)
        items = torch.cat([positives.unsqueeze(1), negatives], dim=1)  # (B, 1 + N, d)
        exclude = torch.cat([torch.zeros(rows, 1, dtype=torch.bool, device=users.device),
                             negative_ids == ids.unsqueeze(1)], dim=1)
        return PairScores(rowwise(self.similarity, users, items), torch.zeros(rows, dtype=torch.int64,
                                                                                device=users.device),
                          exclude=exclude, **common)
