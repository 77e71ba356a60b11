"""OptFS on planted data: gates of pure-noise fields close, informative ones stay open, with any ranking model."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.errors import RecsysError
from recsys.features import feature_method
from recsys.features.base import FeatureData
from recsys.features.data import load_feature_data
from tests.features.planted import INFORMATIVE, NOISE, planted_ctr

FAST = {"steps": 100}  # ~1.3 epochs of the 80k train rows


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> FeatureData:
    return load_feature_data(planted_ctr(tmp_path_factory.mktemp("planted") / "ctr", rows=100_000), sample=50_000)


@pytest.mark.parametrize("model", ["dlrm", "autoint", "dcnv2"])
def test_noise_gates_close_and_informative_stay_open(planted: FeatureData, model: str) -> None:
    ranking = feature_method("optfs", {**FAST, "model": model}).timed_rank(planted)
    scores, open_share = ranking.scores, ranking.details["open_share"]
    assert set(scores) == set(planted.fields)
    assert max(scores[f] for f in NOISE) < min(scores[f] for f in INFORMATIVE), scores
    assert ranking.suggested is not None and not set(NOISE) & set(ranking.suggested), ranking.suggested
    assert {"good_a", "good_b", "good_d"} <= set(ranking.suggested)
    assert max(open_share[f] for f in NOISE) < 0.2
    curve = ranking.details["sparsity_curve"]  # (step, β, sparsity): all open at β = 1, mostly closed at the end
    assert curve[0][1] == 1.0 and curve[0][2] == 0.0 and curve[-1][1] == pytest.approx(200.0)
    assert curve[-1][2] > 0.3 and ranking.details["gate_sparsity"] == curve[-1][2]
    assert ranking.details["steps"] == 100 and ranking.details["loss_last"] < ranking.details["loss_first"]


def test_same_seed_same_gates_other_seed_other_gates(planted: FeatureData) -> None:
    first = feature_method("optfs", {"steps": 30}).rank(planted)
    again = feature_method("optfs", {"steps": 30}).rank(planted)
    other = feature_method("optfs", {"steps": 30, "seed": 11}).rank(planted)
    assert first.scores == again.scores and first.details == again.details
    assert first.scores != other.scores


def test_temperature_schedule_drives_the_sparsity(planted: FeatureData) -> None:
    """Without the L1 push nothing closes; with it, sparsity grows along the schedule."""
    free = feature_method("optfs", {"steps": 30, "l1": 0.0}).rank(planted)
    pushed = feature_method("optfs", {"steps": 30}).rank(planted)
    assert pushed.details["gate_sparsity"] > free.details["gate_sparsity"] + 0.2
    sparsity = [s for _, _, s in pushed.details["sparsity_curve"]]
    assert sparsity[-1] > sparsity[0] and max(sparsity[:3]) < sparsity[-1]


def test_bad_options_are_one_line_errors(planted: FeatureData) -> None:
    with pytest.raises(RecsysError, match="--model: unknown model 'nope'"):
        feature_method("optfs", {"model": "nope", "steps": 2}).rank(planted)
    with pytest.raises(RecsysError, match="--method optfs options: temperature"):
        feature_method("optfs", {"temperature": 3})
    with pytest.raises(RecsysError, match=r"model \(dlrm\): top_mlp"):
        feature_method("optfs", {"model_options": {"top_mlp": [4, 2]}, "steps": 2}).rank(planted)
    with pytest.raises(RecsysError, match="embedding"):
        feature_method("optfs", {"embedding": {"scheme": "fancy"}, "steps": 2}).rank(planted)
    for bad in ({"steps": 1}, {"final_temperature": 0.5}, {"min_open": 2}):
        with pytest.raises(RecsysError) as caught:
            feature_method("optfs", bad)
        assert "\n" not in str(caught.value)


def test_a_masked_schema_is_ranked_whole(planted: FeatureData, tmp_path: Path) -> None:
    """A data set whose schema already holds an interaction mask trains an unmasked model (and any model)."""
    masked = FeatureData(**{**planted.__dict__, "schema": planted.schema.model_copy(
        update={"interactions": [("good_a", "good_b")]}, deep=True)})
    ranking = feature_method("optfs", {"steps": 5, "model": "dcnv2"}).rank(masked)
    assert set(ranking.scores) == set(planted.fields)
