"""Data-quality findings, redundancy, and turning a ranking into a pruned schema: the parts every method shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.errors import RecsysError
from recsys.features.base import FeatureData, Ranking
from recsys.features.data import load_feature_data
from recsys.features.output import planted_scores
from recsys.features.quality import findings, redundancy, redundant_pairs
from recsys.features.select import check_subset, choose_fields, field_parameters, knee, pruned_schema
from recsys.schema import DenseFeature, Entity, Label, Schema, SparseFeature, Table
from tests.features.conftest import planted_truth


def _frame_data(frame: pl.DataFrame, dense: list[str], sparse: dict[str, int]) -> FeatureData:
    schema = Schema(dense=[DenseFeature(name=n, entity=Entity.CONTEXT) for n in dense],
                    sparse=[SparseFeature(name=n, entity=Entity.CONTEXT) for n in sparse],
                    tables=[Table(name=n, encoding="identity", cardinality=c) for n, c in sparse.items()],
                    labels=[Label(name="label")])
    fields = [*dense, *sparse]
    return FeatureData(data_dir=Path("."), schema=schema, frame=frame, label="label", fields=fields,
                       kinds={**{n: "dense" for n in dense}, **{n: "sparse" for n in sparse}},
                       cardinality=dict(sparse), rows_total=frame.height)


def test_findings_name_constant_identifier_like_and_leaking_fields() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    label = (rng.random(n) < 0.3).astype(np.float32)
    frame = pl.DataFrame({
        "ok": rng.normal(size=n).astype(np.float32),
        "constant": np.zeros(n, np.float32),
        "leak": (label * 2 + rng.normal(0, 0.01, n)).astype(np.float32),
        "row_id": np.arange(1, n + 1),
        "mostly_oov": np.where(rng.random(n) < 0.7, 0, rng.integers(1, 50, n)),
        "category": rng.integers(1, 20, n),
        "label": label,
    })
    data = _frame_data(frame, ["ok", "constant", "leak"], {"row_id": n + 1, "mostly_oov": 50, "category": 20})
    found = {(f.field, f.kind) for f in findings(data)}
    assert found == {("constant", "constant"), ("leak", "leakage"), ("row_id", "exploding_cardinality"),
                     ("mostly_oov", "exploding_cardinality")}


def test_planted_copies_are_the_redundant_pairs(planted: Path) -> None:
    data = load_feature_data(planted, sample=40_000)
    flagged = {frozenset((a, b)) for a, b, _ in redundant_pairs(redundancy(data))}
    copies = {frozenset(pair) for pair in planted_truth(planted)["redundant"].items()}
    assert flagged == copies


def test_precision_at_k_counts_informative_fields_among_the_pool() -> None:
    truth = {"informative": ["a", "b"], "noise": ["n1", "n2"], "cross": [], "weak": ["w"], "redundant": {}}
    assert planted_scores(["a", "w", "n1", "b", "n2"], truth) == {
        "k": 2, "precision_at_k": 0.5, "noise_in_top_k": ["n1"], "cross_found": None}


def _ranking(data: FeatureData) -> Ranking:
    return Ranking("test", {f: float(len(data.fields) - i) for i, f in enumerate(data.fields)})


def test_keep_and_budget_and_their_bad_values(planted: Path) -> None:
    data = load_feature_data(planted, sample=5_000)
    ranking = _ranking(data)
    assert choose_fields(data, ranking, 5, None) == data.fields[:5]
    budget = sum(field_parameters(data.schema, f)[1] for f in data.fields[:8])
    kept = choose_fields(data, ranking, None, budget)
    assert sum(field_parameters(data.schema, f)[1] for f in kept) <= budget and data.fields[:8] == kept[:8]
    for keep, budget, message in ((len(data.fields) + 1, None, "larger than the"), (0, None, "at least 1"),
                                  (None, 10**12, "covers all"), (3, 100, "not both")):
        with pytest.raises(RecsysError, match=message) as error:
            choose_fields(data, ranking, keep, budget)
        assert "\n" not in str(error.value)


def test_without_keep_or_budget_the_method_s_own_cut_or_the_knee(planted: Path) -> None:
    data = load_feature_data(planted, sample=5_000)
    ranking = _ranking(data)
    ranking.suggested = [data.fields[3], data.fields[1]]
    assert choose_fields(data, ranking, None, None) == [data.fields[1], data.fields[3]]
    assert knee(["a", "b", "c", "d"], {"a": 1.0, "b": 0.9, "c": 0.1, "d": 0.05}) == ["a", "b"]


def test_pruned_schema_keeps_lists_keys_and_labels_and_drops_unused_tables(planted: Path) -> None:
    data = load_feature_data(planted, sample=5_000)
    schema = pruned_schema(data, ["C1", "I1"], interactions=[("C1", "hist_item_id"), ("C2", "C1")])
    assert [f.name for f in schema.dense] == ["I1"]
    assert [f.name for f in schema.sparse] == ["C1"]
    assert {t.name for t in schema.tables} == {"C1", "item_id", "item_category"}  # the histories' tables
    assert schema.interactions == [("C1", "hist_item_id")]
    assert schema.labels == data.schema.labels and schema.user_key == data.schema.user_key
    check_subset(data.schema, schema, "selected")


def test_a_schema_that_is_not_the_data_s_is_refused(planted: Path) -> None:
    data = load_feature_data(planted, sample=5_000)
    schema = pruned_schema(data, ["C1", "I1"])
    document = schema.model_dump(mode="json")
    document["dense"][0]["mean"] = 123.0
    with pytest.raises(RecsysError, match="feature 'I1' differs"):
        check_subset(data.schema, Schema.from_dict(document), "--schema s.json")
    document = schema.model_dump(mode="json")
    document["dense"].append({"name": "nope", "entity": "user", "mean": 0, "std": 1})
    with pytest.raises(RecsysError, match="'nope' is not a column"):
        check_subset(data.schema, Schema.from_dict(document), "--schema s.json")


def test_fields_must_be_candidates_and_label_free_data_is_refused(planted: Path, small_implicit: Path) -> None:
    with pytest.raises(RecsysError, match="'nope' is not a column"):
        load_feature_data(planted, sample=1000, only=["C1", "nope"])
    with pytest.raises(RecsysError, match="'hist_item_id' is not a single-valued feature"):
        load_feature_data(planted, sample=1000, only=["hist_item_id"])
    data = load_feature_data(planted, sample=1000, only=["C1", "I2"])
    assert data.fields == ["I2", "C1"] and "C2" in data.kept_unranked
    with pytest.raises(RecsysError, match="has no label") as error:
        load_feature_data(small_implicit)
    assert "\n" not in str(error.value)
