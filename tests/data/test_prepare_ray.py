"""`recsys data prepare --engine ray` on a real local Ray cluster (a head and a second node process, as
`ray start` makes them): the polars engine's answers, bad input quarantined or refused with nothing written,
a worker killed mid-job retried.

The comparisons run the pipeline in this process with one ``RayExecutor`` for the module (a Ray job's workers
start once, not once per test); the refused job and the killed worker run the command as a user does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys.data.formats.criteo import CriteoSource
from recsys.data.formats.movielens import MovieLensSource
from recsys.data.pipeline import LocalExecutor, PrepareOptions, Source, run
from recsys.data.ray_engine import LocalRayCluster, RayExecutor
from recsys.data.synth import CtrConfig, write_criteo_tsv
from recsys.errors import RecsysError
from recsys.system import free_port
from tests.conftest import cli_process, run_cli, shared_dataset

pytestmark = pytest.mark.slow
TIMINGS = {"seconds", "rows_per_s", "engine"}  # what may differ between the engines' stats.json


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """``ray start --head`` (1 CPU) and a second node joining it (1 CPU), on loopback; yields the address.
    Its idle workers are kept (``worker_pools``): the module's jobs share one driver, and with Ray's default
    every job restarted the workers of Ray Data's shuffle pools (12.6 s for a 12,000-row job, 1.5 s kept)."""
    cluster = LocalRayCluster.start(nodes=2, cpus_per_node=1, keep_idle_workers=True)
    yield cluster.address
    cluster.stop()


@pytest.fixture(scope="module")
def ray_executor(ray_cluster: str) -> Iterator[RayExecutor]:
    executor = RayExecutor(ray_cluster)
    yield executor
    executor.close()


def _both(source: Source, tmp_path: Path, executor: RayExecutor, options: PrepareOptions | None = None) -> None:
    """Prepare ``source`` with the polars engine and on Ray; the outputs must be the same."""
    options = options or PrepareOptions()
    run(source, tmp_path / "polars", options)
    assert run(source, tmp_path / "ray", options, executor=executor).stats["engine"] == "ray"
    _assert_same_output(tmp_path / "polars", tmp_path / "ray")


def _prepare(*args: str, engine: str, address: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--engine", engine] + (["--ray-address", address] if address else [])
    return run_cli("data", "prepare", *args, *extra, "--overwrite", timeout=900)


def _assert_same_output(polars_out: Path, ray_out: Path) -> None:
    """Every file the same: Parquet by content, the dense statistics (Ray Data merges its blocks in its own
    order) and the dense values standardised by them to float tolerance, stats.json but for timings and the
    engine's name; every other byte the same."""
    files = sorted(p.relative_to(polars_out) for p in polars_out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ray_out) for p in ray_out.rglob("*") if p.is_file())
    for relative in files:
        a, b = polars_out / relative, ray_out / relative
        if relative.suffix == ".parquet":  # integers and strings exactly, floats to a float32 ulp or so
            assert_frame_equal(pl.read_parquet(a), pl.read_parquet(b), check_exact=False, rel_tol=1e-6, abs_tol=1e-6)
        elif relative.name == "stats.json":
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            assert (x["engine"], y["engine"]) == ("polars", "ray")
            for name, moments in x.pop("dense").items():
                assert y["dense"][name] == pytest.approx(moments, rel=1e-12), name
            y.pop("dense")
            assert {k: v for k, v in x.items() if k not in TIMINGS} == {k: v for k, v in y.items() if k not in TIMINGS}
        elif relative.name == "schema.json":
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            for left, right in zip(x["dense"], y["dense"], strict=True):
                for moment in ("mean", "std"):
                    assert right.pop(moment) == pytest.approx(left.pop(moment), rel=1e-12), (left["name"], moment)
            assert x == y
        else:
            assert a.read_bytes() == b.read_bytes(), relative


def _raw_criteo(folder: Path, files: int, rows: int) -> Path:
    """``files`` Criteo TSV day files of synthetic rows, the second with malformed lines."""
    folder.mkdir(parents=True)
    for day in range(files):
        written = write_criteo_tsv(CtrConfig(rows=rows, seed=day), folder.with_name(f"{folder.name}-{day}"), False)
        written.rename(folder / f"day_{day}.tsv")
        written.parent.rmdir()
    with (folder / "day_1.tsv").open("a") as handle:
        handle.write("not a criteo line\n1\t2\t3\n" + "x\t" * 39 + "\n")
    return folder


def test_synthetic_criteo_files_give_the_polars_answers(ray_executor: RayExecutor, tmp_path: Path) -> None:
    raw = _raw_criteo(tmp_path / "raw", files=3, rows=4000)
    _both(CriteoSource(raw), tmp_path, ray_executor)
    bad = [json.loads(line) for line in (tmp_path / "ray" / "quarantine" / "bad_rows.jsonl").read_text().splitlines()]
    assert [(Path(b["source"]).name, b["line"]) for b in bad] == [("day_1.tsv", 4001), ("day_1.tsv", 4002),
                                                                  ("day_1.tsv", 4003)]


@pytest.mark.shared_data
def test_the_criteo_sample_split_in_file_order_gives_the_polars_answers(ray_executor: RayExecutor,
                                                                        tmp_path: Path) -> None:
    """``--split time`` without a timestamp cuts at row ordinals: the Ray engine must number rows alike."""
    source = CriteoSource(shared_dataset("criteo-sample/criteo_sample.txt"))
    _both(source, tmp_path, ray_executor, PrepareOptions(split="time"))


