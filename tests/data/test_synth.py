"""Synthetic generators: reproducible, entity-consistent, and with an honest Bayes-optimal AUC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from recsys.data.layout import SPLITS
from recsys.data.pipeline import PrepareOptions
from recsys.data.synth import (
    TRUE_PROBABILITY, CtrConfig, ImplicitConfig, synth_ctr, synth_implicit, write_criteo_tsv,
)
from recsys.schema import Entity, Schema, Task


@pytest.fixture(scope="module")
def ctr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ctr"
    synth_ctr(CtrConfig(rows=30_000, seed=7), out, PrepareOptions(seed=7))
    return out


def _all_rows(data_dir: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(data_dir / s) for s in SPLITS])


def test_same_seed_same_data_other_seed_other_data(ctr_dir: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    synth_ctr(CtrConfig(rows=30_000, seed=7), again, PrepareOptions(seed=7))
    synth_ctr(CtrConfig(rows=30_000, seed=8), other, PrepareOptions(seed=8))
    for split in SPLITS:
        assert pl.read_parquet(ctr_dir / split).equals(pl.read_parquet(again / split))
    assert not _all_rows(ctr_dir)[TRUE_PROBABILITY].equals(_all_rows(other)[TRUE_PROBABILITY])
    assert (ctr_dir / "schema.json").read_text() == (again / "schema.json").read_text()


def test_recorded_bayes_auc_is_the_auc_of_the_true_probabilities(ctr_dir: Path) -> None:
    stats = json.loads((ctr_dir / "stats.json").read_text())
    rows = _all_rows(ctr_dir)
    assert stats["bayes_auc"] == pytest.approx(roc_auc_score(rows["label"], rows[TRUE_PROBABILITY]), abs=1e-12)
    test = pl.read_parquet(ctr_dir / "test")
    assert stats["splits_bayes"]["test"]["auc"] == pytest.approx(roc_auc_score(test["label"], test[TRUE_PROBABILITY]), abs=1e-12)
    # A learnable but not trivial problem, with Criteo's click rate; labels follow the probabilities.
    assert 0.72 < stats["bayes_auc"] < 0.9
    assert rows["label"].mean() == pytest.approx(0.25, abs=0.02)
    assert rows["label"].mean() == pytest.approx(rows[TRUE_PROBABILITY].mean(), abs=0.01)
    assert stats["rows_written"] == 30_000 and stats["bad_rows"] == 0


def test_entity_features_are_consistent_across_rows(ctr_dir: Path) -> None:
    schema = Schema.load(ctr_dir)
    rows = _all_rows(ctr_dir)
    user_features = [f for f in schema.features_of(Entity.USER)]
    item_features = [f for f in schema.features_of(Entity.ITEM)]
    assert len(user_features) >= 10 and len(item_features) >= 10
    context = schema.features_of(Entity.CONTEXT)
    assert context, "some fields must vary per row"
    per_user = rows.group_by("user_key").agg(pl.col(user_features).n_unique())
    per_item = rows.group_by("item_key").agg(pl.col(item_features).n_unique())
    assert (per_user.select(user_features).max().row(0) == (1,) * len(user_features))
    assert (per_item.select(item_features).max().row(0) == (1,) * len(item_features))
    # Context fields do vary within a user.
    busiest = rows["user_key"].value_counts().sort("count", descending=True)["user_key"][0]
    assert rows.filter(pl.col("user_key") == busiest)["C3"].n_unique() > 1


def test_history_categories_follow_history_items(ctr_dir: Path) -> None:
    rows = _all_rows(ctr_dir)
    # Index 0 is the shared out-of-vocabulary row (rare items), so it has no single category.
    known = rows.filter(pl.col("item_id") > 0)
    category_of = dict(zip(known["item_id"].to_list(), known["item_category"].to_list()))
    lengths = rows["hist_item_id"].list.len()
    assert lengths.max() <= 20 and lengths.min() == 0
    assert rows["hist_category"].list.len().equals(lengths)
    checked = 0
    for items, categories in zip(rows["hist_item_id"].head(300), rows["hist_category"].head(300)):
        for item, category in zip(items, categories):
            if item > 0 and item in category_of:
                assert category_of[item] == category
                checked += 1
    assert checked > 100


def test_a_simple_model_learns_something_but_not_everything(ctr_dir: Path) -> None:
    train, test = pl.read_parquet(ctr_dir / "train"), pl.read_parquet(ctr_dir / "test")
    dense = [f"I{i}" for i in range(1, 14)]
    model = LogisticRegression(max_iter=500).fit(train.select(dense).to_numpy(), train["label"].to_numpy())
    auc = roc_auc_score(test["label"], model.predict_proba(test.select(dense).to_numpy())[:, 1])
    bayes = roc_auc_score(test["label"], test[TRUE_PROBABILITY])
    assert 0.55 < auc < bayes - 0.03


def test_implicit_has_communities_and_distinct_pairs(tmp_path: Path) -> None:
    out = tmp_path / "implicit"
    result = synth_implicit(ImplicitConfig(rows=20_000, seed=3), out, PrepareOptions())
    assert result.schema.task is Task.IMPLICIT and not result.schema.labels
    rows = _all_rows(out)
    assert rows.height == 20_000
    assert rows.select("user_key", "item_key").n_unique() == 20_000
    # Far above the 1/8 a community-blind generator would give (dedup lowers it from the 0.85 drawn).
    assert result.stats["in_community_fraction"] > 0.6
    assert result.stats["splits"]["train"]["rows"] > 15_000


def test_criteo_tsv_is_valid_criteo(tmp_path: Path) -> None:
    path = write_criteo_tsv(CtrConfig(rows=1_000, seed=1), tmp_path / "raw", overwrite=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 1_000
    fields = [line.split("\t") for line in lines]
    assert {len(f) for f in fields} == {40}
    assert {f[0] for f in fields} == {"0", "1"}
    assert all(len(value) == 8 and int(value, 16) >= 0 for f in fields[:50] for value in f[14:])
    assert any(value == "" for f in fields for value in f[1:14]), "some dense values are missing, as in Criteo"


# ---- planted fields (feature methods' ground truth) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "planted"
    synth_ctr(CtrConfig(rows=30_000, seed=7, noise_fields=9, redundant_fields=4, planted_cross=True), out,
              PrepareOptions(seed=7))
    return out


def test_planted_fields_are_recorded_and_every_extra_field_has_one_role(planted_dir: Path) -> None:
    planted = json.loads((planted_dir / "stats.json").read_text())["planted"]
    schema = Schema.load(planted_dir)
    extra = {f.name for f in [*schema.dense, *schema.sparse] if f.name.startswith("F")}
    roles = [*planted["noise"], *planted["redundant"], *planted["cross"]]
    assert sorted(roles) == sorted(extra) and len(extra) == 9 + 4 + 2
    assert len(planted["noise"]) == 9 and len(planted["cross"]) == 2
    base = {f.name for f in [*schema.dense, *schema.sparse]} - extra - set(planted["keys"])
    assert set(planted["informative"]) - set(planted["cross"]) | set(planted["weak"]) == base
    entity = {f.name: f.entity for f in [*schema.dense, *schema.sparse]}
    for copy, source in planted["redundant"].items():
        assert entity[copy] is entity[source]
    assert all(entity[f] is Entity.CONTEXT for f in planted["noise"])


def test_noise_says_nothing_the_cross_says_something_only_as_a_pair(planted_dir: Path) -> None:
    planted = json.loads((planted_dir / "stats.json").read_text())["planted"]
    rows = _all_rows(planted_dir)
    truth = rows[TRUE_PROBABILITY].to_numpy()

    def dependence(*columns: str) -> float:
        """Share of the true probability's variance explained by the group means of ``columns``."""
        means = rows.group_by(list(columns)).agg(pl.col(TRUE_PROBABILITY).mean().alias("m"))
        fitted = rows.join(means, on=list(columns), how="left")["m"].to_numpy()
        return float(np.var(fitted) / np.var(truth))

    a, b = planted["cross"]
    # Alone each explains what any user (item) grouping does (~2%); together ~30%.
    assert dependence(a, b) > 5 * max(dependence(a), dependence(b))
    dense_noise = [f for f in planted["noise"] if rows[f].dtype.is_float()]
    for field in dense_noise:
        assert abs(np.corrcoef(rows[field].to_numpy(), truth)[0, 1]) < 0.05
    for copy, source in planted["redundant"].items():
        if rows[copy].dtype.is_float():
            assert np.corrcoef(rows[copy].to_numpy(), rows[source].to_numpy())[0, 1] > 0.85


def test_planted_fields_leave_the_base_rows_as_they_were(ctr_dir: Path, tmp_path: Path) -> None:
    """Noise and copies do not move the label: the base columns and labels equal the plain generator's."""
    out = tmp_path / "noisy"
    synth_ctr(CtrConfig(rows=30_000, seed=7, noise_fields=3, redundant_fields=2), out, PrepareOptions(seed=7))
    base = Schema.load(ctr_dir).columns
    for split in SPLITS:
        assert pl.read_parquet(out / split).select(base).equals(pl.read_parquet(ctr_dir / split).select(base))


def test_planted_options_are_checked() -> None:
    from recsys.errors import RecsysError

    with pytest.raises(RecsysError, match="at most 10"):
        CtrConfig(rows=10, redundant_fields=11)
