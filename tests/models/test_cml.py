"""CML: vectors stay in the unit ball, scores are minus squared distances, the covariance regulariser is the
paper's, and content vectors pull items toward an MLP of their features."""

from __future__ import annotations

import torch

from recsys.config import EmbeddingConfig
from recsys.models import build_model
from recsys.models.cml import covariance_penalty
from tests.models.implicit_schemas import implicit_schema, interactions


def _model(**config: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cml", implicit_schema(), {"negatives": 3} | config, EmbeddingConfig())


def test_vectors_stay_in_the_unit_ball_and_scores_are_minus_squared_distances() -> None:
    model = _model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1000)  # table rows far outside the ball
    batch = interactions([0, 1, 2], [3, 4, 5])
    users, items = model.user_vectors(batch), model.item_vectors(batch)
    assert float(users.norm(dim=1).max()) <= 1 + 1e-6 and float(items.norm(dim=1).max()) <= 1 + 1e-6
    torch.testing.assert_close(model.score(users, items), -torch.cdist(users, items).square())
    out = model(batch)
    torch.testing.assert_close(out.scores[:, 0], -(users - items).square().sum(1))


def test_covariance_penalty_is_the_off_diagonal_covariance() -> None:
    vectors = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0], [-2.0, -2.0]])  # perfectly correlated dims
    # mean 0, every covariance entry (1 + 1 + 4 + 4) / 4 = 2.5: two off-diagonal entries, over 4 vectors
    assert float(covariance_penalty(vectors)) == (2 * 2.5 ** 2) / 4
    decorrelated = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    assert float(covariance_penalty(decorrelated)) == 0.0
    model = _model(covariance=3.0)
    batch = interactions([0, 1, 2], [3, 4, 5])
    out = model(batch)
    both = torch.cat([model.user_vectors(batch), model.item_vectors(batch)])
    torch.testing.assert_close(out.penalty, 3.0 * covariance_penalty(both))


def test_content_pulls_item_vectors_toward_their_features() -> None:
    batch = interactions([0, 1, 2], [3, 4, 5])
    plain, content = _model(covariance=0.0), _model(covariance=0.0, content=True, content_weight=2.0)
    assert "item_genre" in content.embeddings.feature_names and "item_genre" not in plain.embeddings.feature_names
    out = content(batch)
    pooled = content.embeddings(batch.sparse).pooled.to_dict()
    pulled = content.content(pooled, batch.dense)
    expected = 2.0 * (pulled - content.item_vectors(batch)).square().sum(1).mean()
    torch.testing.assert_close(out.penalty, expected)
    out.penalty.backward()
    assert all(p.grad is not None for p in content.content.parameters())
