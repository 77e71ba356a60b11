"""Where the test suite's time goes: wall time per worker count, how busy the machine was, and the slowest files.

The suite's goal (`make test` under 15 minutes on 2 idle cores) is only worth chasing one way if the suite is
CPU-bound and another if it waits: this runs ``pytest -n N --durations=0`` for each ``--workers`` count and
reads ``/proc/stat`` before and after, so the result says both how long it took and how much of the machine it
used (busy, of it in the kernel, idle, stolen by the hypervisor). An idle share near 0 means more workers
cannot help and only less CPU work can; a large one means the tests wait (sleeps, timeouts, start-up) and
more workers or shorter waits would. Per-file sums of the reported durations (seconds of worker time) name
the files that the CPU goes to. The machine (``/proc/cpuinfo`` model and flags) and the load average are
recorded; compare only figures from one run on one machine.

    .venv/bin/python benchmarks/bench_suite.py                     # -n 2, the whole suite: ~17 min on 2 cores
    .venv/bin/python benchmarks/bench_suite.py --workers 2 3       # both counts, one after the other
    .venv/bin/python benchmarks/bench_suite.py --workers 0 -- tests/test_zygote.py   # a subset, serially

Exits non-zero when any run fails, so a red suite never passes for a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "suite.json"
LOGS = ROOT / "benchmarks" / "work" / "suite"
DURATION = re.compile(r"^\s*([\d.]+)s (?:call|setup|teardown)\s+(\S+?)(?:::|\s|$)")
OUTCOME = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")
TOP_FILES = 15


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far, in ticks: user nice system idle iowait irq softirq steal."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return [int(value) for value in fields[1:9]]


def cpu_shares(before: list[int], after: list[int]) -> dict[str, float]:
    """Shares of the machine's CPU time between two readings, and the busy CPU seconds."""
    user, nice, system, idle, iowait, irq, softirq, steal = (b - a for a, b in zip(before, after))
    waiting = idle + iowait
    busy = user + nice + system + irq + softirq + steal
    total = max(busy + waiting, 1)
    return {"busy": round(busy / total, 4), "kernel": round((system + irq + softirq) / total, 4),
            "idle": round(waiting / total, 4), "steal": round(steal / total, 4),
            "busy_cpu_seconds": round(busy / os.sysconf("SC_CLK_TCK"), 1)}


def file_seconds(output: str) -> dict[str, float]:
    """Per test file, the summed setup + call + teardown durations pytest reported."""
    sums: Counter[str] = Counter()
    for line in output.splitlines():
        if match := DURATION.match(line):
            sums[match.group(2)] += float(match.group(1))
    return {name: round(seconds, 1) for name, seconds in sums.most_common()}


def outcomes(output: str) -> dict[str, int]:
    """pytest's closing counts (``1072 passed, 1 skipped in 997.06s``): empty when it printed none."""
    summary = next((line for line in reversed(output.splitlines()) if re.search(r" in [\d.]+s", line)), "")
    return {kind.rstrip("s") if kind.startswith("error") else kind: int(count)
            for count, kind in OUTCOME.findall(summary)}


def run_suite(workers: int, paths: list[str], logs: Path) -> dict[str, Any]:
    """One ``pytest -n WORKERS`` run, its output streamed to the terminal and kept in ``logs``."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"n{workers}.log"
    command = [sys.executable, "-m", "pytest", "-n", str(workers), "--durations=0", "-q", "-p", "no:cacheprovider",
               *paths]
    print(f"$ {' '.join(command[1:])}  (output also in {log})", file=sys.stderr, flush=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    before, start = cpu_ticks(), time.perf_counter()
    lines = []
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # pytest's own progress (the percentages) is this job's progress bar
            sys.stderr.write(line)
            lines.append(line)
    wall, after = time.perf_counter() - start, cpu_ticks()
    output = "".join(lines)
    log.write_text(output)
    files = file_seconds(output)
    return {"workers": workers, "paths": paths, "exit_code": proc.returncode, "outcomes": outcomes(output),
            "wall_seconds": round(wall, 1), "cpu": cpu_shares(before, after),
            "test_seconds": round(sum(files.values()), 1), "slowest_files": dict(list(files.items())[:TOP_FILES]),
            "load_average_before": load_before, "log": str(log)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Arguments after `--` go to pytest as paths or options (default: the "
                                            "whole suite).")
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="pytest-xdist worker counts to run, in order (0: serially in one process)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON to write (default: %(default)s)")
    parser.add_argument("--logs", type=Path, default=LOGS, help="where each run's pytest output is kept, as "
                        "nN.log (default: %(default)s)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, paths = parser.parse_args(argv[:split]), argv[split + 1:]
    if any(n < 0 for n in args.workers):
        parser.error("--workers: counts must be 0 or more")
    runs = [run_suite(n, paths, args.logs) for n in args.workers]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2) + "\n")
    for run in runs:
        cpu = run["cpu"]
        print(f"-n {run['workers']}: exit {run['exit_code']} {run['outcomes']}, {run['wall_seconds']:.0f} s wall, "
              f"machine {cpu['busy']:.1%} busy ({cpu['kernel']:.1%} kernel), {cpu['idle']:.1%} idle, "
              f"{cpu['busy_cpu_seconds']:.0f} CPU s", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
