"""A prepare killed with SIGKILL half way leaves nothing visible, and the next run cleans up after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from recsys.data.synth import CtrConfig, write_criteo_tsv
from tests.conftest import REPO_ROOT, run_cli


def test_sigkill_mid_run_leaves_no_output(tmp_path: Path) -> None:
    write_criteo_tsv(CtrConfig(rows=300_000, seed=2), tmp_path / "raw", overwrite=False)
    out = tmp_path / "prepared"
    job = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli.main", "data", "prepare", "--format", "criteo",
         "--input", str(tmp_path / "raw"), "--out", str(out)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    # Kill it once it has written part of its work (the first spooled part).
    while not list(tmp_path.glob(".prepared.tmp-*/_spool/part-*.parquet")):
        assert job.poll() is None, "prepare ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = list(tmp_path.glob(".prepared.tmp-*"))
    assert len(leftovers) == 1, "the killed run's work folder is hidden beside the output"

    finished = run_cli("data", "prepare", "--format", "criteo", "--input", str(tmp_path / "raw"), "--out", str(out))
    assert finished.returncode == 0, finished.stderr
    assert (out / "stats.json").is_file() and (out / "schema.json").is_file()
    assert not leftovers[0].exists(), "the next run removed the killed run's folder"
