"""DLRM on the demo's synthetic data comes within 0.01 of the generator's Bayes-optimal test AUC.

The same data (``recsys data synth --kind ctr --rows 3000000``, seed 0) and config
(``configs/dlrm.yaml``) as ``make demo``; a few minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_cli

DEMO_ROWS = 3_000_000


@pytest.mark.slow
def test_dlrm_reaches_the_bayes_auc_on_the_demo_data(tmp_path: Path) -> None:
    data, run = tmp_path / "ctr", tmp_path / "run"
    made = run_cli("-q", "data", "synth", "--kind", "ctr", "--rows", str(DEMO_ROWS), "--out", str(data))
    assert made.returncode == 0, made.stderr[-2000:]
    trained = run_cli("-q", "train", "--model", "dlrm", "--data", str(data), "--out", str(run),
                      "--config", str(REPO_ROOT / "configs" / "dlrm.yaml"), "--set", "trainer.progress=false",
                      timeout=1200)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    bayes = json.loads((data / "stats.json").read_text())["splits_bayes"]["test"]["auc"]
    assert metrics["test.bayes_auc"] == bayes
    assert metrics["test.auc"] <= bayes + 0.002  # nothing beats the truth by more than noise
    assert metrics["test.auc"] >= bayes - 0.01, (metrics["test.auc"], bayes)
