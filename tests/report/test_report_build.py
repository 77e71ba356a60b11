"""``recsys report`` on real trained artifacts: every section, the artifacts' own numbers, a self-contained
page that renders in headless Chromium without console errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, run_cli, train_cli

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = {"metadata", "metrics", "curves", "calibration", "scores", "segments", "training", "bench_train",
            "bench_serve", "comparison", "bench_other"}
SCORED = ("curves", "calibration", "scores", "segments")
SERVE = {"benchmark": "serve", "machine": {"cpu": "test"}, "runs": [
    {"precision": p, "candidates": c, "concurrency": 1, "p50_ms": 2.0 * c / 100, "p95_ms": 3.0, "p99_ms": 4.0,
     "throughput_rps": 400.0, "stages_ms": {"fetch": 0.5, "tensors": 0.2, "model": 1.0, "serialize": 0.3}}
    for p in ("fp32", "int8") for c in (100, 500)], "floor": {"http_ms": 0.3}, "naive": {"p50_ms": 9.0}}


@pytest.fixture(scope="module")
def runs(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two 30-step DLRM artifacts trained with different seeds."""
    root = tmp_path_factory.mktemp("report_runs")
    for seed in (0, 1):
        result = train_cli(small_ctr, root / f"seed{seed}", "trainer.max_steps=30", extra=("--seed", str(seed)))
        assert result.returncode == 0, result.stderr[-3000:]
    return [root / "seed0" / "artifact", root / "seed1" / "artifact"]


@pytest.fixture(scope="module")
def built(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """The report of both artifacts through the CLI (data from their manifests), with a bench folder holding
    the real train.json, a serve.json, a file nothing renders and one that is not JSON."""
    root = tmp_path_factory.mktemp("report")
    bench = root / "bench"
    bench.mkdir()
    shutil.copy(REPO_ROOT / "benchmarks" / "results" / "train.json", bench / "train.json")
    (bench / "serve.json").write_text(json.dumps(SERVE))
    (bench / "unknown.json").write_text(json.dumps({"benchmark": "future", "x": [1, 2]}))
    (bench / "broken.json").write_text("{not json")
    out = root / "out" / "report.html"
    result = run_cli("report", "--artifact", str(runs[0]), "--artifact", str(runs[1]), "--bench", str(bench),
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html", "report.json"]  # no temp files left
    return out, json.loads(out.with_suffix(".json").read_text()), out.read_text()


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


def test_every_section_is_present_with_finite_numbers(built: tuple[Path, dict[str, Any], str]) -> None:
    _, report, page = built
    sections = report["sections"]
    assert set(sections) == SECTIONS
    labels = [a["label"] for a in report["artifacts"]]
    assert labels == ["seed0", "seed1"]
    for name in SECTIONS - {"bench_other"}:
        assert _numbers(sections[name]["data"]), name
        assert f'<section id="{name}">' in page
    for name in SCORED:
        assert all(label in str(sections[name]["data"]) for label in labels), name
    for label in labels:
        curves = sections["curves"]["data"]["artifacts"][label]
        assert 0.5 < curves["auc"] <= 1 and 0 < curves["average_precision"] <= 1
        assert len(sections["calibration"]["data"]["artifacts"][label]["mean_predicted"]) >= 5
        assert sections["training"]["data"]["artifacts"][label]["final_train_loss"] > 0
    segments = next(iter(sections["segments"]["data"].values()))
    groups = {entry["group"] for entry in segments}
    assert any("user activity" in g for g in groups) and any("item popularity" in g for g in groups)
    assert any("new vs returning" in g for g in groups)
    activity = [e for e in segments if "user activity" in e["group"]]
    assert sum(e["rows"] for e in activity) == sections["curves"]["data"]["artifacts"]["seed0"]["rows"]
    assert sections["bench_train"]["data"]["train.json"]["runs"]
    assert len(sections["bench_serve"]["data"]["serve.json"]["runs"]) == 4
    assert set(sections["bench_other"]["data"]["skipped"]) == {"unknown.json", "broken.json"}
    assert len(sections["comparison"]["data"]["points"]) == 2  # no results file has any: the artifacts
    # JSON forbids NaN and the report writes none: every number is finite.
    assert all(n == n and abs(n) != float("inf") for n in _numbers(report))


def test_report_numbers_are_the_artifacts_metrics(runs: list[Path], built: tuple[Path, dict[str, Any], str]) -> None:
    _, report, page = built
    for path, label in zip(runs, ("seed0", "seed1"), strict=True):
        metrics = json.loads((path / "metrics.json").read_text())
        shown = report["sections"]["metrics"]["data"]["artifacts"][label]
        for key in ("test.auc", "test.logloss", "test.ne", "test.calibration", "valid.auc", "test.bayes_auc"):
            assert shown[key] == metrics[key], key
        assert f"{metrics['test.auc']:.4f}" in page
        # Rescoring the whole test split with the artifact's model reproduces the trainer's AUC.
        rescored = report["sections"]["curves"]["data"]["artifacts"][label]
        assert rescored["rows"] == metrics["test.rows"]
        assert rescored["auc"] == pytest.approx(metrics["test.auc"], abs=1e-4)
    assert report["sections"]["metrics"]["data"]["best"]["test.auc"] in ("seed0", "seed1")
    assert page.count("<b>") >= 4  # the best of two is bolded


def test_page_is_self_contained(built: tuple[Path, dict[str, Any], str]) -> None:
    _, _, page = built
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page and not re.search(r"<script[^>]+src", page) and "@import" not in page
    assert page.count('src="data:image/png;base64,') >= 8


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           *args], capture_output=True, text=True, timeout=120)


