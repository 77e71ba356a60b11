"""Data throughput: raw Criteo TSV → prepared Parquet, the synthetic generator, and the Parquet → Batch reader.

The reader must not be what a training step waits for; ``prepare`` and
``synth`` set how long a user waits before training can start. Writes every
figure, with the machine it ran on, to a JSON file and prints a short table.

``--engines polars,ray`` (the default) also times ``recsys data prepare --engine E`` as a user runs it, on the
raw rows cut into ``--engine-files`` Criteo day files: the polars engine, then the Ray engine on a local Ray
cluster of 1 and of 2 nodes of 1 CPU each (``LocalRayCluster``), whose ratio is the scaling from 1 to 2 workers on
this machine. Each is run again on the first 1,000 rows, whose time is taken as the job's fixed cost (starting
Ray, Ray Data's executions); from the largest run's per-core rate past it, an estimate of the cores that prepare Criteo
Terabyte (4,373,472,329 rows in 24 day files) in one hour.

    .venv/bin/python benchmarks/bench_data.py --rows 1000000
    .venv/bin/python benchmarks/bench_data.py --rows 1000000 --only-engines   # just the engine comparison
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import torch
import torchrec

from recsys.data.pipeline import PrepareOptions
from recsys.data.reader import ParquetReader
from recsys.data.synth import CtrConfig, synth_ctr, write_criteo_tsv

HERE = Path(__file__).resolve().parent


def cpu_flags() -> list[str]:
    try:
        line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return line.split(":", 1)[1].split()


def cpu_pressure() -> float | None:
    """Percent of the last 10 s in which some task waited for a CPU (Linux PSI); None where unavailable."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(line.split("avg10=")[1].split()[0])


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average says whether the machine was shared."""
    cpu = "unknown"
    memory_gib = None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        memory_gib = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_flags": cpu_flags(),
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrec": getattr(torchrec, "__version__", "unknown"),
        "polars": pl.__version__,
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


_PREPARE_CHILD = """
import json, sys
from pathlib import Path
from recsys.data.formats.criteo import CriteoSource
from recsys.data.pipeline import PrepareOptions, run
result = run(CriteoSource(Path(sys.argv[1])), Path(sys.argv[2]), PrepareOptions(overwrite=True))
status = Path("/proc/self/status").read_text()
peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
print(json.dumps({"rows_written": result.stats["rows_written"], "pipeline_seconds": result.stats["seconds"],
                  "peak_rss_mib": round(peak_kib / 1024, 1)}))
