"""The OpenMP thread policy: CPUs counted as the process may use them, the user's settings kept, and training
run with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.distributed.env import worker_threads
from recsys.system import available_cpus, cpu_share, governed_threads, thread_policy
from tests.conftest import REPO_ROOT, run_python, train_cli

POLICY_VARS = ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in POLICY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _in_fresh_process(code: str, cpus: set[int]) -> str:
    """``code``'s stdout, run with the affinity mask ``cpus`` (as taskset or a cpuset would set it)."""
    prelude = f"import os; os.sched_setaffinity(0, {sorted(cpus)!r}); "
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    done = subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


def test_threads_share_out_the_available_cpus(clean_env: pytest.MonkeyPatch) -> None:
    cpus = available_cpus()
    assert cpus == min(len(os.sched_getaffinity(0)), cpus)
    chosen = thread_policy(2)
    assert chosen == {"OMP_NUM_THREADS": str(max(1, cpus // 2))}
    assert os.environ["OMP_NUM_THREADS"] == chosen["OMP_NUM_THREADS"]


def test_the_users_settings_win(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OMP_NUM_THREADS", "7")
    assert thread_policy(1) == {}
    assert os.environ["OMP_NUM_THREADS"] == "7"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one of them")
def test_a_pinned_process_counts_only_its_cpus() -> None:
    one = min(os.sched_getaffinity(0))
    code = ("from recsys.system import available_cpus, cpu_share, governed_threads, thread_policy; "
            "print(available_cpus(), thread_policy(1)['OMP_NUM_THREADS'])")
    assert _in_fresh_process(code, {one}).split() == ["1", "1"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one of them")
def test_training_pinned_to_one_cpu_runs_one_thread(small_ctr: Path, tmp_path: Path) -> None:
    """`recsys train` on one CPU of several: torch gets one thread, not the machine's core count."""
    one = min(os.sched_getaffinity(0))
    out = tmp_path / "run"
    code = (f"import sys; sys.argv = ['recsys', '-q', 'train', '--model', 'dlrm', '--data', {str(small_ctr)!r}, "
            f"'--out', {str(out)!r}, '--set', 'trainer.max_steps=2', '--set', 'trainer.progress=false']; "
            "from recsys.cli.main import main; main()")
    _in_fresh_process(code, {one})
    assert json.loads((out / "artifact" / "metrics.json").read_text())["train.threads"] == 1


def test_training_uses_every_available_cpu_by_default(small_ctr: Path, tmp_path: Path,
                                                      clean_env: pytest.MonkeyPatch) -> None:
    done = train_cli(small_ctr, tmp_path / "run", "trainer.max_steps=2")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "run" / "artifact" / "metrics.json").read_text())
    assert metrics["train.threads"] == available_cpus()


def test_training_keeps_the_users_thread_count(small_ctr: Path, tmp_path: Path,
                                               clean_env: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS=1 (say, two jobs sharing two cores) is what the job runs with; it used to be replaced by
    the core count, and two jobs of two OpenMP threads on two cores spun on each other."""
    done = train_cli(small_ctr, tmp_path / "run", "trainer.max_steps=2", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "artifact" / "metrics.json").read_text())["train.threads"] == 1


@pytest.mark.parametrize(("value", "local", "expected"), [
    ("3", 1, 3), ("1", 1, 1), ("3", 2, 3),  # the user's, or thread_policy's share
    ("1", 2, None),  # torchrun's own default for several processes per host: replaced by the share
    (None, 1, None), ("", 1, None), ("0", 1, None), ("two", 1, None),
])
def test_worker_threads(value: str | None, local: int, expected: int | None, clean_env: pytest.MonkeyPatch) -> None:
    if value is not None:
        clean_env.setenv("OMP_NUM_THREADS", value)
    assert worker_threads(local) == (expected or cpu_share(local))


_GOVERNED = """
import os, signal, subprocess, sys, time, torch
from recsys.system import ThreadGovernor
torch.set_num_threads(2)
governor = ThreadGovernor(2, interval_s=0.5)
# Another process, not a child (the governor counts its children's CPU as its own): the shell's background
# job outlives the shell and is reparented.
loop = sys.executable + ' -c "import os; print(os.getpid(), flush=True)\\nwhile True: pass"'
shell = subprocess.Popen(["sh", "-c", loop + " &"], stdout=subprocess.PIPE, text=True)
busy = int(shell.stdout.readline())
shell.wait()
try:
    time.sleep(1.0)  # idle here, so what the busy loop took shows as other processes' CPU time
    print(governor.update(), torch.get_num_threads())
finally:
    os.kill(busy, signal.SIGKILL)
"""


@pytest.mark.skipif(available_cpus() != 2, reason="written for 2 CPUs: one busy process leaves one")
def test_the_governor_gives_a_thread_up_to_a_busy_process() -> None:
    """Beside a CPU-bound process (and whatever else loads the machine), 2 threads become 1."""
    done = run_python(_GOVERNED, env={"OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]


@pytest.mark.parametrize(("current", "others", "cpus", "share", "expected"), [
    (2, 0.1, 2, 2, 2), (2, 0.5, 2, 2, 2),  # idle, or steal time alone: all threads kept
    (2, 0.8, 2, 2, 1), (2, 1.9, 2, 2, 1),  # a busy process: one given up, never the last
    (1, 0.5, 2, 2, 1), (1, 1.0, 2, 2, 1),  # still busy (or in the band): no flapping back
    (1, 0.2, 2, 2, 2),  # free again: taken back
    (4, 1.8, 8, 4, 4),  # other processes left this process its share
    (4, 5.0, 8, 4, 3), (3, 0.0, 8, 4, 4),
])
def test_governed_threads(current: int, others: float, cpus: int, share: int, expected: int) -> None:
    assert governed_threads(current, others, cpus, share) == expected
