"""The zygote (recsys/zygote.py) answers as a fresh interpreter does: same output, same exit status, the
command's own environment and directory, and a timeout that kills the command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, ZYGOTE, run_cli, run_python


@pytest.mark.parametrize("args", [
    ("--version",),
    ("train", "--help"),
    ("train", "--nosuch"),
    ("train", "--model", "no-such-model", "--data", "{tmp}/absent", "--out", "{tmp}/run"),
    ("data", "prepare", "--format", "csv", "--input", "{tmp}/absent.csv", "--out", "{tmp}/prepared"),
], ids=["version", "help", "bad-flag", "bad-model", "absent-input"])
def test_commands_answer_as_in_a_fresh_interpreter(args: tuple[str, ...], tmp_path: Path) -> None:
    args = tuple(arg.format(tmp=tmp_path) for arg in args)
    fresh = run_cli(*args, fresh=True)
    forked = run_cli(*args)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)


_STATE = """
import os, sys, numpy, torch
print(__name__, sys.argv, sys.path[0], os.getcwd(), torch.get_num_threads(), os.environ.get("RECSYS_PROBE"))
print(torch.initial_seed(), float(torch.rand(1)), float(numpy.random.rand()))
"""


@pytest.mark.parametrize("threads", ["1", "2"])
def test_code_starts_from_the_state_of_a_fresh_interpreter(threads: str, tmp_path: Path) -> None:
    """Name, arguments, path, directory and thread count as ``python -c`` has them; torch's and numpy's seeds
    drawn afresh in each child, as each fresh interpreter draws them, not the zygote's shared ones."""
    env = {"OMP_NUM_THREADS": threads, "RECSYS_PROBE": "probe"}
    fresh = run_python(_STATE, "a", "b c", cwd=tmp_path, env=env, fresh=True)
    forked = [run_python(_STATE, "a", "b c", cwd=tmp_path, env=env) for _ in range(2)]
    assert fresh.returncode == 0, fresh.stderr
    for child in forked:
        assert child.returncode == 0, child.stderr
        assert child.stdout.splitlines()[0] == fresh.stdout.splitlines()[0]
        assert child.stdout.splitlines()[0].endswith(f" {threads} probe")
    seeds = [child.stdout.splitlines()[1].split() for child in forked]
    assert all(first != second for first, second in zip(*seeds, strict=True)), seeds


def test_a_command_runs_in_its_directory_with_its_environment(tmp_path: Path) -> None:
    """`features versions` on a RECSYS_HOME given per command, from a directory given per command: relative
    paths resolve there, and the embedded Redis it starts lives under that home, not the zygote's."""
    home = tmp_path / "home"
    result = run_cli("features", "versions", cwd=tmp_path, env={"RECSYS_HOME": "home"}, unset=("REDIS_URL",),
                     timeout=120)
    assert result.returncode == 0, result.stderr
    assert (home / "redis").is_dir()


def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    """100M synthetic rows take minutes; killed after 3 s, the command leaves no output (written atomically)."""
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli("data", "synth", "--kind", "ctr", "--rows", "100000000", "--out", str(tmp_path / "big"), timeout=3)
    assert not (tmp_path / "big").exists()


_BURN = """
import os, time
child = os.fork()  # the CPU of a process the command waits for counts too
deadline = time.process_time() + 0.3
while time.process_time() < deadline:
    pass
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
print(time.process_time())
"""


def test_the_zygote_reports_the_cpu_of_the_command_and_of_what_it_waited_for(tmp_path: Path) -> None:
    """cpu_s (wait4's user + system time) is what bench_models records for a run: at least the command's own
    CPU plus its child's 0.3 s."""
    with (tmp_path / "out").open("w+") as out:
        process = ZYGOTE.popen([], cwd=REPO_ROOT, env={}, stdout=out, stderr=out, code=_BURN)
        assert process.wait(120) == 0
        out.seek(0)
        own = float(out.read().split()[-1])
    assert process.cpu_s is not None and process.cpu_s >= own + 0.3 - 0.02, (process.cpu_s, own)
