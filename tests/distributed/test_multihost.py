"""Two "hosts" on this machine: two torchrun launchers of one process each, with their own node ranks, meeting at
a c10d rendezvous over TCP, as deploy/train-multihost.sh and deploy/k8s/train-job.yaml start a job. One host
lost mid-run (its launcher and its worker killed at once, right after a checkpoint) ends the job on the other
host too, without a hang; the same commands with ``--resume`` on both hosts finish it from that checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.distributed.checkpoint import latest
from recsys.system import free_port
from tests import interrupt
from tests.conftest import REPO_ROOT

SETTINGS = ("trainer.progress=false", "trainer.batch_size=256", "trainer.checkpoint_every=10", "trainer.log_every=5")


def _launcher(port: int, entry: list[str], log: Path) -> subprocess.Popen[bytes]:
    """One host's ``torchrun --nnodes 2 --nproc-per-node 1`` in a session of its own, output in ``log``."""
    args = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "multihost",
            "--max-restarts", "0", *entry]
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_listening(port: int, host: subprocess.Popen[bytes], log: Path) -> None:
    """Until the first host's agent serves the rendezvous store, so that it (not the second) hosts it."""
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if host.poll() is not None:
            pytest.fail(f"the first host exited ({host.returncode}) before serving the rendezvous:\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _job(port: int, first: list[str], second: list[str], logs: Path) -> tuple[int, int]:
    """Both hosts of one job; their exit statuses."""
    logs.mkdir()
    a = _launcher(port, first, logs / "a.log")
    try:
        _wait_listening(port, a, logs / "a.log")
        b = _launcher(port, second, logs / "b.log")
        try:
            return a.wait(timeout=900), b.wait(timeout=900)
        finally:
            if b.poll() is None:
                os.killpg(b.pid, signal.SIGKILL)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_host_lost_mid_run_resumes_on_two_hosts(small_ctr: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train = ["-q", "train", "--model", "dlrm", "--data", str(small_ctr), "--out", str(out)]
    for setting in SETTINGS:
        train += ["--set", setting]
    recsys = ["-m", "recsys.cli.main", *train]
    # host b's worker kills its agent and itself once the first checkpoint is complete on every host
    lost = [str(interrupt.SCRIPT), "--after", "recsys.distributed.checkpoint:save", "--action", "killhost", "--",
            *train]
    a, b = _job(free_port(), recsys, lost, tmp_path / "crash")
    crash_logs = (tmp_path / "crash" / "a.log").read_text()
    assert b == -signal.SIGKILL, (tmp_path / "crash" / "b.log").read_text()[-3000:]
    assert a != 0, crash_logs[-3000:]  # the surviving host fails (gloo sees its peer gone), it does not hang
    assert not (out / "artifact").exists()
    checkpoint = latest(out / "checkpoints")
    assert checkpoint is not None
    saved = json.loads((checkpoint / "trainer.json").read_text())["step"]
    assert saved == 10

    a, b = _job(free_port(), [*recsys, "--resume"], [*recsys, "--resume"], tmp_path / "resume")
    assert (a, b) == (0, 0), (tmp_path / "resume" / "a.log").read_text()[-3000:] + \
        (tmp_path / "resume" / "b.log").read_text()[-3000:]
    metrics = json.loads((out / "artifact" / "metrics.json").read_text())
    assert metrics["train.world_size"] == 2 and 0.5 < metrics["test.auc"] < 1
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in logged if line["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == metrics["train.steps"] > saved
    assert steps[:2] == [5, 10]  # the lost run's lines up to its checkpoint kept, the rest trained again
