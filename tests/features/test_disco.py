"""DisCo on the planted frame, and its O(n log n) distance correlation against the O(n²) definition."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import RecsysError
from recsys.features import feature_method
from recsys.features.disco import LabelShuffles, distance_correlation, target_encode
from tests.features.planted_frame import (HIGH_CARDINALITY_NOISE, INFORMATIVE, NOISE, REDUNDANT, feature_data,
                                    planted_data, precision_at)

RELEVANT = set(INFORMATIVE) | set(REDUNDANT)


def brute_force_dcor(x: np.ndarray, y: np.ndarray) -> float:
    """Székely et al.'s definition: double-centred distance matrices, V-statistics."""
    a, b = np.abs(x[:, None] - x[None]), np.abs(y[:, None] - y[None])
    a = a - a.mean(0) - a.mean(1)[:, None] + a.mean()
    b = b - b.mean(0) - b.mean(1)[:, None] + b.mean()
    return float(np.sqrt(max((a * b).mean(), 0.0) / np.sqrt((a * a).mean() * (b * b).mean())))


@pytest.fixture(scope="module")
def data():
    return planted_data(rows=30_000, seed=0)


@pytest.fixture(scope="module")
def ranking(data):
    return feature_method("disco").timed_rank(data)


@pytest.mark.parametrize("rows", [2, 7, 400])
def test_fast_dcor_equals_the_definition_with_ties_and_shuffles(rows):
    rng = np.random.default_rng(rows)
    x = rng.normal(size=rows).round(1) * 5 + 3  # ties, shift, scale
    y = (rng.random(rows) < 1 / (1 + np.exp(-x + 3))).astype(np.float64)
    y[0], y[-1] = 0.0, 1.0
    shuffles = LabelShuffles(y, 4, rng)
    dcor, null = distance_correlation(x, y, shuffles)
    assert dcor == pytest.approx(brute_force_dcor(x, y), rel=1e-9, abs=1e-12)
    in_sorted_order = x[np.argsort(x, kind="stable")]  # a shuffle is a placement in the field's sorted order
    expected = [brute_force_dcor(in_sorted_order, s) for s in shuffles.matrix[:4]]
    assert null == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_target_encoding_uses_only_the_fit_rows():
    fit_ids, fit_y = np.array([1, 1, 2, 2, 2]), np.array([1.0, 1.0, 0.0, 0.0, 1.0])
    codes = target_encode(fit_ids, fit_y, np.array([1, 2, 3]), smoothing=1.0)
    prior = 0.6
    assert codes.tolist() == pytest.approx([(2 + prior) / 3, (1 + prior) / 4, prior])


def test_top_k_recovers_the_planted_fields(ranking, data):
    # Measured 11/11 on seeds 0..4 (relevant fields at z >= 23, noise at z <= 3.7); one miss allowed.
    assert set(ranking.scores) == set(data.fields)
    assert precision_at(ranking, RELEVANT, len(RELEVANT)) >= 10 / 11


def test_high_cardinality_noise_does_not_beat_low_cardinality_signal(ranking):
    for low in ("s10", "s100"):
        assert all(ranking.scores[low] > ranking.scores[noise] for noise in HIGH_CARDINALITY_NOISE)


def test_suggested_beats_the_permutation_null(ranking):
    fields = ranking.details["fields"]
    assert ranking.suggested is not None and not set(ranking.suggested) & set(NOISE)
    assert len(set(ranking.suggested) & set(INFORMATIVE)) >= 7
    assert all(fields[f]["p"] == pytest.approx(1 / 100) for f in ranking.suggested)


def test_deterministic_for_a_seed(data, ranking):
    again = feature_method("disco").timed_rank(data)
    assert again.scores == ranking.scores and again.suggested == ranking.suggested


def test_bad_options_and_labels_are_one_line_errors():
    for options in ({"max_rows": 10}, {"permutations": 2}, {"smoothing": -1}, {"typo": 1}):
        with pytest.raises(RecsysError) as error:
            feature_method("disco", options)
        assert "disco" in str(error.value) and "\n" not in str(error.value)
    ids = np.arange(10, dtype=np.int64)
    with pytest.raises(RecsysError, match="label 'label' is constant"):
        feature_method("disco").timed_rank(feature_data({"a": ids}, np.ones(10, dtype=np.float32)))
    with pytest.raises(RecsysError, match="label 'label' must be 0/1"):
        feature_method("disco").timed_rank(feature_data({"a": ids}, np.linspace(0, 1, 10, dtype=np.float32)))


def test_pure_noise_suggests_nothing_rather_than_an_empty_list():
    rng = np.random.default_rng(5)
    columns = {"x": rng.normal(size=4_000).astype(np.float32), "ids": rng.integers(1, 500, size=4_000)}
    noise = feature_data(columns, (rng.random(4_000) < 0.3).astype(np.float32))
    for name in ("disco", "outrank"):
        ranking = feature_method(name).timed_rank(noise)
        assert ranking.suggested is None and set(ranking.scores) == {"x", "ids"}
