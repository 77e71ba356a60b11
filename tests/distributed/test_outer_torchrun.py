"""Under an outer torchrun (how deploy/train-multihost.sh starts every host) each process runs ``recsys train``
itself: rank 0 holds the run folder's lock, the other ranks must not try to take it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from recsys.system import free_port
from tests.conftest import REPO_ROOT


def test_outer_torchrun_job_holds_its_run_folder_once(small_ctr: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--max-restarts", "0",
            "-m", "recsys.cli.main", "-q", "train", "--model", "dlrm", "--data", str(small_ctr), "--out", str(out)]
    for setting in ("trainer.progress=false", "trainer.batch_size=256", "trainer.max_steps=4"):
        args += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]  # rank 1 taking the lock would have failed the job
    assert json.loads((out / "artifact" / "metrics.json").read_text())["train.world_size"] == 2
    assert "train --model dlrm" in json.loads((out / ".lock").read_text())["command"]  # rank 0 took it
