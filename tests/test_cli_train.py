"""``recsys train`` refuses bad input before any worker starts, with one line naming the problem, and holds
its run folder against a second command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests import interrupt
from tests.conftest import REPO_ROOT, run_cli, train_cli


@pytest.mark.parametrize(("settings", "message"), [
    (("trainer.epochz=1",), "trainer.epochz: Extra inputs are not permitted"),
    (("model.bottom_mlp=[64,32]",), "model.bottom_mlp must end with the embedding dim 16, got 32"),
    (("sharding.sharding_types=[row_wise]",), "sharding: no valid plan for 2 process(es) on cpu"),
    (("optimizer.sparse.name=adam",), "'adam' is fused by fbgemm on GPUs only"),
    (("sharding.tables.nope.sharding_types=[table_wise]",), "sharding.tables: unknown table 'nope'"),
    (("trainer.batch_size=3",), "trainer.batch_size 3 is not divisible by the 2 processes"),
])
def test_bad_config_is_one_line(settings: tuple[str, ...], message: str, small_ctr: Path, tmp_path: Path) -> None:
    result = train_cli(small_ctr, tmp_path / "run", *settings, nproc=2)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()  # nothing started


def test_missing_data_and_unknown_model(tmp_path: Path) -> None:
    result = run_cli("train", "--model", "dlrm", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "--data" in result.stderr and "directory not found" in result.stderr
    result = run_cli("train", "--model", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "unknown model 'nope'; known: " in result.stderr and "dlrm" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("model", "data", "message"), [
    ("mf", "small_ctr", "a retriever, which trains on implicit data"),
    ("dlrm", "small_implicit", "a ranking model; --data"),
])
def test_a_model_on_data_of_another_task_is_one_line(model: str, data: str, message: str,
                                                     request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A retriever on CTR data used to fail inside the first step's loss with a traceback."""
    result = train_cli(request.getfixturevalue(data), tmp_path / "run", model=model)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()  # nothing started


def test_help_explains_the_options() -> None:
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for option in ("--model", "--data", "--out", "--config", "--set", "--nproc", "--resume", "--seed"):
        assert option in result.stdout


@pytest.mark.parametrize("where", ["file", "under a file", "/proc/version/run", "/sys/kernel"])
def test_unusable_out_is_one_line(where: str, small_ctr: Path, tmp_path: Path) -> None:
    """--out an existing file, a path under a file, a file system that refuses directories, a folder root cannot
    write either."""
    (tmp_path / "file").write_text("not a run folder")
    out = {"file": tmp_path / "file", "under a file": tmp_path / "file" / "run"}.get(where, Path(where))
    result = train_cli(small_ctr, out)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(out) in lines[0], result.stderr


def test_second_train_on_one_run_folder_fails_at_once(small_ctr: Path, tmp_path: Path) -> None:
    """The first job (its elastic agent: the workers it forks take no lock) holds RUN/.lock; a second command
    on the same --out fails naming it, and the first finishes untouched."""
    out = tmp_path / "run"
    args = ["-q", "train", "--model", "dlrm", "--data", str(small_ctr), "--out", str(out), "--nproc", "2"]
    for setting in ("trainer.progress=false", "trainer.batch_size=256", "trainer.max_steps=20",
                    "trainer.log_every=1"):
        args += ["--set", setting]
    # The first job pauses itself once it holds the lock and has checked the job, before it starts its workers.
    first = subprocess.Popen(interrupt.command("recsys.cli.train:_check", "pause", *args), cwd=REPO_ROOT,
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        interrupt.wait_stopped(first)
        assert _lock_holder(out / ".lock") == first.pid
        try:
            second = train_cli(small_ctr, out, "trainer.max_steps=5")
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr[-3000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"run folder {out} is in use by pid {first.pid}" in lines[0], second.stderr
        _, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == list(range(1, 21))  # the first run's lines only, once each
    assert json.loads((out / "artifact" / "metrics.json").read_text())["train.steps"] == 20


def _lock_holder(lock: Path) -> int | None:
    try:
        return int(json.loads(lock.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.parametrize(("nproc", "readers"), [(1, 1), (2, 0), (2, 1)])
def test_bad_data_met_while_training_is_one_line(nproc: int, readers: int, small_ctr: Path, tmp_path: Path) -> None:
    """The reader's RecsysError (here: nulls in a dense column) raised in a training worker, or in a reader
    process of one (whose DataLoader would re-raise it with that process's traceback in the message)."""
    import polars as pl

    data = tmp_path / "data"
    shutil.copytree(small_ctr, data)
    [part] = sorted((data / "train").glob("*.parquet"))
    frame = pl.read_parquet(part)
    rows = pl.int_range(0, frame.height, eager=True)
    frame.with_columns(pl.when(rows >= 5000).then(None).otherwise(pl.col("I1")).alias("I1")).write_parquet(part)
    result = train_cli(data, tmp_path / "run", "trainer.batch_size=256", "trainer.shuffle=false",
                       f"trainer.num_workers={readers}", nproc=nproc)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {part}: column 'I1' has null values"], result.stderr
