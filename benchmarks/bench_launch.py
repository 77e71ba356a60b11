"""What starting the workers of ``recsys train --nproc 2`` costs: forked from the command (the CPU default) or
spawned (the CUDA default, ``RECSYS_WORKER_START=spawn``).

A spawned worker imports torch, torchrec and recsys again (about 8 s of CPU on a 2-core AMD EPYC); a forked one
inherits them from the command, which imported them to check the job. The job is the same in both: DLRM, 20
steps of 256 rows on a 12k-row synthetic set, so the figures are almost all start-up. Methods alternate within
each round; reported per method: median wall seconds and median CPU seconds (user + system of the command and
its workers), with the CPU (``/proc/cpuinfo`` model and flags) and the load average.

    .venv/bin/python benchmarks/bench_launch.py              # 3 rounds, ~2 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_data import machine  # noqa: E402

METHODS = ("fork", "spawn")


def _run(method: str, data: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``recsys train --nproc 2`` with the workers started by ``method``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recsys.cli.main", "-q", "train", "--model", "dlrm", "--data", str(data),
                    "--out", str(out), "--nproc", "2", "--set", "trainer.progress=false",
                    "--set", "trainer.batch_size=256", "--set", "trainer.max_steps=20"],
                   cwd=ROOT, env={**os.environ, "RECSYS_WORKER_START": method}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "launch.json")
    args = parser.parse_args()
    before = machine()
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        data = Path(tmp) / "ctr"
        subprocess.run([sys.executable, "-m", "recsys.cli.main", "-q", "data", "synth", "--kind", "ctr", "--rows",
                        "12000", "--out", str(data)], cwd=ROOT, check=True)
        for round_ in range(args.rounds):
            for method in METHODS[round_ % 2:] + METHODS[:round_ % 2]:
                wall, cpu = _run(method, data, Path(tmp) / f"run-{method}-{round_}")
                runs[method].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
                print(f"round {round_ + 1} {method:>5}: {wall:6.2f} s wall, {cpu:6.2f} s CPU", flush=True)
    summary: dict[str, Any] = {m: {"wall_s": statistics.median(r["wall_s"] for r in runs[m]),
                                   "cpu_s": statistics.median(r["cpu_s"] for r in runs[m])} for m in METHODS}
    summary["fork_over_spawn"] = {k: round(summary["fork"][k] / summary["spawn"][k], 3) for k in ("wall_s", "cpu_s")}
    results = {"benchmark": "launch", "machine": {**before, "load_average_after": [round(x, 2) for x in os.getloadavg()]},
               "settings": {"rounds": args.rounds, "job": "dlrm, --nproc 2, 20 steps of 256 rows, 12k-row synthetic set"},
               "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
