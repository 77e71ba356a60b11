"""benchmarks/bench_suite.py: it runs pytest at each worker count, records the outcome, the machine's CPU shares
and the slowest files, and a failing run makes it fail instead of passing for a timing."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO_ROOT, run_python

_BENCH = """
import runpy, sys
sys.argv = ["bench_suite.py", *sys.argv[1:]]
runpy.run_path(sys.argv.pop(1), run_name="__main__")
"""

_TESTS = """
import time, pytest

def test_passes():
    time.sleep(0.05)

def test_fails():
    assert 1 == 2

def test_skips():
    pytest.skip("on purpose")
"""


def test_a_red_run_is_recorded_with_its_shares_and_files_and_fails_the_benchmark(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")  # not the repo's options: a tiny suite of its own
    (suite / "test_tiny.py").write_text(_TESTS)
    out = tmp_path / "suite.json"
    ran = run_python(_BENCH, str(REPO_ROOT / "benchmarks" / "bench_suite.py"), "--workers", "0", "1",
                     "--out", str(out), "--logs", str(tmp_path / "logs"),
                     "--", str(suite), "-c", str(suite / "pytest.ini"), "--rootdir", str(suite))
    assert ran.returncode == 1, ran.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["cpu"] and result["machine"]["nproc"] >= 1
    assert [run["workers"] for run in result["runs"]] == [0, 1]
    for run in result["runs"]:
        assert run["exit_code"] == 1
        assert run["outcomes"] == {"passed": 1, "failed": 1, "skipped": 1}
        cpu = run["cpu"]
        assert all(0 <= cpu[share] <= 1 for share in ("busy", "kernel", "idle", "steal"))
        assert abs(cpu["busy"] + cpu["idle"] - 1) < 1e-3 and cpu["kernel"] <= cpu["busy"]
        assert run["wall_seconds"] > 0 and cpu["busy_cpu_seconds"] >= 0
        (name,) = [name for name in run["slowest_files"] if name.endswith("test_tiny.py")]
        assert run["slowest_files"][name] >= 0.05  # the sleeping test's call, at least
        assert "test_fails" in Path(run["log"]).read_text()
    assert "-n 1: exit 1" in ran.stderr


def test_the_help_says_where_pytest_options_go() -> None:
    shown = run_python(_BENCH, str(REPO_ROOT / "benchmarks" / "bench_suite.py"), "--help")
    assert shown.returncode == 0, shown.stderr
    assert "--workers" in shown.stdout and "after `--` go to pytest" in shown.stdout
