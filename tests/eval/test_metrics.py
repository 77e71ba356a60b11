"""The full-ranking metrics against hand-computed cases, and ``rank`` against a brute-force sort."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.eval.metrics import hit_rate_at_k, ndcg_at_k, rank, recall_at_k, reciprocal_rank

LOG3 = math.log2(3)


def test_recall_divides_by_all_relevant_items() -> None:
    hits = torch.tensor([[True, False, True, False], [False, False, False, False], [False, True, False, False]])
    relevant = torch.tensor([3, 2, 1])
    assert recall_at_k(hits, relevant, 1).tolist() == [1 / 3, 0.0, 0.0]
    assert recall_at_k(hits, relevant, 2).tolist() == pytest.approx([1 / 3, 0.0, 1.0])
    assert recall_at_k(hits, relevant, 4).tolist() == pytest.approx([2 / 3, 0.0, 1.0])
    # |relevant| = 5 > K = 2, both found: 2/5, not 2/min(5, 2) = 1.
    assert recall_at_k(torch.tensor([[True, True]]), torch.tensor([5]), 2).item() == pytest.approx(0.4)


def test_ndcg_ideal_dcg_over_min_relevant_and_k() -> None:
    hits = torch.tensor([[True, False, True, False], [False, False, True, False], [False, True, True, True]])
    relevant = torch.tensor([3, 1, 5])
    # user 0: DCG = 1 + 1/log2(4) = 1.5; IDCG@4 over 3 items = 1 + 1/log2(3) + 1/2.
    # user 1: DCG = 1/2; IDCG = 1.  user 2: DCG@4 = 1/log2(3) + 1/2 + 1/log2(5); IDCG over min(5, 4) = 4 items.
    idcg4 = 1 + 1 / LOG3 + 0.5 + 1 / math.log2(5)
    expected = [1.5 / (1.5 + 1 / LOG3), 0.5, (1 / LOG3 + 0.5 + 1 / math.log2(5)) / idcg4]
    assert ndcg_at_k(hits, relevant, 4).tolist() == pytest.approx(expected)
    # @2: user 0 DCG 1, IDCG 1 + 1/log2 3; user 1 nothing; user 2 DCG 1/log2 3, IDCG over 2 items.
    expected2 = [1 / (1 + 1 / LOG3), 0.0, (1 / LOG3) / (1 + 1 / LOG3)]
    assert ndcg_at_k(hits, relevant, 2).tolist() == pytest.approx(expected2)
    assert ndcg_at_k(torch.tensor([[True]]), torch.tensor([1]), 1).item() == 1.0
    assert ndcg_at_k(torch.tensor([[False]]), torch.tensor([0]), 1).item() == 0.0  # no relevant item: 0, not NaN


def test_hit_rate_and_reciprocal_rank() -> None:
    hits = torch.tensor([[False, True, False], [False, False, False], [True, False, False]])
    assert hit_rate_at_k(hits, 1).tolist() == [0.0, 0.0, 1.0]
    assert hit_rate_at_k(hits, 3).tolist() == [1.0, 0.0, 1.0]
    # The first relevant rank over the whole ranking, not cut: rank 40 still counts 1/40.
    assert reciprocal_rank(torch.tensor([2, 40, 1, 0])).tolist() == [0.5, 1 / 40, 1.0, 0.0]


def test_cutoff_deeper_than_ranked_depth_is_an_error() -> None:
    with pytest.raises(ValueError, match="cutoff 3"):
        recall_at_k(torch.zeros(1, 2, dtype=torch.bool), torch.tensor([1]), 3)


def test_rank_excludes_items_and_breaks_ties_by_position() -> None:
    #                      0    1    2    3    4    5
    scores = torch.tensor([[9.0, 5.0, 7.0, 7.0, 7.0, 1.0]])
    relevant = torch.tensor([[False, True, False, False, True, False]])
    excluded = torch.tensor([[True, False, False, False, False, False]])
    ranked = rank(scores.clone(), relevant, excluded, depth=3)
    # Ranking without item 0: 2, 3, 4 (tied at 7, by position), 1, 5. Item 4 is 3rd, item 1 4th.
    assert ranked.hits.tolist() == [[False, False, True]]
    assert ranked.relevant.tolist() == [2]
    assert ranked.first.tolist() == [3]
    # depth 2 cuts inside the tie: items 2 and 3 are in, item 4 is not.
    ranked = rank(scores.clone(), relevant, excluded, depth=2)
    assert ranked.hits.tolist() == [[False, False]]
    assert ranked.first.tolist() == [3]
    # Not excluded, item 0 takes rank 1 and pushes everything down.
    ranked = rank(scores.clone(), relevant, None, depth=3)
    assert ranked.hits.tolist() == [[False, False, False]] and ranked.first.tolist() == [4]


def test_excluded_relevant_item_never_counts() -> None:
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    relevant = torch.tensor([[True, False, True]])
    excluded = torch.tensor([[True, False, False]])
    ranked = rank(scores.clone(), relevant, excluded, depth=2)
    assert ranked.relevant.tolist() == [1]  # item 0 is excluded, so not relevant
    assert ranked.hits.tolist() == [[False, True]]  # ranking 1, 2
    assert ranked.first.tolist() == [2]
    assert recall_at_k(ranked.hits, ranked.relevant, 2).item() == 1.0


def test_ranking_shorter_than_depth() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    relevant = torch.tensor([[True, False, False]])
    excluded = torch.tensor([[False, True, True]])
    ranked = rank(scores.clone(), relevant, excluded, depth=5)  # one item left, deeper than the catalogue
    assert ranked.hits.tolist() == [[True, False, False, False, False]]
    assert ranked.first.tolist() == [1]


def test_rank_matches_a_stable_sort_with_many_ties() -> None:
    """Integer scores in 0..3 over 40 items: every cut falls inside a tie."""
    generator = torch.Generator().manual_seed(0)
    users, items, depth = 64, 40, 7
    scores = torch.randint(0, 4, (users, items), generator=generator).float()
    relevant = torch.rand(users, items, generator=generator) < 0.2
    excluded = torch.rand(users, items, generator=generator) < 0.3
    ranked = rank(scores.clone(), relevant, excluded, depth)
    for u in range(users):
        order = sorted((i for i in range(items) if not excluded[u, i]), key=lambda i: (-scores[u, i].item(), i))
        mine = [bool(relevant[u, i]) for i in order]
        expected_hits = (mine + [False] * depth)[:depth]
        assert ranked.hits[u].tolist() == expected_hits, u
        assert ranked.relevant[u].item() == sum(mine)
        assert ranked.first[u].item() == (mine.index(True) + 1 if any(mine) else 0)
