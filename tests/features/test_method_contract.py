"""The contract every registered feature method keeps, run over the registry: what makes "one new file" safe.

On planted data (tests/features/conftest.py) a method scores every candidate field with a finite number,
ranks the informative fields above the pure-noise ones far better than chance, reports its run time, is
reproducible for a seed, refuses unknown options in one line, and its ranking makes a pruned schema that
still describes the data.

The id keys (user_id, item_id, item_category) are left out of the candidates (``--fields``): every user
or item attribute is a function of its id, so a method that judges a field given the others (drcfs, macfe)
rightly finds the attributes worthless next to the ids, which says nothing about telling signal from noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recsys.errors import RecsysError
from recsys.features import FEATURE_METHODS, feature_method, method_names
from recsys.features.base import FeatureData, FeatureGenerator, Ranking
from recsys.features.data import candidate_fields, load_feature_data
from recsys.features.select import check_subset, choose_fields, pruned_schema
from recsys.schema import Schema
from tests.features.conftest import planted_truth

METHODS = method_names()
SAMPLE = None  # all 48k train rows
_cache: dict[str, tuple[FeatureData, Ranking]] = {}


def _load(planted: Path) -> FeatureData:
    keys = set(planted_truth(planted)["keys"])
    fields, _, _ = candidate_fields(Schema.load(planted))
    return load_feature_data(planted, sample=SAMPLE, seed=0, only=[f for f in fields if f not in keys])


def _ranked(name: str, planted: Path) -> tuple[FeatureData, Ranking]:
    if name not in _cache:
        data = _load(planted)
        method = feature_method(name, FEATURE_METHODS[name].quick)
        _cache[name] = data, method.timed_rank(data)
    return _cache[name]


def test_the_issue_s_methods_are_registered() -> None:
    assert {"outrank", "openfe", "disco", "inffs", "drcfs", "macfe", "optfs", "optfeature"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_every_field_gets_a_finite_score_and_the_time_is_reported(name: str, planted: Path) -> None:
    data, ranking = _ranked(name, planted)
    assert set(ranking.scores) == set(data.fields)
    assert all(math.isfinite(v) for v in ranking.scores.values())
    assert ranking.seconds > 0
    assert ranking.method == name
    assert FEATURE_METHODS[name].paper and FEATURE_METHODS[name].__doc__
    if ranking.suggested is not None:
        assert ranking.suggested and set(ranking.suggested) <= set(data.fields)


@pytest.mark.parametrize("name", METHODS)
def test_informative_fields_rank_above_noise(name: str, planted: Path) -> None:
    """The scores separate informative fields from pure noise (AUC over the two groups; chance is 0.5)."""
    data, ranking = _ranked(name, planted)
    truth = planted_truth(planted)
    informative = [f for f in truth["informative"] if f not in truth["cross"]]
    noise = truth["noise"]
    scores = [ranking.scores[f] for f in informative + noise]
    auc = roc_auc_score([1] * len(informative) + [0] * len(noise), scores)
    assert auc >= 0.7, f"{name}: informative-vs-noise AUC {auc:.3f}"


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_ranking(name: str, planted: Path) -> None:
    data, ranking = _ranked(name, planted)
    again = feature_method(name, FEATURE_METHODS[name].quick).timed_rank(_load(planted))
    assert again.order() == ranking.order()
    assert np.allclose([again.scores[f] for f in data.fields], [ranking.scores[f] for f in data.fields])


@pytest.mark.parametrize("name", METHODS)
def test_unknown_option_is_a_one_line_error(name: str) -> None:
    with pytest.raises(RecsysError) as error:
        feature_method(name, {"no_such_setting": 1})
    assert "no_such_setting" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", METHODS)
def test_its_selection_is_a_pruned_schema_of_the_data(name: str, planted: Path) -> None:
    data, ranking = _ranked(name, planted)
    for keep in (None, 10):
        kept = choose_fields(data, ranking, keep, None)
        schema = pruned_schema(data, kept, ranking.interactions)
        check_subset(data.schema, schema, "selected")
        names = {f.name for f in [*schema.dense, *schema.sparse]}
        assert set(kept) <= names and len(names) < len(data.fields)
        assert {s.name for s in schema.sequences} == {s.name for s in data.schema.sequences}
        if keep is not None:
            assert len(kept) == keep and kept == ranking.order()[:keep]


@pytest.mark.parametrize("name", [n for n in METHODS if issubclass(FEATURE_METHODS[n], FeatureGenerator)])
def test_generators_propose_recipes_over_existing_fields(name: str, planted: Path) -> None:
    data = _load(planted)
    proposals = feature_method(name, FEATURE_METHODS[name].quick).generate(data)
    assert proposals
    for proposal in proposals:
        assert set(proposal.recipe.inputs) <= set(data.fields)
        assert proposal.name not in data.schema.columns
