"""`prepare` and `synth` outputs: one job at a time per --out (a lock naming the holder), and one-line errors
for an --out that cannot be written or a flag the schema cannot hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from recsys.data.synth import CtrConfig, write_criteo_tsv
from recsys.system import exclusive_lock
from tests import interrupt
from tests.conftest import REPO_ROOT, run_cli


def _one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-3000:]
    assert all(e in lines[0] for e in expected), lines[0]
    return lines[0]


def test_a_second_prepare_into_a_busy_output_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    rows = 5_000
    write_criteo_tsv(CtrConfig(rows=rows, seed=4), tmp_path / "raw", overwrite=False)
    out = tmp_path / "prepared"
    args = ["data", "prepare", "--format", "criteo", "--input", str(tmp_path / "raw"), "--out", str(out)]
    # The first job pauses itself in the middle of its work (rows spooled, lock held) until the second has run.
    first = subprocess.Popen(interrupt.command("recsys.data.pipeline:_spool_parts", "pause", "-q", *args),
                             cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        interrupt.wait_stopped(first)
        assert (tmp_path / f".prepared.tmp-{first.pid}").is_dir()  # its work folder, while it runs
        second = run_cli(*args)
    finally:
        if first.returncode is None:
            os.kill(first.pid, signal.SIGCONT)
    _, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors[-3000:]
    _one_line_error(second, f"output {out} is in use by pid {first.pid}", "data prepare")

    stats = json.loads((out / "stats.json").read_text())  # the first job's data set, whole
    assert stats["rows_read"] == rows and stats["bad_rows"] == 0
    assert sum(split["rows"] for split in stats["splits"].values()) == rows
    assert not list(tmp_path.glob(".prepared.tmp-*")) and not list(tmp_path.glob(".prepared.old-*"))


def test_synth_into_a_busy_output_fails_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    with exclusive_lock(tmp_path / ".raw.lock", f"output {out}"):  # as a running prepare or synth holds it
        for extra in ([], ["--format", "criteo-tsv"]):
            result = run_cli("data", "synth", "--kind", "ctr", "--rows", "500", "--out", str(out), *extra)
            _one_line_error(result, f"output {out} is in use by pid {os.getpid()}")
    assert not out.exists()


@pytest.mark.parametrize("command", ["prepare", "synth", "synth-tsv"])
def test_an_out_that_cannot_be_written_is_one_line(tmp_path: Path, command: str) -> None:
    write_criteo_tsv(CtrConfig(rows=300, seed=1), tmp_path / "raw", overwrite=False)
    args = {
        "prepare": ["data", "prepare", "--format", "criteo", "--input", str(tmp_path / "raw")],
        "synth": ["data", "synth", "--kind", "ctr", "--rows", "300"],
        "synth-tsv": ["data", "synth", "--kind", "ctr", "--rows", "300", "--format", "criteo-tsv"],
    }[command]
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder\n")
    _one_line_error(run_cli(*args, "--out", str(in_the_way / "out")), f"{in_the_way} is a file, not a folder")
    _one_line_error(run_cli(*args, "--out", str(in_the_way), "--overwrite"), f"--out {in_the_way}: is a file")
    assert in_the_way.read_text() == "not a folder\n"
    # Nothing can be created in /proc, even by root (chmod would not stop the root that runs the tests).
    _one_line_error(run_cli(*args, "--out", "/proc/recsys-out"), "/proc/recsys-out")
    _one_line_error(run_cli(*args, "--out", "/proc/recsys-out/data"), "/proc/recsys-out/data")


def test_synth_refuses_an_embedding_dim_the_schema_cannot_hold(tmp_path: Path) -> None:
    for kind in ("ctr", "implicit"):
        result = run_cli("data", "synth", "--kind", kind, "--rows", "300", "--embedding-dim", "100000",
                         "--out", str(tmp_path / kind))
        _one_line_error(result, "--embedding-dim 100000", "8192")
        assert not (tmp_path / kind).exists()
