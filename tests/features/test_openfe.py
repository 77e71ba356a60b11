"""OpenFE (recsys.features.openfe) on planted data: it finds a zero-marginal sparse cross and a dense product,
and its proposals written by ``write_generated`` are the recipes' values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data.formats.tabular import TabularSource
from recsys.data.pipeline import PrepareOptions, run
from recsys.errors import RecsysError
from recsys.features import feature_method
from recsys.features.base import FeatureData, GeneratedFeature
from recsys.features.data import load_feature_data
from recsys.features.generate import write_generated
from recsys.features.recipes import Lookups, derive
from recsys.schema import DerivedOp, Schema

CROSS_IDS = 10
# Small settings so a test run stays short; the planted effects are strong enough for them.
FAST = {"rounds": 8, "base_rounds": 120, "blocks": 4, "top_n": 6}


def planted_columns(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Prepared-like columns and a 0/1 label whose logit has: marginal effects of d1 and s_a, a product
    d3·d4 (no marginal effect of either), a cross s1[x1]·s2[x2] with random ±1 signs (no marginal effect of
    x1 or x2), and noise fields d_noise, s_noise. Sparse ids are table rows 1..K."""
    rng = np.random.default_rng(seed)
    signs = np.random.default_rng(99)  # the planted structure is the same for every sample
    s1 = signs.permutation(np.repeat([-1.0, 1.0], CROSS_IDS // 2))
    s2 = signs.permutation(np.repeat([-1.0, 1.0], CROSS_IDS // 2))
    effect_a = signs.normal(0, 0.6, 31)
    columns = {
        "d1": rng.normal(size=n), "d3": rng.normal(size=n), "d4": rng.normal(size=n),
        "d_noise": rng.normal(size=n),
        "s_a": rng.integers(1, 31, n), "x1": rng.integers(1, CROSS_IDS + 1, n),
        "x2": rng.integers(1, CROSS_IDS + 1, n), "s_noise": rng.integers(1, 51, n),
    }
    logit = (-0.5 + 0.8 * columns["d1"] + effect_a[columns["s_a"]] + 1.0 * columns["d3"] * columns["d4"]
             + 1.2 * s1[columns["x1"] - 1] * s2[columns["x2"] - 1])
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
    return columns, label


def planted_schema() -> Schema:
    dense = [{"name": n, "entity": "context", "transform": "standardize", "clip_min": None}
             for n in ("d1", "d3", "d4", "d_noise")]
    sparse = [{"name": n, "entity": "context"} for n in ("s_a", "x1", "x2", "s_noise")]
    cards = {"s_a": 31, "x1": CROSS_IDS + 1, "x2": CROSS_IDS + 1, "s_noise": 51}
    tables = [{"name": n, "encoding": "identity", "cardinality": c} for n, c in cards.items()]
    return Schema.from_dict({"task": "ctr", "dense": dense, "sparse": sparse, "tables": tables,
                             "labels": [{"name": "click"}]})


def planted_data(n: int = 24_000, seed: int = 0) -> FeatureData:
    schema = planted_schema()
    frames = []
    for part, rows in ((0, n), (1, n // 4)):
        columns, label = planted_columns(rows, seed + part)
        frame = pl.DataFrame({k: (v.astype(np.float32) if k.startswith("d") else v.astype(np.int64))
                              for k, v in columns.items()})
        frames.append(frame.with_columns(pl.Series("click", label.astype(np.float32))))
    fields = ["d1", "d3", "d4", "d_noise", "s_a", "x1", "x2", "s_noise"]
    kinds = {f: ("dense" if f.startswith("d") else "sparse") for f in fields}
    cardinality = {f: int(schema.feature_table(f).cardinality or 1) for f in fields if kinds[f] == "sparse"}
    return FeatureData(data_dir=Path("planted"), schema=schema, frame=frames[0], label="click", fields=fields,
                       kinds=kinds, cardinality=cardinality, rows_total=n, seed=seed, valid=frames[1])


def _top(generated: list[GeneratedFeature], k: int) -> list[tuple[DerivedOp, frozenset[str]]]:
    return [(g.recipe.op, frozenset(g.recipe.inputs)) for g in generated[:k]]


def test_openfe_finds_the_planted_cross_and_product() -> None:
    data = planted_data()
    method = feature_method("openfe", FAST)
    generated = method.generate(data)
    top = _top(generated, 2)
    assert set(top) == {(DerivedOp.CROSS, frozenset({"x1", "x2"})), (DerivedOp.MUL, frozenset({"d3", "d4"}))}, top
    assert all(g.gain > 0 for g in generated)
    assert len(generated) <= FAST["top_n"]
    gains = {(g.recipe.op, frozenset(g.recipe.inputs)): g.gain for g in generated}
    assert gains[(DerivedOp.CROSS, frozenset({"x1", "x2"}))] > 0.01  # a strong effect: a clear log-loss drop
    report = method.report  # type: ignore[attr-defined]
    assert report["candidates"] > report["fine_stage"] > 0 and report["seconds"]["total"] > 0


def test_openfe_prefilter_keeps_the_cross_and_is_deterministic() -> None:
    """With the candidate cap far below the enumeration, the one-step pre-filter must keep the cross; without
    valid rows the search holds out part of the sample."""
    data = planted_data(n=16_000, seed=5)
    data.valid = None
    options = {**FAST, "max_candidates": 12}
    first = feature_method("openfe", options).generate(data)
    assert (DerivedOp.CROSS, frozenset({"x1", "x2"})) in _top(first, 3)
    again = feature_method("openfe", options).generate(data)
    assert [(g.name, g.gain) for g in first] == [(g.name, g.gain) for g in again]


def test_openfe_rank_scores_every_field() -> None:
    data = planted_data(n=12_000, seed=2)
    method = feature_method("openfe", {**FAST, "ops": ["cross"]})
    ranking = method.timed_rank(data)
    assert set(ranking.scores) == set(data.fields)
    assert set(ranking.order()[-2:]) == {"d_noise", "s_noise"}, ranking.scores  # permutation importance
    assert ranking.suggested is not None and {"d1", "s_a"} <= set(ranking.suggested)
    assert ranking.details["generated"] and ranking.details["generated"][0]["recipe"]["op"] == "cross"
    assert ranking.seconds > 0 and json.loads(json.dumps(ranking.details))["seconds"]["total"] > 0


@pytest.mark.parametrize("options, words", [
    ({"top_n": 0}, "top_n"), ({"blocks": 3}, "blocks"), ({"ops": ["log"]}, "ops"), ({"topn": 3}, "topn"),
    ({"seed": -1}, "seed"),
])
def test_openfe_bad_options_are_one_line_errors(options: dict, words: str) -> None:
    with pytest.raises(RecsysError) as error:
        feature_method("openfe", options)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_openfe_no_candidate_and_bad_label_are_errors() -> None:
    data = planted_data(n=2_000)
    only_dense = FeatureData(data_dir=data.data_dir, schema=data.schema, frame=data.frame, label="click",
                             fields=["d1"], kinds={"d1": "dense"}, cardinality={}, rows_total=2_000,
                             valid=data.valid)
    with pytest.raises(RecsysError, match="make no candidate"):
        feature_method("openfe", {**FAST, "ops": ["cross"]}).generate(only_dense)
    counts = data.frame.with_columns(pl.col("click") * 3)
    bad = FeatureData(data_dir=data.data_dir, schema=data.schema, frame=counts, label="click",
                      fields=data.fields, kinds=data.kinds, cardinality=data.cardinality, rows_total=2_000,
                      valid=data.valid)
    with pytest.raises(RecsysError, match="label 'click'.*0/1"):
        feature_method("openfe", FAST).generate(bad)


PLANTED_YAML = """
task: ctr
dense:
  - {name: d1, entity: context, transform: standardize, clip_min: null}
  - {name: d3, entity: context, transform: standardize, clip_min: null}
  - {name: d4, entity: context, transform: standardize, clip_min: null}
  - {name: d_noise, entity: context, transform: standardize, clip_min: null}
sparse:
  - {name: s_a, entity: item}
  - {name: x1, entity: user}
  - {name: x2, entity: item}
  - {name: s_noise, entity: context}
labels:
  - {name: click}
"""


def test_generate_end_to_end_writes_the_cross(tmp_path: Path) -> None:
    """Raw Parquet → prepare → openfe → write_generated: the output schema holds the cross as a derived sparse
    feature, and its Parquet column is ``recipes.derive`` of the written inputs."""
    columns, label = planted_columns(30_000, seed=7)
    raw = {k: (v if k.startswith("d") else np.char.add(f"{k}_", v.astype(str))) for k, v in columns.items()}
    pl.DataFrame({**raw, "click": label.astype(np.int64)}).write_parquet(tmp_path / "raw.parquet")
    (tmp_path / "schema.yaml").write_text(PLANTED_YAML)
    source = TabularSource(tmp_path / "raw.parquet", Schema.load(tmp_path / "schema.yaml"), file_format="parquet")
    prepared = run(source, tmp_path / "prepared", PrepareOptions(seed=0)).out

    data = load_feature_data(prepared, sample=None, seed=0)
    generated = feature_method("openfe", FAST).generate(data)
    cross = next(g for g in generated if g.recipe.op is DerivedOp.CROSS)
    assert set(cross.recipe.inputs) == {"x1", "x2"}
    out = write_generated(prepared, tmp_path / "generated", generated, progress=False)

    schema = Schema.load(out / "schema.json")
    feature = next(f for f in schema.sparse if f.name == cross.name)
    assert feature.derived is not None and feature.derived.op is DerivedOp.CROSS
    assert schema.feature_table(cross.name).encoding.value == "identity"
    lookups = Lookups(out)
    for split in ("train", "valid", "test"):
        frame = pl.read_parquet(sorted((out / split).glob("*.parquet")))
        for spec in schema.derived_features:
            assert spec.derived is not None
            expected = derive(spec, {n: frame[n].to_numpy() for n in spec.derived.inputs}, lookups)
            np.testing.assert_array_equal(frame[spec.name].to_numpy(), expected)
        assert frame[cross.name].n_unique() > CROSS_IDS  # the pairs, not one input's ids