def test_page_renders_in_headless_chromium(built: tuple[Path, dict[str, Any], str], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium not found: apt-get install chromium")
    out, _, _ = built
    shot = tmp_path / "shot.png"
    result = _chromium(f"--screenshot={shot}", "--window-size=1280,4000", out.as_uri(), profile=tmp_path / "p1")
    assert shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        colours = image.convert("RGB").resize((64, 200)).getcolors(64 * 200)
    assert shot.stat().st_size > 50_000 and colours is not None and len(colours) > 50  # not a blank page
    dom = _chromium("--dump-dom", out.as_uri(), profile=tmp_path / "p2")
    assert 'data-rendered="ok"' in dom.stdout  # the page's script ran to its end
    assert "11 sections" in dom.stdout
    for run in (result, dom):  # console messages: script errors, blocked loads (the page's CSP), logs
        console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
        assert not console, console


def test_without_data_sections_say_why_and_max_rows_caps(runs: list[Path], tmp_path: Path) -> None:
    from recsys.report import ReportOptions, build_report

    orphan = tmp_path / "orphan" / "artifact"
    shutil.copytree(runs[0], orphan)
    manifest = json.loads((orphan / "manifest.json").read_text())
    (orphan / "manifest.json").write_text(json.dumps({**manifest, "data_dir": str(tmp_path / "moved")}))
    paths = build_report(ReportOptions([runs[0], orphan], tmp_path / "r.html", max_rows=500,
                                       progress=False))
    report = json.loads(paths.json.read_text())
    sections = report["sections"]
    assert sections["curves"]["data"]["artifacts"]["seed0"]["rows"] == 500
    assert "orphan" not in sections["curves"]["data"]["artifacts"]
    for name in ("curves", "calibration", "scores", "segments"):
        assert "--max-rows 500" in sections[name]["note"] and "first 500 of" in sections[name]["note"]
        assert f"data_dir {tmp_path / 'moved'} is not there" in sections[name]["note"], name
    metrics = json.loads((orphan / "metrics.json").read_text())
    assert sections["metrics"]["data"]["artifacts"]["orphan"]["test.auc"] == metrics["test.auc"]
    assert "bench_train" not in sections  # no --bench: no benchmark sections


def test_an_undefined_metric_is_shown_as_missing(runs: list[Path], tmp_path: Path) -> None:
    """metrics.json writes a metric that is not a number (the AUC of a one-class split) as null: the report shows
    it as missing, with no gap to the Bayes AUC, instead of failing."""
    one_class = tmp_path / "one_class" / "artifact"
    shutil.copytree(runs[0], one_class)
    metrics = json.loads((one_class / "metrics.json").read_text())
    assert "test.bayes_auc" in metrics  # synthetic data: the gap row is computed for the other artifact
    (one_class / "metrics.json").write_text(json.dumps({**metrics, "test.auc": None}))
    out = tmp_path / "r.html"
    result = run_cli("report", "--artifact", str(runs[0]), "--artifact", str(one_class), "--out", str(out),
                     "--max-rows", "500")
    assert result.returncode == 0, result.stderr[-3000:]
    shown = json.loads(out.with_suffix(".json").read_text())["sections"]["metrics"]["data"]["artifacts"]
    assert shown["one_class"]["test.auc"] is None and "test.bayes_gap" not in shown["one_class"]
    assert shown["seed0"]["test.bayes_gap"] > 0
