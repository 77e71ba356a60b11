"""Training and the model's forward beside a competing CPU-bound process: what share of the idle speed is kept.

Issue #16: on 2 cores, one other CPU-bound process made training 3-12× slower, where a fair share of the cores
would be 2×: libgomp's threads spin (300,000 iterations by default) at every barrier waiting for a peer that
the other process has descheduled. Goal: at least 40% of the idle throughput beside one competitor, for
training and for the serving forward. ``recsys.system.thread_policy`` sets the thread count from the CPUs the
process may use; which wait policy to add is what this script measures.

Variants (environment of the measured process; the competitor is the same in all):

- default: what ``recsys`` does by itself (``thread_policy``: all available CPUs, libgomp's wait policy; then
  ``ThreadGovernor``, in training and in the service's model thread: threads given up while other processes
  keep CPUs busy, sampled every 2 s, so the forwards are timed after 2.5 s of them);
- spin-10k: GOMP_SPINCOUNT=10000 (a few microseconds of spinning, then sleep);
- passive: OMP_WAIT_POLICY=PASSIVE (sleep at once);
- one-thread: OMP_NUM_THREADS=1.

Conditions: idle, and beside a competitor this script starts: ``busy`` is a single-threaded Python loop (the
issue's controlled run), ``trainer`` is a second ``recsys train`` with the platform's defaults (the issue's
``make demo`` case: two OpenMP pools). Training: ``recsys train --model dlrm --config configs/dlrm.yaml`` on a
synthetic Criteo-shaped set for ``--steps`` steps; the figure is the job's ``train.samples_per_s`` (step time
only). Forward: the trained model on 100 test rows (the ranking request size), p50 of ``--forwards`` calls in a
fresh process. Conditions run in interleaved rounds; the medians over ``--rounds`` are reported, with the CPU
(``/proc/cpuinfo`` model and flags) and the load average.

    .venv/bin/python benchmarks/bench_contention.py               # ~10 min on 2 idle cores
    .venv/bin/python benchmarks/bench_contention.py --rounds 1 --steps 200   # ~3 min, a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "contention.json"
POLICY_VARS = ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_PROC_BIND")
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "spin-10k": {"GOMP_SPINCOUNT": "10000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
}
GOVERN_S = 2.5
FORWARD = f"""GOVERN_S = {GOVERN_S}
from recsys.system import ThreadGovernor, thread_policy, threads_chosen
thread_policy(1)  # recsys's thread count, before torch loads; a variant's own settings win
import statistics, sys, time
import pyarrow.parquet as pq, torch
from recsys.artifact import load
from recsys.data.layout import split_files
from recsys.data.reader import table_batch
art = load(sys.argv[1])
table = pq.read_table(split_files(sys.argv[2], "test")[0]).slice(0, 100)
batch = table_batch(table, art.schema)
# As the service's model thread: a count recsys chose is governed (services/ranking/batcher.py), and the
# governor samples every 2 s, so the forwards are timed after GOVERN_S of them.
governor = ThreadGovernor(torch.get_num_threads()) if threads_chosen() else None
times = []
with torch.inference_mode():
    start = time.perf_counter()
    while time.perf_counter() - start < GOVERN_S:
        art.model(batch)
        if governor is not None:
            governor.update()
    for _ in range(int(sys.argv[3])):
        if governor is not None:
            governor.update()
        start = time.perf_counter()
        art.model(batch)
        times.append(time.perf_counter() - start)
