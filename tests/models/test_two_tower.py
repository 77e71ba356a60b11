"""Two-tower: each tower reads its own entity's features; the log-Q correction changes the softmax as Yi et al.'s
formula says; copies of a row's positive among the batch's items are masked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys.config import EmbeddingConfig
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.tasks.implicit import pair_loss
from tests.models.implicit_schemas import implicit_schema, interactions


def _model(**config: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("two_tower", implicit_schema(), {"tower": [8, 4]} | config, EmbeddingConfig())


def test_towers_read_their_own_entity_only() -> None:
    model = _model()
    one, other = interactions([0, 1], [2, 3]), interactions([0, 1], [7, 8])
    torch.testing.assert_close(model.user_vectors(one), model.user_vectors(other))  # items differ, users not
    assert not torch.allclose(model.item_vectors(one), model.item_vectors(other))
    older = interactions([0, 1], [2, 3])
    older.dense = older.dense + 1  # user_age is a user feature
    assert not torch.allclose(model.user_vectors(one), model.user_vectors(older))
    torch.testing.assert_close(model.item_vectors(one), model.item_vectors(older))
    assert torch.allclose(model.user_vectors(one).norm(dim=1), torch.ones(2))  # normalised outputs


def test_log_q_correction_is_subtracted_from_the_logits_before_the_temperature() -> None:
    model = _model(temperature=0.5).train()
    for _ in range(20):  # item 2 in every batch, the others rarely: item 2 gets the largest q
        model(interactions([0, 1, 2, 3], [2, 2, 4 + _ % 6, 5]))
    out = model(interactions([0, 1, 2, 3], [2, 2, 6, 9]))
    frequency = model.candidates.frequency
    expected_q = frequency.probability(torch.tensor([2, 2, 6, 9]))
    torch.testing.assert_close(out.log_q, expected_q.clamp(min=1e-12).log())
    assert out.log_q[0] == out.log_q.max()
    logits = ((out.scores - out.log_q) / 0.5).masked_fill(out.exclude, float("-inf"))
    torch.testing.assert_close(pair_loss(out), F.cross_entropy(logits, out.target))
    assert out.exclude[0, 1] and out.exclude[1, 0] and not out.exclude[0, 0]  # the other copy of item 2
    uncorrected = ((out.scores / 0.5).masked_fill(out.exclude, float("-inf")))
    assert not torch.isclose(pair_loss(out), F.cross_entropy(uncorrected, out.target))


def test_sampled_negatives_need_an_id_only_item_tower() -> None:
    with pytest.raises(RecsysError, match="model.negatives"):
        _model(negatives=4)
