"""benchmarks/bench_embeddings.py for real on a tiny synthetic set (DLRM, full tables and every compressing
scheme at 1/16, one seed, 10 steps a run), its embeddings.json rendered by the report's bench_embeddings
section (the Pareto front of AUC against measured bytes), and the section's tolerance of odd files."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from recsys.embeddings import scheme_names
from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks" / "bench_embeddings.py"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """(work folder, out folder, embeddings.json) of a --quick run on 4,000 synthetic rows."""
    root = tmp_path_factory.mktemp("bench_embeddings")
    command = [sys.executable, str(BENCH), "--quick", "--datasets", "synthetic", "--models", "dlrm",
               "--work", str(root / "work"), "--out", str(root / "out")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "work", root / "out", json.loads((root / "out" / "embeddings.json").read_text())


@pytest.mark.long
def test_every_scheme_is_run_or_skipped_with_a_reason_and_bytes_are_measured(
        bench: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, results = bench
    assert results["benchmark"] == "embeddings" and results["quick"] is True and not results["failed"]
    assert results["machine"]["cpu"] and results["ratios"] == [16.0] and results["seeds"] == [0]
    runs = {r["label"]: r for r in results["runs"]}
    compressing = [s for s in scheme_names() if s != "standard"]
    for scheme in compressing:  # each registered scheme: trained, or skipped with the reason
        assert any(r["scheme"] == scheme for r in runs.values()) or results["skipped_schemes"].get(scheme), scheme
    assert {"full", "hash", "qr-mult", "qr-add", "unified"} <= set(runs)
    full = runs["full"]
    for label, run in runs.items():
        artifact_metrics = json.loads((Path(run["artifact"]) / "metrics.json").read_text())
        assert run["embedding_bytes"] == artifact_metrics["embedding_bytes"] > 0  # measured, not assumed
        assert run["embedding_bytes_full"] == full["embedding_bytes"]  # the same full size for every scheme
        assert 0 < run["auc"] < 1 and run["train_samples_per_s"] > 0
        assert run["auc"] == pytest.approx(run["trainer_test_auc"], abs=1e-4)
        if label != "full":
            # the weights a budget counts (dsl keeps its masked table dense: its bytes are a full table's)
            assert run["embedding_params"] < full["embedding_params"], label
            assert run["embedding_bytes"] <= full["embedding_bytes"], label
            assert "embedding.ratio=16" in run["command"] and f"embedding.scheme={run['scheme']}" in run["command"]
    assert "embedding.operation=mult" in runs["qr-mult"]["command"]
    # hash holds ceil(rows / 16) rows a table: 1/16 of full within a row per table
    tables = full["embedding_bytes"] / 16
    assert tables <= runs["hash"]["embedding_bytes"] < tables * 1.5
    rows = {r["label"]: r for r in results["summary"]}
    assert rows["full"]["auc_vs_full"] == 0 and rows["full"]["speed_vs_full"] == 1
    cheapest = min(rows.values(), key=lambda r: (r["embedding_bytes"]["mean"], -r["auc"]["mean"]))
    best = max(rows.values(), key=lambda r: r["auc"]["mean"])
    assert cheapest["pareto"] and best["pareto"]
    for row in rows.values():  # on the front exactly when nothing is both smaller-or-equal and better
        dominated = any(o is not row and o["embedding_bytes"]["mean"] <= row["embedding_bytes"]["mean"]
                        and o["auc"]["mean"] > row["auc"]["mean"] for o in rows.values())
        assert row["pareto"] is not dominated, row["label"]
    kinds = {(v["variant"], v["kind"]) for v in results["claims"]["verdicts"]}
    assert {("qr-mult", "same_ratio"), ("qr-add", "same_ratio")} <= kinds
    text = (out / "embeddings.md").read_text()
    assert "Smoke run" in text and f"{rows['qr-add']['auc']['mean']:.4f}" in text and "## The claim" in text


def test_report_plots_auc_against_bytes_and_claims_the_file(bench: tuple[Path, Path, dict[str, Any]],
                                                            tmp_path: Path) -> None:
    from recsys.report import ReportOptions, build_report

    _, out, results = bench
    artifact = Path(next(r["artifact"] for r in results["runs"] if r["label"] == "hash"))
    paths = build_report(ReportOptions(artifacts=[artifact], out=tmp_path / "report.html", bench=out, progress=False))
    report = json.loads(paths.json.read_text())
    page = paths.html.read_text()
    section = report["sections"]["bench_embeddings"]["data"]["embeddings.json"]
    shown = {p["label"]: p for p in section["points"]}
    for row in results["summary"]:
        assert shown[row["label"]]["auc"]["mean"] == row["auc"]["mean"]
        assert shown[row["label"]]["embedding_bytes"]["mean"] == row["embedding_bytes"]["mean"]
        assert shown[row["label"]]["pareto"] == row["pareto"], row["label"]
        assert f"{row['auc']['mean']:.4f}" in page
    assert section["claims"] == [v["statement"] for v in results["claims"]["verdicts"]]
    assert all(html.escape(s) in page for s in section["claims"])
    assert "AUC vs embedding bytes" in page and "smoke run" in page
    assert "embeddings.json" not in report["sections"]["bench_other"]["data"].get("skipped", {})
    # the generic comparison leaves the file to this section: only the report's own artifact is a point
    assert all(p["source"] == "this report" for p in report["sections"]["comparison"]["data"].get("points", []))


def test_without_embeddings_json_the_section_is_left_out(tmp_path: Path) -> None:
    from recsys.report.context import ReportContext
    from recsys.report.sections.bench_embeddings import render

    assert render(ReportContext([], 10)) is None
    assert render(ReportContext([], 10, bench_dir=tmp_path)) is None


def test_a_malformed_embeddings_json_is_a_note_and_the_front_is_recomputed(tmp_path: Path) -> None:
    from recsys.report.context import BenchFile, ReportContext
    from recsys.report.sections.bench_embeddings import render

    bad = BenchFile("embeddings.json", {"benchmark": "embeddings", "summary": {"not": "a list"}, "claims": 3})
    ctx = ReportContext([], 10, bench_dir=tmp_path, bench={"embeddings.json": bad})
    section = render(ctx)
    assert section is not None and "not shown" in section.note and not section.body
    assert "embeddings.json" not in ctx.claimed  # so the "other results" section lists it

    def row(label: str, ratio: float, auc: float, size: float) -> dict[str, Any]:
        return {"dataset": "movielens", "model": "dlrm", "label": label, "ratio": ratio, "seeds": [0, 1],
                "auc": {"mean": auc, "std": 0.001}, "embedding_bytes": {"mean": size, "std": 0.0},
                "train_samples_per_s": {"mean": 1000.0, "std": None}}
    odd = BenchFile("embeddings.json", {"benchmark": "embeddings", "summary": [
        row("full", 1, 0.70, 4e6), row("hash", 16, 0.66, 2.5e5), row("qr-mult", 16, 0.68, 3e5),
        row("unified", 16, 0.65, 2.5e5), {"label": "broken", "ratio": 4, "auc": {"mean": "x"}}, "junk"],
        "serving": {"runs": [{"dataset": "movielens", "model": "dlrm", "seed": 0, "precisions": {
            "int8": {"auc": 0.699, "auc_loss": 0.001, "lookup_ms_per_1000": 0.5, "lookup_speedup": 2.5}}},
            {"error": "boom"}]}})
    ctx = ReportContext([], 10, bench_dir=tmp_path, bench={"embeddings.json": odd})
    section = render(ctx)
    assert section is not None and "embeddings.json" in ctx.claimed
    points = {p["label"]: p for p in section.data["embeddings.json"]["points"]}
    assert set(points) == {"full", "hash", "qr-mult", "unified"}  # the broken rows are dropped
    assert {k for k, p in points.items() if p["pareto"]} == {"full", "hash", "qr-mult"}  # unified is dominated
    assert points["hash"]["smaller"] == pytest.approx(16.0) and points["qr-mult"]["auc_vs_full"] == pytest.approx(-0.02)
    assert "0.6800 ± 0.0010" in section.body and "+0.0010" in section.body and "2.50×" in section.body
    assert len(section.data["embeddings.json"]["serving"]) == 1