print(statistics.median(times[len(times) // 5:]) * 1e3, torch.get_num_threads())
"""


def _env(variant: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    return {**env, **VARIANTS[variant]}


def _train_cmd(data: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "recsys.cli.main", "-q", "train", "--model", "dlrm", "--data", str(data),
            "--out", str(out), "--config", str(ROOT / "configs" / "dlrm.yaml"), "--set", f"trainer.max_steps={steps}",
            "--set", "trainer.progress=false", "--set", f"trainer.log_every={steps}",
            "--set", f"trainer.checkpoint_every={steps * 10}"]


class Competitor:
    """The competing load, running for the duration of a ``with`` block."""

    def __init__(self, kind: str, data: Path, work: Path) -> None:
        self.kind, self.data, self.work = kind, data, work
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Competitor:
        if self.kind == "busy":
            cmd = [sys.executable, "-c", "while True: pass"]
        elif self.kind == "trainer":  # long enough to outlast any measurement; killed at the end
            cmd = _train_cmd(self.data, self.work / f"competitor-{time.monotonic_ns()}", 10**6)
        else:
            return self
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env("default"), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(3 if self.kind == "busy" else 15)  # the trainer's start-up (imports, plan) is not load
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def _train(variant: str, data: Path, work: Path, steps: int) -> float:
    out = work / f"run-{variant}-{time.monotonic_ns()}"
    subprocess.run(_train_cmd(data, out, steps), cwd=ROOT, env=_env(variant), check=True,
                   stdout=subprocess.DEVNULL)
    return float(json.loads((out / "artifact" / "metrics.json").read_text())["train.samples_per_s"])


def _forward(variant: str, artifact: Path, data: Path, forwards: int) -> float:
    done = subprocess.run([sys.executable, "-c", FORWARD, str(artifact), str(data), str(forwards)], cwd=ROOT,
                          env=_env(variant), check=True, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600, help="training steps per measurement")
    parser.add_argument("--forwards", type=int, default=400, help="forward calls per measurement")
    parser.add_argument("--rows", type=int, default=400_000, help="rows of the synthetic data set")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--competitors", default="busy,trainer", help="comma-separated: busy, trainer")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    variants = args.variants.split(",")
    conditions = ["idle", *args.competitors.split(",")]
    before = machine()
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as tmp:
        work = Path(tmp)
        data = work / "ctr"
        subprocess.run([sys.executable, "-m", "recsys.cli.main", "-q", "data", "synth", "--kind", "ctr", "--rows",
                        str(args.rows), "--out", str(data)], cwd=ROOT, check=True)
        artifact = work / "reference"
        subprocess.run(_train_cmd(data, artifact, 50), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        train: dict[str, dict[str, list[float]]] = {c: {v: [] for v in variants} for c in conditions}
        forward: dict[str, dict[str, list[float]]] = {c: {v: [] for v in variants} for c in conditions}
        for round_ in range(args.rounds):
            for condition in conditions:
                with Competitor(condition, data, work):
                    for variant in variants[round_ % len(variants):] + variants[:round_ % len(variants)]:
                        train[condition][variant].append(_train(variant, data, work, args.steps))
                        forward[condition][variant].append(
                            _forward(variant, artifact / "artifact", data, args.forwards))
                        print(f"round {round_ + 1} {condition:>8} {variant:>16}: "
                              f"{train[condition][variant][-1]:>9,.0f} samples/s, forward "
                              f"{forward[condition][variant][-1]:.3f} ms", flush=True)
    table: dict[str, Any] = {}
    for variant in variants:
        idle_rate = statistics.median(train["idle"][variant])
        idle_ms = statistics.median(forward["idle"][variant])
        row: dict[str, Any] = {"idle_samples_per_s": round(idle_rate), "idle_forward_ms": round(idle_ms, 3)}
        for condition in conditions[1:]:
            rate, ms = statistics.median(train[condition][variant]), statistics.median(forward[condition][variant])
            row[condition] = {"samples_per_s": round(rate), "train_kept": round(rate / idle_rate, 3),
                              "forward_ms": round(ms, 3), "forward_kept": round(idle_ms / ms, 3)}
        table[variant] = row
    policy = table.get("default", {})
    goals = {condition: {"train_kept_ge_0.4": policy[condition]["train_kept"] >= 0.4,
                         "forward_kept_ge_0.4": policy[condition]["forward_kept"] >= 0.4}
             for condition in conditions[1:] if condition in policy}
    results = {"machine": {**before, "load_average_after": [round(x, 2) for x in os.getloadavg()]},
               "settings": vars(args) | {"out": str(args.out)}, "variants": table, "goals": goals,
               "raw": {"train": train, "forward_ms": forward}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"variants": table, "goals": goals}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