"""


def timed(label: str, fn: Any) -> tuple[Any, float]:
    print(f"… {label}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_reader(data_dir: Path, batch_size: int, num_workers: int, shuffle: bool, epochs: int) -> dict[str, Any]:
    """One full epoch per repeat; start-up (worker fork and the first shuffle window) is reported apart."""
    reader = ParquetReader(data_dir, "train", batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)
    runs = []
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        rows = batches = 0
        cpu0, start = time.process_time(), time.perf_counter()
        first_at, first_rows = start, 0
        for batch in reader:
            if batches == 0:
                first_at, first_rows = time.perf_counter(), batch.batch_size
            rows += batch.batch_size
            batches += 1
        end, cpu1 = time.perf_counter(), time.process_time()
        runs.append({
            "epoch_s": end - start,
            "startup_s": first_at - start,
            "rows_per_s": rows / (end - start),
            "batches_per_s": batches / (end - start),
            "steady_rows_per_s": (rows - first_rows) / (end - first_at),
            "steady_batches_per_s": (batches - 1) / (end - first_at),
            "main_cpu_ms_per_batch": 1000 * (cpu1 - cpu0) / batches,
        })
    summary = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return {"num_workers": num_workers, "shuffle": shuffle, "batch_size": batch_size, "rows": rows,
            "batches": batches, "epochs": epochs, **summary, "per_epoch": runs}


CRITEO_TERABYTE_ROWS = 4_373_472_329  # 24 days (Criteo's published counts)
TINY_ROWS = 1000  # the input whose time is taken as an engine's fixed cost


def bench_engines(tsv: Path, work: Path, rows: int, files: int, engines: list[str]) -> dict[str, Any]:
    """``recsys data prepare`` of the same ``files`` day files per engine (and per Ray cluster size)."""
    from recsys.data.ray_engine import LocalRayCluster

    raw, tiny = work / "raw-days", work / "raw-days-tiny"
    lines = tsv.read_text().splitlines(keepends=True)
    for folder, kept in ((raw, lines), (tiny, lines[:TINY_ROWS])):
        folder.mkdir(parents=True, exist_ok=True)
        for day in range(files):
            (folder / f"day_{day}.tsv").write_text("".join(kept[day::files]))
    recsys = Path(sys.executable).with_name("recsys")
    runs: list[dict[str, Any]] = []

    def seconds_to_prepare(source: Path, label: str, *flags: str) -> float:
        started = time.perf_counter()
        subprocess.run([str(recsys), "data", "prepare", "--format", "criteo", "--input", str(source), "--out",
                        str(work / f"engine-{label}"), "--overwrite", *flags], check=True, capture_output=True)
        return time.perf_counter() - started

    def prepare(label: str, cpus: int, *flags: str) -> None:
        print(f"… prepare --engine {label}", file=sys.stderr, flush=True)
        seconds = seconds_to_prepare(raw, label, *flags)
        fixed = seconds_to_prepare(tiny, label, *flags)  # start-up and per-step costs that do not grow with rows
        runs.append({"engine": label, "cpus": cpus, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
                     "rows_per_s_per_cpu": round(rows / seconds / cpus),
                     f"seconds_for_{TINY_ROWS}_rows": round(fixed, 2),
                     "rows_per_s_per_cpu_past_the_fixed_cost": round(rows / max(seconds - fixed, 1e-3) / cpus)})

    if "polars" in engines:
        prepare("polars", len(os.sched_getaffinity(0)))  # polars' own threads use every core
    if "ray" in engines:
        for nodes in (1, 2):
            cluster = LocalRayCluster.start(nodes=nodes, cpus_per_node=1)
            try:
                prepare(f"ray-{nodes}-workers", nodes, "--engine", "ray", "--ray-address", cluster.address)
            finally:
                cluster.stop()
    result: dict[str, Any] = {"files": files, "rows": rows, "runs": runs}
    by_label = {r["engine"]: r for r in runs}
    if "ray-1-workers" in by_label and "ray-2-workers" in by_label:
        result["ray_scaling_1_to_2_workers"] = round(by_label["ray-2-workers"]["rows_per_s"]
                                                     / by_label["ray-1-workers"]["rows_per_s"], 2)
    ray_runs = [r for r in runs if r["engine"].startswith("ray")] or runs
    if ray_runs:
        # The run on the most CPUs: on the largest cluster they are all of this machine's cores, so the time of
        # Ray's own processes (driver, raylets, GCS, Ray Data's actors), which a 1-CPU node takes beside its CPU,
        # is in the rate.
        best = max(ray_runs, key=lambda r: r["cpus"])
        per_cpu = best["rows_per_s_per_cpu_past_the_fixed_cost"]
        result["criteo_terabyte_in_one_hour"] = {
            "rows": CRITEO_TERABYTE_ROWS, "rows_per_s_per_cpu": per_cpu,
            "cpus": round(CRITEO_TERABYTE_ROWS / (3600 - best[f"seconds_for_{TINY_ROWS}_rows"]) / per_cpu),
            "note": (f"from the per-CPU rate of the largest run here past the job's fixed cost (its time on {TINY_ROWS} "
                     "rows, taken out of the hour), assumed linear; the driver's merges (dense moments, the "
                     "kept vocabularies) and the shared storage's bandwidth are not in it"),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "data.json")
    parser.add_argument("--workdir", type=Path, default=HERE / "work")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3, help="reader epochs per setting; the median is reported")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--engines", default="polars,ray", help="prepare engines to compare ('' for none)")
    parser.add_argument("--engine-files", type=int, default=4, help="day files the raw rows are cut into for them")
    parser.add_argument("--only-engines", action="store_true", help="only the engine comparison (kept results "
                        "of the other stages stay in the file)")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"benchmark": "data", "rows": args.rows, "machine": machine()}

    config = CtrConfig(rows=args.rows, seed=0)
    engines = [e for e in args.engines.split(",") if e]
    if args.only_engines:
        tsv = write_criteo_tsv(config, work / "raw", overwrite=True)
        kept = json.loads(args.out.read_text()) if args.out.exists() else {}
        kept["prepare_engines"] = bench_engines(tsv, work, args.rows, args.engine_files, engines)
        kept["prepare_engines"]["machine"] = machine()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(kept, indent=2) + "\n")
        print(json.dumps(kept["prepare_engines"], indent=2))
        return
    tsv, seconds = timed("write raw Criteo TSV", lambda: write_criteo_tsv(config, work / "raw", overwrite=True))
    results["write_criteo_tsv"] = {"seconds": seconds, "rows_per_s": args.rows / seconds,
                                   "bytes": tsv.stat().st_size}
    # In a fresh interpreter, so the peak memory (VmHWM) is prepare's own, not this process's.
    completed, seconds = timed("prepare --format criteo", lambda: subprocess.run(
        [sys.executable, "-c", _PREPARE_CHILD, str(work / "raw"), str(work / "criteo")],
        check=True, capture_output=True, text=True))
    child = json.loads(completed.stdout.strip().splitlines()[-1])
    results["prepare_criteo"] = {"seconds": seconds, "pipeline_seconds": child["pipeline_seconds"],
                                 "rows_per_s": args.rows / seconds, "rows_written": child["rows_written"],
                                 "peak_rss_mib": child["peak_rss_mib"], "input_mib": round(tsv.stat().st_size / 2**20, 1)}
    _, seconds = timed("synth ctr", lambda: synth_ctr(config, work / "ctr", PrepareOptions(overwrite=True)))
    results["synth_ctr"] = {"seconds": seconds, "rows_per_s": args.rows / seconds}
    if engines:
        results["prepare_engines"] = bench_engines(tsv, work, args.rows, args.engine_files, engines)

    results["reader"] = []
    for num_workers in args.workers:
        print(f"… reader, {num_workers} workers", file=sys.stderr, flush=True)
        results["reader"].append(bench_reader(work / "ctr", args.batch_size, num_workers, True, args.epochs))
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    m = results["machine"]
    print(f"\n{m['cpu']} · {m['nproc']} cpus · {m['memory_gib']} GiB · torch {m['torch']} · "
          f"polars {m['polars']} · pyarrow {m['pyarrow']} · load {m['load_average']}")
    print(f"{'stage':<36}{'seconds':>10}{'rows/s':>14}")
    for key, label in (("write_criteo_tsv", "write raw Criteo TSV"), ("prepare_criteo", "prepare --format criteo"),
                       ("synth_ctr", "synth --kind ctr")):
        print(f"{label:<36}{results[key]['seconds']:>10.2f}{results[key]['rows_per_s']:>14,.0f}")
    prepared = results["prepare_criteo"]
    print(f"prepare peak memory {prepared['peak_rss_mib']:,.0f} MiB for a {prepared['input_mib']:,.0f} MiB input")
    print(f"\nreader, train split ({results['reader'][0]['rows']:,} rows), batch {args.batch_size}, shuffled, "
          f"median of {args.epochs} epochs")
    print(f"{'workers':<9}{'start-up s':>11}{'rows/s':>12}{'batches/s':>11}{'steady rows/s':>15}"
          f"{'steady b/s':>12}{'main cpu ms/b':>15}")
    for r in results["reader"]:
        print(f"{r['num_workers']:<9}{r['startup_s']:>11.3f}{r['rows_per_s']:>12,.0f}{r['batches_per_s']:>11.1f}"
              f"{r['steady_rows_per_s']:>15,.0f}{r['steady_batches_per_s']:>12.1f}{r['main_cpu_ms_per_batch']:>15.2f}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
