"""A diverging run stops with one line and a non-zero exit, keeps its last good checkpoint, exports nothing, and
every JSON file it writes is strict JSON."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from recsys.distributed.checkpoint import checkpoints, latest
from tests.conftest import train_cli


def strict_json(text: str) -> Any:
    """Parse RFC 8259 JSON: Python's json module would accept bare NaN and Infinity."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def _one_line(result: Any) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.mark.parametrize("nproc", [1, 2])
def test_diverging_run_stops_and_exports_nothing(nproc: int, small_ctr: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train_cli(small_ctr, out, "optimizer.dense.lr=1e30", "optimizer.sparse.lr=1e30",
                       "trainer.batch_size=256", "trainer.log_every=10", nproc=nproc)
    line = _one_line(result)  # raised in the training worker(s): still one line
    assert "training diverged at step" in line and "no checkpoint was saved" in line and "optimizer" in line
    assert not (out / "artifact").exists() and not checkpoints(out / "checkpoints")
    logged = [strict_json(text) for text in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["split"] == "train" and logged[-1]["loss"] is None  # the diverged window: null, not NaN


def test_poisoned_batch_keeps_the_last_good_checkpoint(small_ctr: Path, tmp_path: Path) -> None:
    """Rows with an infinite dense value late in the (unshuffled) train split make the loss NaN mid-epoch:
    the run stops there, its checkpoints from before stay, and once the data is fixed it resumes from them."""
    data = tmp_path / "data"
    shutil.copytree(small_ctr, data)
    [part] = sorted((data / "train").glob("*.parquet"))
    original = pl.read_parquet(part)
    poisoned_from = 6000  # global batch 94 of 64 rows
    rows = pl.int_range(0, original.height, eager=True)
    original.with_columns(pl.when(rows >= poisoned_from).then(float("inf")).otherwise(pl.col("I1")).alias("I1")) \
        .write_parquet(part)
    out = tmp_path / "run"
    settings = ("trainer.batch_size=64", "trainer.shuffle=false", "trainer.log_every=10",
                "trainer.checkpoint_every=20", "trainer.max_steps=120")
    line = _one_line(train_cli(data, out, *settings))
    good = latest(out / "checkpoints")
    assert good is not None and f"the last good checkpoint, {good}, is kept" in line
    assert json.loads((good / "trainer.json").read_text())["step"] * 64 <= poisoned_from
    assert not (out / "artifact").exists()
    for text in (out / "metrics.jsonl").read_text().splitlines():
        strict_json(text)

    original.write_parquet(part)  # the data fixed: the run continues from its last good checkpoint
    resumed = train_cli(data, out, *settings, extra=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = strict_json((out / "artifact" / "metrics.json").read_text())
    assert metrics["train.steps"] == 120 and math.isfinite(metrics["test.logloss"])
    strict_json((out / "artifact" / "manifest.json").read_text())
