"""benchmarks/bench_features.py without retraining (two small feature methods of this test's own on a planted
synthetic set: ranking, precision@k, redundancy against the planted copies, a generated cross), its pure parts
(planted scoring, run aggregation, the markdown), and the report's bench_features section rendered from a
hand-written features.json, odd and partial files included."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from recsys.features import FEATURE_METHODS, register_feature_method
from recsys.features.base import FeatureData, FeatureGenerator, FeatureMethod, GeneratedFeature, Ranking
from recsys.features.quality import codes, entropy, mutual_information
from recsys.schema import Derivation, DerivedOp
from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks" / "bench_features.py"


def _bench_module() -> Any:
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_features
    finally:
        sys.path.remove(str(BENCH.parent))
    return bench_features


def _label_information(data: FeatureData) -> dict[str, float]:
    label = data.labels().astype(np.int64)
    return {f: mutual_information(codes(data, f), label) / max(entropy(label), 1e-12) for f in data.fields}


class _Information(FeatureMethod):
    """Mutual information of each field with the label (quality.codes' discretisation): a test method."""

    name = "test_bench_information"
    paper = "none: a method of tests/report/test_report_bench_features.py"

    def rank(self, data: FeatureData) -> Ranking:
        return Ranking(self.name, _label_information(data))


class _PairOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pair: list[str] = []


class _Crosser(FeatureGenerator):
    """Ranks like _Information, keeps its best 12 fields and proposes the cross of ``pair``: a test method."""

    name = "test_bench_crosser"
    paper = "none: a method of tests/report/test_report_bench_features.py"
    Options: ClassVar[type[BaseModel]] = _PairOptions

    def rank(self, data: FeatureData) -> Ranking:
        scores = _label_information(data)
        return Ranking(self.name, scores, suggested=sorted(scores, key=lambda f: (-scores[f], f))[:12])

    def generate(self, data: FeatureData) -> list[GeneratedFeature]:
        a, b = self.options.pair or data.sparse_fields[:2]
        return [GeneratedFeature(f"x_{a}_{b}", Derivation(op=DerivedOp.CROSS, inputs=[a, b]), "sparse", 0.01)]


@pytest.fixture(scope="module")
def methods() -> Iterator[list[str]]:
    """The two test methods, registered for this module only."""
    for cls in (_Information, _Crosser):
        register_feature_method(cls)
    yield [_Information.name, _Crosser.name]
    for cls in (_Information, _Crosser):
        FEATURE_METHODS.pop(cls.name, None)


@pytest.fixture(scope="module")
def bench(methods: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(out folder, features.json) of an in-process --quick --no-train run on 6,000 planted rows; the Criteo
    sample asked for from a shared folder that does not exist."""
    root = tmp_path_factory.mktemp("bench_features")
    results = _bench_module().main(
        ["--quick", "--no-train", "--rows", "6000", "--sample", "4000", "--datasets", "synthetic,criteo",
         "--methods", ",".join(methods), "--shared", str(root / "no-shared"), "--work", str(root / "work"),
         "--out", str(root / "out")])
    return root / "out", results


def test_the_benchmark_ranks_scores_against_the_truth_and_skips_absent_data(
        methods: list[str], bench: tuple[Path, dict[str, Any]]) -> None:
    out, results = bench
    assert json.loads((out / "features.json").read_text()) == json.loads(json.dumps(results))
    assert results["benchmark"] == "features" and results["quick"] and results["methods"] == methods
    assert results["machine"]["cpu"] and results["machine"]["cpu_flags"] and results["git_sha"]
    assert "bench_features.py --quick" in results["command"]
    assert "no-shared" in results["datasets"]["criteo"]["skipped"]
    synthetic = results["datasets"]["synthetic"]
    truth = synthetic["planted"]
    fields = synthetic["data"]["fields"]
    assert synthetic["data"]["rows_sampled"] <= 4000 < synthetic["data"]["rows_total"]
    assert "baseline" not in synthetic and "curve" not in synthetic  # --no-train
    red = synthetic["redundancy"]
    assert red["fields"] == fields and len(red["matrix"]) == len(fields) == len(red["matrix"][0])
    assert all(red["matrix"][i][i] == 1.0 for i in range(len(fields)))
    assert red["vs_truth"]["planted"] == len(truth["redundant"]) == 6
    assert red["vs_truth"]["found"] + len(red["vs_truth"]["missed"]) == 6
    for name in methods:
        record = synthetic["methods"][name]
        assert "error" not in record and record["seconds"] >= 0 and record["fields_total"] == len(fields)
        assert sorted(record["order"]) == sorted(fields) and len(record["top"]) == 20
        assert [t["field"] for t in record["top"]] == record["order"][:20]
        planted = record["planted"]
        noise = set(truth["noise"])
        assert planted["k"] == len(set(truth["informative"]) & set(fields))
        pool = [f for f in record["order"] if f in noise or f in set(truth["informative"])][:planted["k"]]
        assert planted["precision_at_k"] == sum(f not in noise for f in pool) / planted["k"]
        assert planted["noise_dropped"] == len(noise - set(record["kept"])) and planted["noise_total"] == len(noise)
    assert synthetic["methods"][methods[1]]["fields_kept"] == 12  # the method's own cut: its suggestion
    generated = synthetic["generated"][methods[1]]
    assert [g["recipe"]["op"] for g in generated["features"]] == ["cross"]
    assert generated["cross_found"] is (set(generated["features"][0]["recipe"]["inputs"]) == set(truth["cross"]))
    assert (Path(generated["data"]) / "schema.json").is_file()
    assert methods[0] not in synthetic["generated"]  # not a generator
    text = (out / "features.md").read_text()
    assert "Smoke run" in text and f"{synthetic['methods'][methods[0]]['planted']['precision_at_k']:.3f}" in text
    assert "criteo" in text and "Skipped" in text and results["finished"] is True and "Unfinished" not in text


def test_a_selection_that_makes_no_schema_is_an_error_of_its_own(bench: tuple[Path, dict[str, Any]],
                                                                   tmp_path: Path, methods: list[str]) -> None:
    from recsys.features.data import load_feature_data

    module = _bench_module()
    data = Path(bench[1]["datasets"]["synthetic"]["data"]["path"])
    settings = module.parse(["--methods", methods[0], "--work", str(tmp_path)])
    record = module.retrain_selection(settings, "synthetic", data, load_feature_data(data, sample=500), "odd",
                                      ["no_such_field"], None, {"auc": 0.7})
    assert record["auc"] is None and "no_such_field" in record["error"] and record["error"].startswith("pruned")
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_planted_scoring_aggregation_and_the_cross() -> None:
    bench = _bench_module()
    truth = {"informative": ["a", "b", "c"], "noise": ["n1", "n2"], "redundant": {"a2": "a"}, "cross": ["c", "d"]}
    order = ["a", "n1", "b", "a2", "c", "d", "n2"]
    record = bench.planted_record(order, ["a", "a2", "n1", "b"], truth)
    assert record["precision_at_k"] == pytest.approx(2 / 3) and record["noise_in_top_k"] == ["n1"]
    assert (record["noise_dropped"], record["noise_total"], record["noise_dropped_fraction"]) == (1, 2, 0.5)
    assert record["copies_kept_with_source"] == ["a2~a"] and record["copies_total"] == 1
    matrix = {("a", "a2"): 0.9, ("a", "b"): 0.85, ("b", "a2"): 0.1}
    red = bench.redundancy_record(["a", "a2", "b"], matrix, 0.5, truth)
    assert red["matrix"] == [[1.0, 0.9, 0.85], [0.9, 1.0, 0.1], [0.85, 0.1, 1.0]]
    assert red["vs_truth"] == {"planted": 1, "flagged": 2, "found": 1, "missed": [], "extra": ["a~b"]}
    cross = {"op": "cross", "inputs": ["d", "c"]}
    assert bench.cross_found([{"recipe": {"op": "add", "inputs": ["c", "d"]}}, {"recipe": cross}], truth) is True
    assert bench.cross_found([{"recipe": {"op": "cross", "inputs": ["c", "a"]}}], truth) is False
    assert bench.cross_found([{"recipe": cross}], {"informative": []}) is None
    runs = [{"auc": 0.70}, {"auc": 0.72}, {"error": "boom"}]
    agg = bench.aggregate(runs)
    assert agg["auc"] == pytest.approx(0.71) and agg["auc_std"] == pytest.approx(np.std([0.70, 0.72], ddof=1))
    assert agg["error"] == "boom" and bench.aggregate([{"auc": 0.7}])["auc_std"] is None
    assert bench.with_delta({"auc": 0.705}, {"auc": 0.71})["delta_auc"] == pytest.approx(-0.005)
    assert bench.with_delta({"auc": None}, {"auc": 0.71})["delta_auc"] is None


def test_the_command_line_refuses_unknown_methods_and_datasets(methods: list[str]) -> None:
    bench = _bench_module()
    with pytest.raises(SystemExit):
        bench.parse(["--methods", "no_such_method"])
    with pytest.raises(SystemExit):
        bench.parse(["--methods", methods[0], "--datasets", "imagenet"])
    settings = bench.parse(["--methods", methods[0], "--quick", "--curve", "5,10,20,80"])
    assert settings.rows == 100_000 and settings.max_steps == 30 and settings.epochs["synthetic"] == 1
    assert bench.curve_ks(settings, 40) == [5, 10, 20]
    assert "trainer.max_steps=30" in bench.budget_overrides(settings, "synthetic")
    assert "--schema" in bench.train_command(Path("d"), Path("o"), 0, Path("s.json"), [])
    assert bench.quick_methods(["disco", "inffs", "openfe", "outrank"]) == ["outrank", "openfe"]
    assert bench.quick_methods(["disco", "inffs", "outrank"]) == ["outrank", "disco"]


# ---- the report section ----------------------------------------------------------------------------

def _features_json() -> dict[str, Any]:
    fields = ["I1", "C1", "F1", "F2"]
    return {
        "benchmark": "features", "quick": False, "command": "python benchmarks/bench_features.py",
        "budget": "DLRM, configs/dlrm.yaml, 1 epoch", "git_sha": "abc",
        "machine": {"cpu": "Test CPU", "nproc": 2, "torch": "2.x", "date": "2026-12-01T00:00:00"},
        "datasets": {
            "synthetic": {
                "data": {"command": "recsys data synth --rows 1000000", "fields": fields},
                "planted": {"informative": ["I1", "C1"], "noise": ["F2"], "redundant": {"F1": "I1"},
                            "keys": ["user_id"]},
                "baseline": {"auc": 0.8123, "auc_std": 0.0007},
                "methods": {
                    "outrank": {"seconds": 12.5, "rows_total": 800000, "fields_kept": 3, "fields_total": 4,
                                "top": [{"field": "I1", "score": 0.9}, {"field": "C1", "score": 0.5},
                                        {"field": "F1", "score": 0.4}, {"field": "F2", "score": 0.01}],
                                "planted": {"precision_at_k": 0.875, "k": 2, "noise_dropped": 1,
                                            "noise_total": 1},
                                "load_s": 4.25,
                                "retrained": {"auc": 0.8111, "auc_std": 0.0009, "delta_auc": -0.0012}},
                    "disco": {"error": "ValueError: broken"},
                },
                "redundancy": {"fields": fields, "matrix": [[1, 0.1, 0.93, 0], [0.1, 1, 0, 0], [0.93, 0, 1, 0],
                                                            [0, 0, 0, 1]],
                               "flagged": [{"a": "I1", "b": "F1", "redundancy": 0.93}],
                               "vs_truth": {"planted": 1, "found": 1}},
                "curve": {"method": "outrank", "points": [{"k": 2, "auc": 0.7001}, {"k": 4, "auc": 0.8123,
                                                                                      "all": True}]},
                "generated": {"openfe": {"features": [{"name": "x", "recipe": {"op": "cross",
                                                                               "inputs": ["F3", "F4"]}}],
                                         "seconds": 3.5, "cross_found": True,
                                         "retrained": {"auc": 0.8155, "delta_auc": 0.0032}}},
            },
            "criteo": {"skipped": "../shared/datasets/criteo-sample is absent"},
            "movielens": {"methods": {"outrank": {"seconds": 0.5}}, "note": "few fields"},
        },
    }


def _render(tmp_path: Path, document: Any) -> tuple[Any, Any]:
    from recsys.report.context import BenchFile, ReportContext
    from recsys.report.sections.bench_features import render

    ctx = ReportContext([], 10, bench_dir=tmp_path, bench={"features.json": BenchFile("features.json", document)})
    return render(ctx), ctx


def test_the_section_shows_the_numbers_the_charts_and_notes_what_is_missing(tmp_path: Path) -> None:
    from recsys.report.context import ReportContext, load_bench
    from recsys.report.sections.bench_features import render

    (tmp_path / "features.json").write_text(json.dumps(_features_json()))
    ctx = ReportContext([], 10, bench_dir=tmp_path, bench=load_bench(tmp_path))
    section = render(ctx)
    assert section is not None and "features.json" in ctx.claimed
    body = section.body
    for text in ("0.875 (k=2)", "1 / 1", "12.50", "800,000", "3 / 4", "0.8111 ± 0.0009", "-0.0012",
                 "0.8123 ± 0.0007", "4.25 s",
                 "failed: ValueError: broken", "x = cross(F3, F4)", "+0.0032", "0.8155", "I1~F1",
                 "1 of 1 planted copies flagged",
                 "criteo: skipped: ../shared/datasets/criteo-sample is absent", "Test CPU", "few fields."):
        assert text in body, text
    # bars (synthetic), heat map, curve: three charts for synthetic; movielens has no top scores to chart
    assert body.count('src="data:image/png;base64,') == 3
    data = section.data["features.json"]
    assert data["synthetic"]["methods"]["outrank"]["precision_at_k"] == 0.875
    assert data["synthetic"]["methods"]["disco"]["error"] == "ValueError: broken"
    assert data["synthetic"]["curve"]["points"][0] == {"k": 2.0, "auc": 0.7001, "auc_std": None, "all": False}
    assert data["synthetic"]["generated"]["openfe"]["cross_found"] is True
    assert data["criteo"] == {"skipped": "../shared/datasets/criteo-sample is absent"}
    for missing in ("movielens: no redundancy matrix", "movielens: no AUC-vs-fields curve",
                    "movielens: no method scores (top) to chart"):
        assert missing in section.note, missing
    assert "synthetic:" not in section.note  # everything of synthetic was shown


def test_odd_files_are_notes_never_failures(tmp_path: Path) -> None:
    from recsys.report.context import ReportContext
    from recsys.report.sections.bench_features import render

    assert render(ReportContext([], 10)) is None
    assert render(ReportContext([], 10, bench_dir=tmp_path)) is None
    section, ctx = _render(tmp_path, {"benchmark": "features", "datasets": "nope"})
    assert section is not None and "no datasets" in section.note and not section.body
    assert "features.json" not in ctx.claimed  # so the "other results" section lists it
    odd = _features_json()
    synthetic = odd["datasets"]["synthetic"]
    synthetic["redundancy"]["matrix"] = [[1, 2], ["x"]]
    synthetic["methods"]["outrank"]["top"] = [{"field": "I1", "score": "high"}, 7]
    synthetic["methods"]["outrank"]["planted"] = None
    synthetic["curve"] = {"points": [{"k": "two", "auc": 0.7}]}
    synthetic["generated"] = {"openfe": {"error": "nothing improved"}}
    odd["datasets"]["broken"] = [1, 2]
    odd["datasets"]["movielens"] = {"error": "RecsysError: no label"}
    odd["finished"] = False
    section, ctx = _render(tmp_path, odd)
    assert section is not None and "features.json" in ctx.claimed
    for text in ("synthetic: no redundancy matrix", "synthetic: no AUC-vs-fields curve",
                 "synthetic: no method scores", "openfe generated nothing: nothing improved", "broken: not an object"):
        assert text in section.note, text
    assert "0.8111" in section.body and 'src="data:image' not in section.body
    assert "movielens: failed: RecsysError: no label" in section.body and "unfinished run" in section.body
    assert section.data["features.json"]["movielens"] == {"error": "RecsysError: no label"}
    assert section.data["features.json"]["synthetic"]["methods"]["outrank"]["precision_at_k"] is None
