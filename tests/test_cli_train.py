"""``recsys train`` refuses bad input before any worker starts, with one line naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, train_cli


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
    assert result.returncode == 2 and "unknown model 'nope'; known: dlrm" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_explains_the_options() -> None:
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for option in ("--model", "--data", "--out", "--config", "--set", "--nproc", "--resume", "--seed"):
        assert option in result.stdout
