"""The retrievers' candidates (recsys.models.candidates): sampled softmax's candidate set and its log-Q correction,
uniform negatives that never draw a vocabulary's unknown row, the streaming item-frequency estimate."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.models.candidates import Candidates, ItemFrequency, SampledConfig
from recsys.models.retriever import Similarity
from tests.models.implicit_schemas import ITEMS, implicit_schema


def _dot(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    return users @ items.T


def test_sampled_softmax_candidates_are_the_batch_positives_plus_shared_uniform_items() -> None:
    config = SampledConfig(loss="softmax", sampling="in_batch", negatives=7)
    candidates = Candidates(implicit_schema("vocab"), config, Similarity.DOT).train()
    ids = torch.tensor([3, 5, 3, 9])  # item 3 twice
    looked_up: list[torch.Tensor] = []

    def embed(sampled: torch.Tensor) -> torch.Tensor:
        looked_up.append(sampled)
        return torch.eye(ITEMS)[sampled]

    torch.manual_seed(0)
    out = candidates(torch.randn(4, ITEMS), torch.eye(ITEMS)[ids], ids, embed, _dot)
    sampled = looked_up[0]
    assert out.scores.shape == (4, 4 + 7) and sampled.shape == (7,)
    assert bool((sampled >= 1).all()) and bool((sampled < ITEMS).all())  # vocab: row 0 (unknown) never drawn
    assert out.target.tolist() == [0, 1, 2, 3]  # each row's own positive column
    candidate_ids = torch.cat([ids, sampled])
    for row in range(4):  # every other copy of a row's positive is excluded, nothing else
        expected = (candidate_ids == ids[row]) & (torch.arange(11) != row)
        assert out.exclude[row].tolist() == expected.tolist()
    assert out.exclude[0, 2] and out.exclude[2, 0]
    # log q = log(expected count of the item among the candidates): its in-batch frequency plus N / |items|
    frequency = candidates.frequency
    assert frequency is not None
    expected = (frequency.probability(candidate_ids) + 7 / (ITEMS - 1)).log()
    torch.testing.assert_close(out.log_q, expected)


def test_identity_tables_sample_row_zero_and_per_row_negatives_are_scored_row_by_row() -> None:
    config = SampledConfig(loss="bpr", sampling="uniform", negatives=50)
    candidates = Candidates(implicit_schema("identity"), config, Similarity.L2)
    ids = torch.tensor([1, 2])
    users, positives = torch.randn(2, 3), torch.randn(2, 3)
    table = torch.randn(ITEMS, 3)
    drawn: list[torch.Tensor] = []

    def embed(sampled: torch.Tensor) -> torch.Tensor:
        drawn.append(sampled)
        return table[sampled]

    torch.manual_seed(1)
    out = candidates(users, positives, ids, embed, _dot)
    negatives = drawn[0].view(2, 50)
    assert int(negatives.min()) == 0  # an identity table's row 0 is a real item
    assert out.scores.shape == (2, 51) and out.target.tolist() == [0, 0]
    expected = -(users.unsqueeze(1) - torch.cat([positives.unsqueeze(1), table[negatives]], 1)).square().sum(-1)
    torch.testing.assert_close(out.scores, expected)
    assert out.exclude[:, 1:].tolist() == (negatives == ids.unsqueeze(1)).tolist()


def test_item_frequency_estimates_the_probability_that_a_batch_holds_an_item() -> None:
    frequency = ItemFrequency(4, alpha=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3000):  # item 0 in every batch, item 1 in half of them, item 2 in a tenth, item 3 never
        present = [0] + [1] * int(torch.rand(1, generator=generator) < 0.5) \
            + [2] * int(torch.rand(1, generator=generator) < 0.1)
        frequency.update(torch.tensor(present), usable=4)
    estimate = frequency.probability(torch.arange(4))
    assert estimate[0] == pytest.approx(1.0, abs=0.01)
    assert estimate[1] == pytest.approx(0.5, abs=0.1)
    assert estimate[2] == pytest.approx(0.1, abs=0.04)
    assert estimate[3] == 0.0


def test_softmax_needs_in_batch_candidates_and_log_q_can_be_turned_off() -> None:
    with pytest.raises(ValueError, match="in_batch"):
        SampledConfig(loss="softmax", sampling="uniform")
    config = SampledConfig(loss="softmax", sampling="in_batch", logq=False)
    out = Candidates(implicit_schema(), config, Similarity.DOT)(
        torch.randn(3, 2), torch.randn(3, 2), torch.tensor([1, 2, 3]), lambda ids: torch.zeros(0, 2), _dot)
    assert out.log_q is None and out.scores.shape == (3, 3)
    assert math.isclose(out.temperature, 1.0)
