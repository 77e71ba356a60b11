"""Early stopping on the validation metric, and the artifact holding the best evaluation's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recsys import artifact as artifacts
from recsys.data.reader import ParquetReader
from recsys.distributed import checkpoint
from recsys.tasks import task_spec
from tests.conftest import train_cli


def _valid_auc(artifact_dir: Path, data: Path) -> float:
    loaded = artifacts.load(artifact_dir)
    task = task_spec(loaded.schema)
    state = task.metric_state(torch.device("cpu"))
    with torch.inference_mode():
        for batch in ParquetReader(data, "valid", 4096, schema=loaded.schema):
            state.update(loaded.model(batch), batch.labels)
    return state.compute()["auc"]


@pytest.mark.slow
def test_stops_after_patience_and_exports_the_best_epoch(small_ctr: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # min_delta 1: no AUC can improve by 1, so epoch 1 stays the best and patience 1 stops after epoch 2.
    result = train_cli(small_ctr, run, "trainer.epochs=5", "trainer.batch_size=2048", "trainer.keep_checkpoints=1",
                       "trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    assert metrics["train.best_epoch"] == 1 and metrics["train.stopped_early"] is True
    assert metrics["train.epochs"] == 2  # stopped: epochs 3-5 never ran
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [line for line in lines if line["split"] == "valid"]
    assert [line["epoch"] for line in valid] == [1, 2] and valid[0]["auc"] != valid[1]["auc"]
    assert metrics["valid.auc"] == valid[0]["auc"]
    # The exported weights are epoch 1's: they score the valid split as epoch 1 did, not as epoch 2.
    assert _valid_auc(run / "artifact", small_ctr) == pytest.approx(valid[0]["auc"], abs=1e-6)
    # keep_checkpoints 1 keeps the newest, and the best one the artifact came from.
    kept = [checkpoint.trainer_state(p)["step"] for p in checkpoint.checkpoints(run / "checkpoints")]
    assert kept == [valid[0]["step"], valid[1]["step"]]


def test_an_unknown_metric_is_refused(small_ctr: Path, tmp_path: Path) -> None:
    result = train_cli(small_ctr, tmp_path / "run", "trainer.max_steps=1", "trainer.early_stopping.metric=accuracy")
    assert result.returncode == 2
    assert "trainer.early_stopping.metric: 'accuracy' is not a metric of the ctr task; known: auc, logloss" \
        in result.stderr
