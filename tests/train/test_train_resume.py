"""Kill -9 in the middle of an epoch, resume, and end where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from recsys.distributed.checkpoint import latest
from tests import interrupt
from tests.conftest import train_cli

SETTINGS = ("trainer.batch_size=64", "trainer.epochs=3", "trainer.checkpoint_every=25", "trainer.log_every=25")


def _test_metrics(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k.startswith("test.")}


def _crash_after_first_checkpoint(data: Path, out: Path) -> None:
    """Train, killed (with any helper process it started) the moment its first checkpoint is complete."""
    args = ["-q", "train", "--model", "dlrm", "--data", str(data), "--out", str(out)]
    for setting in ("trainer.progress=false", *SETTINGS):
        args += ["--set", setting]
    job = interrupt.run("recsys.distributed.checkpoint:save", "killpg", *args)
    assert job.returncode == -signal.SIGKILL, job.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train_cli(small_ctr, out, *SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return _test_metrics(out)


@pytest.mark.slow
@pytest.mark.long
def test_killed_run_resumes_to_the_same_metrics(small_ctr: Path, tmp_path: Path,
                                                uninterrupted: dict[str, float]) -> None:
    out = tmp_path / "run"
    _crash_after_first_checkpoint(small_ctr, out)
    assert not (out / "artifact").exists(), "killed too late: the run had finished"
    steps = json.loads((latest(out / "checkpoints") / "trainer.json").read_text())  # type: ignore[operator]
    assert 0 < steps["step_in_epoch"] or steps["epoch"] > 0

    again = train_cli(small_ctr, out, *SETTINGS)  # without --resume: refused, nothing overwritten
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = train_cli(small_ctr, out, *SETTINGS, extra=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _test_metrics(out) == pytest.approx(uninterrupted, rel=1e-6, abs=1e-7)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [line["step"] for line in logged if line["split"] == "train"]
    assert train_steps == sorted(set(train_steps))  # the interrupted run's extra lines were dropped


@pytest.mark.slow
def test_resume_with_another_process_count(small_ctr: Path, tmp_path: Path,
                                           uninterrupted: dict[str, float]) -> None:
    out = tmp_path / "run"
    _crash_after_first_checkpoint(small_ctr, out)
    resumed = train_cli(small_ctr, out, *SETTINGS, nproc=2, extra=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((out / "artifact" / "metrics.json").read_text())
    assert metrics["train.world_size"] == 2
    assert metrics["train.steps"] == json.loads((latest(out / "checkpoints") / "trainer.json").read_text())["step"]
    # The same batches in the same order; only float summation order differs.
    assert metrics["test.auc"] == pytest.approx(uninterrupted["test.auc"], abs=0.01)


def test_half_written_checkpoints_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    (directory / ".tmp-step-000000300").mkdir(parents=True)  # killed while writing
    (directory / "step-000000200").mkdir()  # renamed without its trainer state: not complete
    (directory / "step-000000100").mkdir()
    (directory / "step-000000100" / "trainer.json").write_text("{}")
    assert latest(directory) == directory / "step-000000100"
    assert latest(tmp_path / "absent") is None
