"""``recsys report`` on trained retrievers: the Retrieval section (Recall/NDCG@K rescored by full ranking, the split
protocol), beside a ranking model, and the row-scoring sections staying out of a retrievers-only report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from recsys.data.pipeline import PrepareOptions
from recsys.data.synth import ImplicitConfig, synth_implicit
from recsys.report import ReportOptions, build_report
from tests.conftest import REPO_ROOT, train_cli

MF = ("--config", str(REPO_ROOT / "configs" / "mf.yaml"))
KEYS = [f"{name}@{k}" for name in ("recall", "ndcg", "hr") for k in (5, 10, 20, 50)] + ["mrr"]


@pytest.fixture(scope="module")
def runs(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mf on a leave-one-out synthetic implicit set; a copy of its run whose manifest names data that is gone;
    a 20-step DLRM."""
    root = tmp_path_factory.mktemp("retrieval_runs")
    synth_implicit(ImplicitConfig(rows=6000, seed=1), root / "data", PrepareOptions(split="loo", seed=1))
    result = train_cli(root / "data", root / "loo", "trainer.max_steps=40", model="mf", extra=MF)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(root / "loo", root / "gone")
    manifest = root / "gone" / "artifact" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "data_dir": str(root / "deleted")}))
    result = train_cli(small_ctr, root / "dlrm", "trainer.max_steps=20")
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: root / name / "artifact" for name in ("loo", "gone", "dlrm")}


def _report(tmp_path: Path, *artifacts: Path) -> tuple[dict[str, Any], str]:
    """The report built in this process (``recsys report`` is a thin wrapper of ``build_report``)."""
    paths = build_report(ReportOptions(artifacts=list(artifacts), out=tmp_path / "report.html", progress=False))
    return json.loads(paths.json.read_text()), paths.html.read_text()


def test_retrievers_only(runs: dict[str, Path], tmp_path: Path) -> None:
    report, page = _report(tmp_path, runs["loo"], runs["gone"])
    sections = report["sections"]
    # Nothing scores rows: the ROC, calibration, score and segment sections stay out rather than break.
    assert set(sections) == {"metadata", "metrics", "retrieval", "training", "comparison"}
    retrieval = sections["retrieval"]["data"]
    assert retrieval["cutoffs"] == [5, 10, 20, 50]
    loo, gone = retrieval["artifacts"]["loo"], retrieval["artifacts"]["gone"]
    trained = json.loads((runs["loo"] / "metrics.json").read_text())
    # Ranked again from the exported model, the test metrics are the trainer's.
    assert loo["source"] == "rescored from the artifact"
    for key in KEYS:
        assert loo["metrics"][key] == pytest.approx(trained[f"test.{key}"], abs=1e-9), key
    assert loo["metrics"]["users"] == trained["test.users"] > 0
    recalls = [loo["metrics"][f"recall@{k}"] for k in (5, 10, 20, 50)]
    assert recalls == sorted(recalls) and 0 < recalls[-1] <= 1
    assert loo["protocol"].startswith("leave-one-out split by timestamp")
    # Its data gone, the other shows what metrics.json says, and says so.
    assert gone["source"].startswith("metrics.json") and gone["protocol"] == "split unknown (no data)"
    assert gone["metrics"]["recall@20"] == json.loads((runs["gone"] / "metrics.json").read_text())["test.recall@20"]
    assert "full ranking" in sections["retrieval"]["note"] and "train items" in sections["retrieval"]["note"]
    assert '<section id="retrieval">' in page and "leave-one-out split by timestamp" in page
    training = sections["training"]["data"]["artifacts"]["loo"]
    assert training["valid_primary"]["metric"] == "recall@20" and 0 < training["final_valid"] <= 1
    assert sections["metrics"]["data"]["artifacts"]["loo"]["test.recall@20"] == trained["test.recall@20"]


def test_retriever_beside_a_ranking_model(runs: dict[str, Path], tmp_path: Path) -> None:
    report, _ = _report(tmp_path, runs["dlrm"], runs["loo"])
    sections = report["sections"]
    assert {"curves", "calibration", "scores", "segments", "retrieval"} <= set(sections)
    assert list(sections["retrieval"]["data"]["artifacts"]) == ["loo"]
    assert list(sections["curves"]["data"]["artifacts"]) == ["dlrm"]  # the retriever is not scored row by row
    assert "loo: a retriever" in sections["curves"]["note"]
    assert 0.5 < sections["curves"]["data"]["artifacts"]["dlrm"]["auc"] <= 1
    protocols = sections["metadata"]["data"]["split_protocols"]
    assert sorted(p.split(" split")[0] for p in protocols.values()) == ["leave-one-out", "random"]
