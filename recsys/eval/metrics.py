"""Full-ranking metrics of retrieval: Recall@K, NDCG@K, HR@K and MRR, vectorised over users.

A user's ranking is the whole catalogue ordered by score, best first, with the
items it must not be shown (its training interactions) removed. Ties are broken by
catalogue position (the lower row first), so a ranking, and every metric, is a
function of the scores alone. ``rank`` turns a block of scores into what the metric
functions read; each metric function gives one value per user, and a data set's
metric is the mean over its users.

Conventions (those of LightGCN's and the BARS matching benchmarks' evaluation, so
that numbers compare with their Gowalla leaderboard):

- Recall@K = |relevant ∩ top K| / |relevant|: the denominator is the number of
  relevant items, not min(|relevant|, K), so a user with more than K relevant items
  cannot reach 1.
- NDCG@K = DCG@K / IDCG@K with binary gains, DCG@K = Σ_{r < K, item at r relevant}
  1 / log2(r + 2) (r the 0-based rank), and IDCG@K the DCG of an ideal ranking, whose
  min(|relevant|, K) first items are relevant.
- HR@K = 1 if any relevant item is in the top K, else 0.
- MRR = 1 / (1-based rank of the first relevant item in the whole ranking): not cut
  at any K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Ranked:
    """What the metrics read of a block of U users' rankings.

    hits:     (U, D) bool: the item at 0-based rank r is relevant, for r < D (the depth ranked).
    relevant: (U,) int64: each user's number of relevant items (not excluded).
    first:    (U,) int64: the 1-based rank of each user's first relevant item in its whole ranking
              (0 for a user without relevant items).
    """

    hits: torch.Tensor
    relevant: torch.Tensor
    first: torch.Tensor


def recall_at_k(hits: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    """(U, D) bool hits, (U,) relevant counts → (U,) float64 Recall@k (|relevant| in the denominator)."""
    _check_depth(hits, k)
    found = hits[:, :k].sum(1, dtype=torch.float64)  # (U,)
    return found / relevant.to(torch.float64).clamp(min=1)


def ndcg_at_k(hits: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    """(U, D) bool hits, (U,) relevant counts → (U,) float64 NDCG@k (ideal DCG over min(|relevant|, k) items)."""
    _check_depth(hits, k)
    discounts = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64, device=hits.device) + 2.0)  # (k,)
    dcg = (hits[:, :k].to(torch.float64) * discounts).sum(1)  # (U,)
    ideal = torch.cat([discounts.new_zeros(1), discounts.cumsum(0)])  # (k + 1,): IDCG of n relevant items
    idcg = ideal[relevant.clamp(min=0, max=k)]  # (U,)
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-300), 0.0)


def hit_rate_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    """(U, D) bool hits → (U,) float64 HR@k: 1 when any of the top k is relevant."""
    _check_depth(hits, k)
    return hits[:, :k].any(1).to(torch.float64)


def reciprocal_rank(first: torch.Tensor) -> torch.Tensor:
    """(U,) 1-based rank of the first relevant item (0: none) → (U,) float64 reciprocal rank (0 when none)."""
    first = first.to(torch.float64)
    return torch.where(first > 0, 1.0 / first.clamp(min=1), 0.0)


def _check_depth(hits: torch.Tensor, k: int) -> None:
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"cutoff {k} is outside the ranked depth 1..{hits.shape[1]}")


def rank(scores: torch.Tensor, relevant: torch.Tensor, excluded: torch.Tensor | None, depth: int) -> Ranked:
    """Rank every catalogue item for each user and report the hits in the top ``depth`` and the first relevant rank.

    scores:   (U, N) float, higher is better; must be finite. Overwritten where excluded (to -inf).
    relevant: (U, N) bool, the user's relevant items; an excluded item is never relevant.
    excluded: (U, N) bool or None: items removed from the user's ranking (they take no rank).
    depth:    D, the largest cutoff; rankings shorter than D (few items left) have no hit past their end.

    Order: score descending, then catalogue position ascending. Costs a top-(D + 1) selection and a few
    compare-and-count passes over (U, N); rows with ties at the D-th score, or with the best relevant item,
    get an exact look of their own.
    """
    users, items = scores.shape
    if excluded is not None:  # at -inf they rank after every kept item, and are never relevant, so never hits
        scores.masked_fill_(excluded, float("-inf"))
        relevant = relevant & ~excluded
    rows, cols = relevant.nonzero(as_tuple=True)  # (R,), (R,): the relevant items, row-major
    count = torch.bincount(rows, minlength=users)  # (U,)
    first = _first_relevant_rank(scores, rows, cols, count)
    take = min(depth, items)
    top = _top(scores, take)  # (U, take) catalogue positions in ranking order
    hits = relevant.gather(1, top)  # (U, take)
    if take < depth:
        hits = torch.cat([hits, hits.new_zeros(users, depth - take)], dim=1)
    return Ranked(hits=hits, relevant=count, first=first)


def _count(scores: torch.Tensor, threshold: torch.Tensor, equal: bool = False) -> torch.Tensor:
    """(U,) int64: per row, the scores above (or equal to) the row's (U, 1) threshold. numpy on the CPU: its
    count is several times faster than torch's sum of a bool tensor."""
    if scores.device.type == "cpu":
        values, cut = scores.numpy(), threshold.numpy()
        counts = np.count_nonzero(values == cut if equal else values > cut, axis=1)
        return torch.from_numpy(counts.astype(np.int64))
    return ((scores == threshold) if equal else (scores > threshold)).sum(1)