@pytest.mark.shared_data
def test_movielens_leave_one_out_gives_the_polars_answers(ray_executor: RayExecutor, tmp_path: Path) -> None:
    source = MovieLensSource(shared_dataset("movielens/ml-latest-small"), task="implicit")
    _both(source, tmp_path, ray_executor, PrepareOptions(split="loo"))


def test_the_ray_data_aggregations_equal_the_polars_ones(ray_executor: RayExecutor, tmp_path: Path) -> None:
    """``count_values`` (the Ray Data groupby, ``min_count`` applied on the cluster) and ``dense_moments``
    against the polars engine's, on parts of a list column, nulls, values across parts and a part with no
    train rows."""
    rng = np.random.default_rng(0)
    parts = []
    for index in range(3):
        rows = 2000
        frame = pl.DataFrame({
            "c": [None if v == 0 else f"v{v}" for v in rng.zipf(1.5, rows) % 500],
            "h": [[f"v{v}" for v in rng.integers(0, 50, rng.integers(0, 4))] for _ in range(rows)],
            "x": rng.normal(3.0, 2.0, rows),
            "_u": rng.random(rows) + (1.0 if index == 1 else 0.0),  # part 1 holds no train rows
        })
        parts.append(tmp_path / f"part-{index:05d}.parquet")
        frame.write_parquet(parts[-1])
    split_of = pl.when(pl.col("_u") < 0.8).then(0).otherwise(1)
    columns = {"items": [("c", False), ("h", True)], "only_c": [("c", False)]}
    local = LocalExecutor()
    min_counts = {"items": 1, "only_c": 20}  # everything, and only the frequent values
    expected = local.count_values(parts, split_of, columns, min_counts)
    got = ray_executor.count_values(parts, split_of, columns, min_counts)
    assert set(got) == set(columns)
    assert got["only_c"]["count"].min() >= 20 and got["items"]["count"].min() == 1
    for table in columns:
        assert_frame_equal(got[table].sort("value"), expected[table].sort("value"), check_dtypes=False)
    pre = [pl.col("x").cast(pl.Float64), pl.col("x").abs().log1p().alias("log_x")]
    count, mean, std = ray_executor.dense_moments(parts, pre, split_of)
    expected_count, expected_mean, expected_std = local.dense_moments(parts, pre, split_of)
    assert count == expected_count > 0
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(std, expected_std, rtol=1e-12)
    _, mean_again, std_again = ray_executor.dense_moments(parts, pre, split_of)
    assert mean_again.tobytes() == mean.tobytes() and std_again.tobytes() == std.tobytes()  # a rerun: the same bits
    with pytest.raises(RecsysError, match="dense statistics: a Ray Data task failed: DuplicateError: "):
        ray_executor.dense_moments(parts, [pl.col("x"), pl.col("x")], split_of)  # a failing block: one line


def test_too_many_bad_rows_write_nothing(ray_cluster: str, tmp_path: Path) -> None:
    raw = _raw_criteo(tmp_path / "raw", files=2, rows=200)
    out = tmp_path / "out"
    done = _prepare("--format", "criteo", "--input", str(raw), "--out", str(out), "--max-bad-fraction", "0",
                    engine="ray", address=ray_cluster)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "3 of 403 rows are malformed" in done.stderr.replace("\n", " ")
    kept = tmp_path / "out.bad_rows.jsonl"
    left = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")
    assert left == ["out.bad_rows.jsonl", "raw"]  # no OUT, no temporary folder
    assert len(kept.read_text().splitlines()) == 3
    usage = run_cli("data", "prepare", "--format", "criteo", "--input", str(raw), "--out", str(out),
                    "--ray-address", ray_cluster)
    assert usage.returncode == 2 and "--ray-address needs --engine ray" in usage.stderr
    nobody = run_cli("data", "prepare", "--format", "criteo", "--input", str(raw), "--out", str(out), "--engine",
                     "ray", "--ray-address", f"127.0.0.1:{free_port()}")
    assert nobody.returncode == 2 and "no Ray head answers there" in nobody.stderr and not out.exists()


def _task_processes() -> list[int]:
    """Pids of Ray workers running one of the engine's tasks now (Ray titles them ``ray::<task>``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith((b"ray::parse_task", b"ray::number_part", b"ray::write_part")):
                found.append(int(entry.name))
    return found


@pytest.mark.long
def test_a_worker_killed_mid_job_is_retried(tmp_path: Path) -> None:
    """Without --ray-address the job starts a local cluster of its own; a task's worker killed there is retried."""
    raw = _raw_criteo(tmp_path / "raw", files=4, rows=10_000)
    run(CriteoSource(raw), tmp_path / "polars", PrepareOptions())  # what the command's defaults give
    log = tmp_path / "ray.log"
    with log.open("wb") as handle:
        job = cli_process(["data", "prepare", "--format", "criteo", "--input", str(raw), "--out",
                           str(tmp_path / "ray"), "--engine", "ray"], env={**os.environ, "COLUMNS": "200"},
                          stdout=handle)
    killed = None
    while job.poll() is None and killed is None:  # the first task seen running is killed, as a crash would
        running = _task_processes()
        if running:
            killed = running[0]
            os.kill(killed, signal.SIGKILL)
        else:
            time.sleep(0.01)
    assert job.wait(900) == 0, log.read_text()
    assert killed is not None, "the job ended before any task was seen running"
    said = log.read_text()
    assert "ray: a local cluster" in said
    assert "kept values of 26 tables counted" in said  # the vocabularies came from Ray Data
    _assert_same_output(tmp_path / "polars", tmp_path / "ray")
