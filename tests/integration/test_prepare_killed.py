"""A prepare killed with SIGKILL half way leaves nothing visible, and the next run cleans up after it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from recsys.data.synth import CtrConfig, write_criteo_tsv
from tests import interrupt
from tests.conftest import REPO_ROOT, run_cli


def test_sigkill_mid_run_leaves_no_output(tmp_path: Path) -> None:
    write_criteo_tsv(CtrConfig(rows=5_000, seed=2), tmp_path / "raw", overwrite=False)
    out = tmp_path / "prepared"
    # Killed once it has spooled the parsed rows into its work folder, before it has written any split.
    job = interrupt.run("recsys.data.pipeline:_spool_parts", "kill", "data", "prepare", "--format", "criteo",
                        "--input", str(tmp_path / "raw"), "--out", str(out), timeout=300)
    assert job.returncode == -signal.SIGKILL, job.stderr[-3000:]
    assert list(tmp_path.glob(".prepared.tmp-*/_spool/part-*.parquet")), "killed before it had spooled anything"
    assert not out.exists()
    leftovers = list(tmp_path.glob(".prepared.tmp-*"))
    assert len(leftovers) == 1, "the killed run's work folder is hidden beside the output"

    finished = run_cli("data", "prepare", "--format", "criteo", "--input", str(tmp_path / "raw"), "--out", str(out))
    assert finished.returncode == 0, finished.stderr
    assert (out / "stats.json").is_file() and (out / "schema.json").is_file()
    assert not leftovers[0].exists(), "the next run removed the killed run's folder"


# Runs the CLI with an audit hook that SIGKILLs the process once it has deleted a file of the data set it
# replaced: a kill at exactly that moment, with no timing to hope for.
_KILLED_WHILE_REMOVING = """
import os, runpy, signal, sys

removing = False

def hook(event, args):
    global removing
    if event == "shutil.rmtree" and ".old-" in os.fspath(args[0]):
        removing = True
    elif removing and event == "os.remove":
        if hook.removed == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        hook.removed += 1

hook.removed = 0
sys.addaudithook(hook)
sys.argv = ["recsys", *sys.argv[1:]]
runpy.run_module("recsys.cli.main", run_name="__main__")
"""


def test_sigkill_while_removing_the_replaced_output_is_cleaned_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "ctr"
    synth = ["data", "synth", "--kind", "ctr", "--rows", "2000", "--out", str(out)]
    assert run_cli(*synth).returncode == 0
    job = subprocess.Popen([sys.executable, "-c", _KILLED_WHILE_REMOVING, *synth, "--seed", "1", "--overwrite"],
                           cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, errors = job.communicate(timeout=300)
    assert job.returncode == -signal.SIGKILL, errors[-3000:]
    replaced = tmp_path / f".ctr.old-{job.pid}"  # the old data set, half deleted, hidden beside the new one
    assert any(replaced.rglob("*.parquet"))
    assert json.loads((out / "stats.json").read_text())["seed"] == 1  # the new one is in place

    again = run_cli(*synth, "--seed", "2", "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not replaced.exists(), "the next run into the output removed the killed run's leftover"
    assert json.loads((out / "stats.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ctr.lock", "ctr"]