def _first_relevant_rank(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                         count: torch.Tensor) -> torch.Tensor:
    """(U,) 1-based rank of the best-ranked relevant item (0 when none): the items scored above it, plus those
    tied with it at lower catalogue positions, plus one."""
    users, items = scores.shape
    values = scores[rows, cols]  # (R,)
    best = scores.new_full((users,), float("-inf")).scatter_reduce_(0, rows, values, "amax")  # (U,)
    at_best = values == best[rows]
    position = torch.full((users,), items, dtype=torch.int64, device=scores.device).scatter_reduce_(
        0, rows[at_best], cols[at_best], "amin")  # (U,) the lowest position among relevant items at best
    above = _count(scores, best[:, None])
    tied = _count(scores, best[:, None], equal=True)  # the best item itself, and any item tied with it
    tied_before = torch.zeros_like(above)
    shared = ((tied > 1) & (count > 0)).nonzero().squeeze(1)
    if len(shared):  # only rows with a tie at the best relevant score look at positions
        block = scores[shared] == best[shared, None]  # (S, N)
        block &= torch.arange(items, device=scores.device) < position[shared, None]
        tied_before[shared] = block.sum(1)
    return torch.where(count > 0, above + tied_before + 1, 0)


def _top(scores: torch.Tensor, depth: int) -> torch.Tensor:
    """(U, depth) catalogue positions of each user's first ``depth`` items in ranking order (score descending,
    position ascending); ``torch.topk`` alone leaves the order of tied scores unspecified."""
    items = scores.shape[1]
    probe = min(depth + 1, items)
    values, positions = scores.topk(probe, dim=1, sorted=True)  # (U, probe)
    cut = values[:, depth - 1:depth]  # (U, 1): the depth-th score
    spill = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    if probe > depth:  # the (D + 1)-th score ties the D-th: which tied items are in the top D is up to position
        spill = values[:, depth] == cut[:, 0]
        values, positions = values[:, :depth], positions[:, :depth]
    if spill.any():
        rows = spill.nonzero().squeeze(1)
        block, block_cut = scores[rows], cut[rows]  # (S, N), (S, 1)
        above = block > block_cut
        need = depth - above.sum(1, keepdim=True)  # (S, 1) tied items to take, lowest positions first
        tied = block == block_cut
        chosen = above | (tied & (tied.cumsum(1) <= need))  # (S, N): exactly depth per row
        positions = positions.clone()
        positions[rows] = chosen.nonzero()[:, 1].view(len(rows), depth)
        values = scores.gather(1, positions)
    # Order the D chosen items by (score descending, position ascending): sort by position, then stably by score.
    by_position = positions.sort(dim=1).indices
    positions, values = positions.gather(1, by_position), values.gather(1, by_position)
    by_score = values.sort(dim=1, descending=True, stable=True).indices
    return positions.gather(1, by_score)
