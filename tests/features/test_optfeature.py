"""OptFeature on planted data: the planted cross is a kept pair, noise pairs are not, and DLRM takes the mask."""

from __future__ import annotations

import pytest

from recsys.config import EmbeddingConfig
from recsys.data.reader import ParquetReader
from recsys.errors import RecsysError
from recsys.features import feature_method
from recsys.features.base import FeatureData
from recsys.features.data import load_feature_data
from recsys.models import build_model
from tests.features.planted import CROSS, INFORMATIVE, NOISE, planted_ctr


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> FeatureData:
    return load_feature_data(planted_ctr(tmp_path_factory.mktemp("planted") / "ctr", rows=100_000), sample=50_000)


def test_planted_cross_kept_noise_pairs_dropped(planted: FeatureData) -> None:
    ranking = feature_method("optfeature", {"steps": 100}).timed_rank(planted)
    pairs = {frozenset(p) for p in ranking.interactions or []}
    assert frozenset(CROSS) in pairs, ranking.details["pair_mass"]
    assert not any(set(p) & set(NOISE) for p in pairs), pairs
    assert ranking.details["pair_mass"]["cross_x×cross_y"] == 1.0
    assert max(ranking.scores[f] for f in NOISE) < min(ranking.scores[f] for f in INFORMATIVE), ranking.scores
    assert ranking.suggested is not None and set(ranking.suggested) == set(INFORMATIVE)
    assert ranking.details["pairs"] == 21 and ranking.details["kept_pairs"] == len(pairs) < 21


def test_kept_pairs_are_a_mask_dlrm_honours(planted: FeatureData) -> None:
    """The selected schema (kept fields, kept pairs) builds a DLRM whose top MLP reads D + kept pairs."""
    ranking = feature_method("optfeature", {"steps": 100}).rank(planted)
    assert ranking.suggested is not None and ranking.interactions
    schema = planted.schema
    kept = set(ranking.suggested)
    selected = schema.model_copy(update={
        "dense": [f for f in schema.dense if f.name in kept], "sparse": [f for f in schema.sparse if f.name in kept],
        "tables": [t for t in schema.tables if t.name in kept], "interactions": ranking.interactions}, deep=True)
    model = build_model("dlrm", selected, {}, EmbeddingConfig())
    assert model.kept_pairs == len(ranking.interactions)
    batch = next(iter(ParquetReader(planted.data_dir, "valid", 64, schema=selected)))
    assert model(batch).shape == (64,)


def test_same_seed_same_selection(planted: FeatureData) -> None:
    first = feature_method("optfeature", {"steps": 20}).rank(planted)
    again = feature_method("optfeature", {"steps": 20}).rank(planted)
    assert first.interactions == again.interactions and first.scores == again.scores


def test_bad_options_are_one_line_errors(planted: FeatureData) -> None:
    with pytest.raises(RecsysError, match="model_options.interaction must be 'dot'"):
        feature_method("optfeature", {"model_options": {"interaction": "cat"}, "steps": 2}).rank(planted)
    with pytest.raises(RecsysError, match="--method optfeature options: model"):
        feature_method("optfeature", {"model": "autoint"})
    with pytest.raises(RecsysError, match=r"model \(dlrm\): layer sizes must be at least 1"):
        feature_method("optfeature", {"model_options": {"bottom_mlp": [0]}, "steps": 2}).rank(planted)
