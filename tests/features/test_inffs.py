"""Inf-FS on the planted frame: path sums, Fisher relevance, the redundancy penalty and the knee."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import RecsysError
from recsys.features import feature_method
from recsys.features.inffs import fisher_scores, knee, path_sums, spearman
from tests.features.planted_frame import (HIGH_CARDINALITY_NOISE, INFORMATIVE, NOISE, REDUNDANT, feature_data,
                                    planted_data, precision_at)

RELEVANT = set(INFORMATIVE) | set(REDUNDANT)
PAIRED = set(REDUNDANT) | set(REDUNDANT.values())


@pytest.fixture(scope="module")
def data():
    return planted_data(rows=30_000, seed=0)


@pytest.fixture(scope="module")
def ranking(data):
    return feature_method("inffs").timed_rank(data)


def test_path_sums_are_the_decayed_series():
    graph = np.random.default_rng(0).random((5, 5))
    graph = graph + graph.T
    r = 0.5 / np.linalg.eigvalsh(graph).max()
    series = sum(np.linalg.matrix_power(r * graph, length) for length in range(1, 80))
    assert path_sums(graph, 0.5) == pytest.approx(series, rel=1e-10)


def test_fisher_scores_and_spearman_by_hand():
    x = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 1.0], [6.0, 3.0]])
    classes = np.array([0, 0, 1, 1])
    # column 0: class means 1, 5 around 3, variances 1, 1 -> (2·4 + 2·4) / (2·1 + 2·1) = 4
    # column 1: class means 5, 2 around 3.5, variances 0, 1 -> (2·2.25 + 2·2.25) / (2·0 + 2·1) = 4.5
    assert fisher_scores(x, classes) == pytest.approx([4.0, 4.5])
    rho = spearman(np.column_stack([x[:, 0], -x[:, 0] ** 3, np.ones(4)]))
    assert rho == pytest.approx(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]]))


def test_knee_cuts_after_the_drop():
    assert knee(np.array([9.0, 8.5, 8.0, 7.9, 2.0, 1.9, 1.8, 1.8, 1.7])) == 4
    assert knee(np.array([3.0, 3.0])) == 2


def test_top_k_recovers_the_planted_fields(ranking, data):
    # Measured 11/11 on seeds 0..4 with either redundancy (the weakest relevant field, the 50,000-id one, has
    # ~50x the Fisher score of the strongest noise field); one miss allowed.
    assert set(ranking.scores) == set(data.fields)
    assert precision_at(ranking, RELEVANT, len(RELEVANT)) >= 10 / 11
    nmi = feature_method("inffs", {"redundancy": "nmi"}).timed_rank(data)
    assert precision_at(nmi, RELEVANT, len(RELEVANT)) >= 10 / 11


def test_high_cardinality_noise_does_not_beat_low_cardinality_signal(ranking):
    for low in ("s10", "s100"):
        assert all(ranking.scores[low] > ranking.scores[noise] for noise in HIGH_CARDINALITY_NOISE)


def test_suggested_stops_at_the_knee_before_the_noise(ranking):
    assert ranking.suggested is not None and not set(ranking.suggested) & set(NOISE)
    assert len(set(ranking.suggested) & set(INFORMATIVE)) >= 7
    assert ranking.details["knee"] == len(ranking.suggested)


@pytest.mark.parametrize("redundancy", ["spearman", "nmi"])
def test_without_relevance_the_redundant_pairs_rank_last(data, redundancy):
    # alpha = 0 leaves only the (1 - redundancy) edges: a field with a noisy copy has the weakest paths.
    only_redundancy = feature_method("inffs", {"alpha": 0.0, "redundancy": redundancy}).timed_rank(data)
    assert set(only_redundancy.order()[-len(PAIRED):]) == PAIRED


def test_deterministic_for_a_seed(data, ranking):
    again = feature_method("inffs").timed_rank(data)
    assert again.scores == ranking.scores and again.suggested == ranking.suggested


def test_bad_options_and_labels_are_one_line_errors():
    for options in ({"alpha": 1.5}, {"decay": 1.0}, {"redundancy": "pearson"}, {"max_rows": 5}, {"typo": 1}):
        with pytest.raises(RecsysError) as error:
            feature_method("inffs", options)
        assert "inffs" in str(error.value) and "\n" not in str(error.value)
    flat = feature_data({"a": np.arange(10, dtype=np.int64)}, np.ones(10, dtype=np.float32))
    with pytest.raises(RecsysError, match="label 'label' is constant"):
        feature_method("inffs").timed_rank(flat)
