"""``--resume`` continues the run as it was configured: the saved config.yaml is the base, only operational keys
may change, and checkpoints and artifacts refuse a config or weights changed after they were written."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from recsys.data.reader import ParquetReader
from tests import interrupt
from tests.conftest import run_cli, train_cli

SHORT = ("trainer.batch_size=256", "trainer.max_steps=6", "trainer.checkpoint_every=3")


@pytest.fixture(scope="module")
def finished(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    result = train_cli(small_ctr, out, *SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(e in lines[0] for e in expected), result.stderr


def test_readme_resume_continues_with_the_saved_config(small_ctr: Path, tmp_path: Path) -> None:
    """README: train with --set trainer.epochs=2, crash, then resume with no --set: both epochs are trained."""
    out = tmp_path / "run"
    args = ["-q", "train", "--model", "dlrm", "--data", str(small_ctr), "--out", str(out)]
    for setting in ("trainer.epochs=2", "trainer.batch_size=128", "trainer.checkpoint_every=10",
                    "trainer.progress=false"):
        args += ["--set", setting]
    crashed = interrupt.run("recsys.distributed.checkpoint:save", "killpg", *args)  # right after the first checkpoint
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert not (out / "artifact").exists(), "killed too late: the run had finished"

    resumed = run_cli("-q", "train", "--model", "dlrm", "--data", str(small_ctr), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((out / "artifact" / "metrics.json").read_text())
    per_epoch = ParquetReader(small_ctr, "train", batch_size=128, drop_last=True).num_batches
    assert metrics["train.epochs"] == 2 and metrics["train.steps"] == 2 * per_epoch
    assert yaml.safe_load((out / "config.yaml").read_text())["trainer"]["batch_size"] == 128


@pytest.mark.parametrize(("flags", "expected"), [
    (("--set", "model.interaction=cat"), ("model.interaction", "'dot'", "'cat'")),
    (("--set", "optimizer.dense.lr=0.01"), ("optimizer.dense.lr", "0.001", "0.01")),
    (("--set", "trainer.batch_size=128"), ("trainer.batch_size", "256", "128")),
    (("--seed", "7"), ("seed", "0", "7")),
])
def test_resume_refuses_to_change_what_was_trained(run: Path, small_ctr: Path, flags: tuple[str, ...],
                                                   expected: tuple[str, ...]) -> None:
    before = (run / "artifact" / "manifest.json").read_text()
    _refused(train_cli(small_ctr, run, *SHORT, extra=("--resume", *flags)), "--resume:", "step-000000006",
             *expected)
    assert (run / "artifact" / "manifest.json").read_text() == before
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["interaction"] == "dot"


def test_resume_refuses_a_config_yaml_edited_after_the_checkpoint(run: Path, small_ctr: Path) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["interaction"] = "cat"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _refused(train_cli(small_ctr, run, extra=("--resume",)), "model.interaction", "'dot'", "'cat'")


def test_resume_may_change_operational_keys(run: Path, small_ctr: Path) -> None:
    resumed = train_cli(small_ctr, run, "trainer.max_steps=9", "trainer.log_every=1", extra=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "artifact" / "metrics.json").read_text())["train.steps"] == 9
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 9 and saved["trainer"]["batch_size"] == 256


def test_resume_refuses_other_data(run: Path, small_ctr: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(small_ctr, other)
    schema = json.loads((other / "schema.json").read_text())
    schema["dense"][0]["mean"] = 1.5
    (other / "schema.json").write_text(json.dumps(schema))
    _refused(train_cli(other, run, *SHORT, extra=("--resume",)), f"--data {other}", "schema differs")


@pytest.mark.parametrize("name", ["config.yaml", "schema.json", "weights.safetensors"])
def test_artifact_file_changed_after_export_is_refused(finished: Path, tmp_path: Path, name: str) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(finished / "artifact", artifact)
    if name == "config.yaml":  # the attack of the issue: shapes still match, scores are garbage
        config = yaml.safe_load((artifact / name).read_text())
        config["model"]["interaction"] = "cat"
        (artifact / name).write_text(yaml.safe_dump(config))
    elif name == "schema.json":
        schema = json.loads((artifact / name).read_text())
        schema["dense"][0]["mean"] += 1.0
        (artifact / name).write_text(json.dumps(schema))
    else:
        data = bytearray((artifact / name).read_bytes())
        data[-4] ^= 0x01  # a low bit of the last weight
        (artifact / name).write_bytes(bytes(data))
    result = run_cli("report", "--artifact", str(artifact), "--out", str(tmp_path / "report.html"))
    _refused(result, str(artifact / name), "changed after export")
