"""benchmarks/bench_models.py for real on a tiny synthetic set (2 registered models × 1 seed, or 1 model × 2 seeds
while only one is registered), its models.json rendered by the report's bench_models section; and its gAUC
against scikit-learn's AUC user by user."""

from __future__ import annotations

import html
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recsys.models import model_names
from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks" / "bench_models.py"


def _bench_module() -> Any:
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_models
    finally:
        sys.path.remove(str(BENCH.parent))
    return bench_models


def test_gauc_is_the_impression_weighted_mean_of_sklearn_auc_per_user() -> None:
    gauc = _bench_module().gauc
    rng = np.random.default_rng(0)
    users = np.array([f"u{k}" for k in rng.integers(0, 40, 800)] + ["all_clicks"] * 7 + ["no_clicks"] * 5)
    labels = np.concatenate([rng.integers(0, 2, 800), np.ones(7), np.zeros(5)]).astype(np.float64)
    scores = np.round(rng.random(len(users)), 1)  # many ties: average ranks, as roc_auc_score
    weighted, rows, counted = 0.0, 0, 0
    for user in np.unique(users):
        mine = users == user
        if 0 < labels[mine].sum() < mine.sum():  # one-class users are skipped
            weighted += roc_auc_score(labels[mine], scores[mine]) * mine.sum()
            rows += int(mine.sum())
            counted += 1
    got = gauc(users, labels, scores)
    assert got["gauc"] == pytest.approx(weighted / rows, abs=1e-12)
    assert (got["users"], got["rows"]) == (counted, rows)
    assert counted <= 40 and rows <= 800  # the one-class users are not among them
    assert gauc(np.array(["a", "a"]), np.array([1.0, 1.0]), np.array([0.2, 0.3])) == {"gauc": None, "users": 0,
                                                                                       "rows": 0}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """(work folder, out folder, models.json) of a --quick run on 12,000 synthetic rows, 10 steps a run."""
    root = tmp_path_factory.mktemp("bench_models")
    models = model_names()[:2]
    seeds = 1 if len(models) > 1 else 2
    command = [sys.executable, str(BENCH), "--quick", "--datasets", "synthetic", "--synthetic-rows", "12000",
               "--models", ",".join(models), "--seeds", str(seeds), "--max-steps", "10", "--rounds", "1",
               "--repeats", "2", "--warmup", "1", "--work", str(root / "work"), "--out", str(root / "out")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "work", root / "out", json.loads((root / "out" / "models.json").read_text())


def test_models_json_has_every_run_and_their_mean_and_std(bench: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, results = bench
    assert results["benchmark"] == "models" and results["quick"] is True and not results["failed"]
    assert results["machine"]["cpu_flags"]
    assert results["machine"]["cpu"] and results["machine"]["torch_threads"] >= 1 and results["git_sha"]
    assert "bench_models.py --quick" in results["command"]
    runs = results["runs"]
    assert len(runs) == len(results["models"]) * len(results["seeds"])
    for run in runs:
        assert 0 < run["auc"] < 1 and 0 < run["gauc"] < 1 and run["logloss"] > 0
        assert run["auc"] == pytest.approx(run["trainer_test_auc"], abs=1e-4)  # the trainer scored the same rows
        assert run["params"] == run["embedding_params"] + run["dense_params"] > run["embedding_params"] > 0
        assert run["train_samples_per_s"] > 0 and run["inference_ms_per_1000"] > 0 and run["cpu_s"] > 0
        assert f"--seed {run['seed']}" in run["command"] and "trainer.max_steps=10" in run["command"]
    for model in results["models"]:
        aucs = [r["auc"] for r in runs if r["model"] == model]
        stat = results["summary"]["synthetic"][model]["auc"]
        assert stat["mean"] == pytest.approx(statistics.fmean(aucs))
        assert stat["std"] == (pytest.approx(statistics.stdev(aucs)) if len(aucs) > 1 else None)
    assert results["ordering"]["datasets"]["synthetic"]["best"] in results["models"]
    assert results["ordering"]["statements"]
    text = (out / "models.md").read_text()
    best = results["summary"]["synthetic"][results["ordering"]["datasets"]["synthetic"]["best"]]["auc"]
    assert f"{best['mean']:.4f}" in text and "0.9691" in text and "Smoke run" in text


def test_report_renders_the_models_results(bench: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    from recsys.report import ReportOptions, build_report

    work, out, results = bench
    model = results["models"][0]
    artifact = work / "runs" / "synthetic" / model / "seed0" / "artifact"
    paths = build_report(ReportOptions(artifacts=[artifact], out=tmp_path / "report.html", bench=out,
                                       progress=False))
    report = json.loads(paths.json.read_text())
    page = paths.html.read_text()
    section = report["sections"]["bench_models"]["data"]["models.json"]
    assert "models.json" not in report["sections"]["bench_other"]["data"].get("skipped", {})
    for name in results["models"]:
        expected = results["summary"]["synthetic"][name]
        shown = section["summary"]["synthetic"][name]
        for metric in ("auc", "gauc", "logloss", "inference_ms_per_1000"):
            assert shown[metric]["mean"] == expected[metric]["mean"], (name, metric)
        assert f"{expected['auc']['mean']:.4f}" in page and f"{expected['params']['mean']:,.0f}" in page
    assert [a["auc"] for a in section["anchors"]][:2] == [0.9691, 0.9691] and "0.8860" in page
    assert section["ordering"] == results["ordering"]["statements"]
    assert all(html.escape(statement) in page for statement in section["ordering"])
    assert "smoke run" in page


def test_without_models_json_the_section_is_left_out(tmp_path: Path) -> None:
    from recsys.report.context import ReportContext
    from recsys.report.sections.bench_models import render

    assert render(ReportContext([], 10)) is None
    assert render(ReportContext([], 10, bench_dir=tmp_path)) is None


def test_a_malformed_models_json_is_a_note_and_odd_cells_are_dashes(tmp_path: Path) -> None:
    from recsys.report.context import BenchFile, ReportContext
    from recsys.report.sections.bench_models import render

    bad = BenchFile("models.json", {"benchmark": "models", "summary": {"synthetic": {"dlrm": {"auc": {"mean": "x"}}}},
                                    "anchors": "nope", "ordering": [1]})
    ctx = ReportContext([], 10, bench_dir=tmp_path, bench={"models.json": bad})
    section = render(ctx)
    assert section is not None and "no summary with numbers" in section.note and not section.body
    assert "models.json" not in ctx.claimed  # so the "other results" section lists it
    odd = BenchFile("models.json", {"benchmark": "models", "summary": {"movielens": {
        "dlrm": {"auc": {"mean": 0.71, "std": None}, "gauc": {"mean": float("nan")}, "seeds": [0]},
        "din": {"auc": {"mean": 0.73, "std": 0.002}, "params": {"mean": 1234567, "std": 0.0}, "seeds": [0, 1]}}},
        "anchors": [{"dataset": "X", "model": "DIN", "auc": 0.886, "ours": "din",
                     "ours_auc": {"movielens": {"mean": 0.73, "std": 0.002}}}, {"auc": "?"}]})
    ctx = ReportContext([], 10, bench_dir=tmp_path, bench={"models.json": odd})
    section = render(ctx)
    assert section is not None and "models.json" in ctx.claimed
    assert "0.7300 ± 0.0020" in section.body and "1,234,567" in section.body and "0.8860" in section.body
    assert section.body.index(">din<") < section.body.index(">dlrm<")  # best first
    assert section.data["models.json"]["summary"]["movielens"]["dlrm"].get("gauc") is None
    assert len(section.data["models.json"]["anchors"]) == 1
