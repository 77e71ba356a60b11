"""``recsys data prepare --engine ray``: the prepare engine's work spread over a Ray cluster.

The same pipeline as the polars engine (``recsys.data.pipeline``), with its per-file and
per-part steps run as Ray tasks and its aggregations on Ray Data, so the answers are the
same: schema, vocabularies, statistics (to float tolerance), split membership, quarantined
lines and output files.

1. parse: one Ray task per input file (a source's ``tasks()``; MovieLens, whose histories
   need every rating, is one task) parses its chunks exactly as the polars engine does
   and writes them, with its malformed rows, into the job's temporary folder;
2. number: the driver adds up the chunks' row counts in input order, and one task per
   chunk gives its rows their global ordinals and seeded uniforms (what the random
   split and ``--split time`` without a timestamp read) — as the polars engine numbers
   them while it streams;
3. fit, on Ray Data over the spool parts (``read_parquet``, only the columns needed):
   - vocabularies: each block's train rows are counted by (table, value) where the block
     is read, then a hash-partitioned ``groupby(["table", "value"])`` sums the counts on
     the cluster (one partition per CPU) and drops the values under their table's
     ``min_count`` there, so only the kept values reach the driver (a Criteo-sized log
     has hundreds of millions of distinct values, most seen once);
   - dense statistics: each block's count, mean and squared deviations, merged on the
     driver (Chan et al., as the polars engine merges its parts): a few numbers per
     block, so no shuffle;
   - the time split's cut points and leave-one-out's held-out rows are read by the
     driver (a column or two of every part);
4. write: per spool part, a Ray task encodes it and writes its rows to the split
   folders, under the polars engine's file names.

Everything is written into the output folder's temporary sibling, renamed into place
only when the whole job succeeds, so the folder must be on storage every Ray node
sees (one machine, NFS, a shared volume). A task whose worker dies is retried
(``max_retries``, Ray's default 3; the steps are idempotent: a retry rewrites the same
files; Ray Data retries its own tasks); one that raises fails the job, and nothing is
written.

Why tasks for parsing, numbering and writing: a parse must name each bad row's file and
line, numbering needs the row counts of every earlier chunk in input order, and the
split files keep the polars engine's names (one per spool part and split), none of
which Ray Data's readers and writers do. Ray Data costs a few seconds more on a job's
first execution here (its shuffle's map and reduce tasks start worker processes of
their own, see ``worker_pools``), which the per-part tasks do not pay.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from recsys.data.pipeline import (
    GIVEN_SPLIT,
    PrepareOptions,
    RawPart,
    Source,
    _Quarantine,
    _value_counts,
    merge_moments,
    numbered,
    train_moments,
)
from recsys.data.progress import row_progress
from recsys.errors import RecsysError
from recsys.system import free_port

log = logging.getLogger(__name__)

ParseTask = Callable[[], Iterator[RawPart]]
_RAY_CLI = Path(sys.executable).with_name("ray")  # the `ray` command of this environment


def source_tasks(source: Source) -> list[ParseTask]:
    """The source's independent pieces of parsing (``tasks()``: one per input file), else all of it as one."""
    tasks = getattr(source, "tasks", None)
    return tasks() if tasks is not None else [source.parts]


class RayExecutor:
    """Runs the pipeline's steps as Ray tasks on the cluster at ``address`` (``auto``: the one this machine
    runs; None: a local one started for the job, stopped after it)."""

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 3) -> None:
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is in the pinned requirements
            raise RecsysError("--engine ray needs the ray package: pip install 'ray>=2.40'") from None
        self.max_retries = max_retries
        self._started = not ray.is_initialized()
        if self._started and address not in (None, "auto", "local") and "://" not in address:
            _check_reachable(address)  # ray.init would retry an unreachable host:port for minutes
        if self._started:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                # A task holds one CPU, so its polars uses one thread: tasks side by side use the cores, where
                # every task's own pool of all the host's cores would fight over them.
                # "local": a cluster of this machine for the job, even where one runs (ray.init(None) would join it).
                ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False,
                         runtime_env={"env_vars": {"POLARS_MAX_THREADS": "1"}})
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RecsysError(f"--ray-address {address}: cannot join the Ray cluster ({exc})") from None
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # this job's own bars and log lines say what runs
        # Ray Data's V1 Parquet reader: the V2 one lists the spool's few known files through a pool of footer
        # reader actors, which doubled each read of the Criteo sample here (15.9 s → 8.8 s for the counts).
        context.use_datasource_v2 = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        resources = ray.cluster_resources()
        log.info("ray: %s, %d nodes, %g CPUs", address or "a local cluster", len(ray.nodes()),
                 resources.get("CPU", 0))

    def map(self, fn: Callable[..., Any], args: list[tuple[Any, ...]], label: str) -> list[Any]:
        import ray
        from ray.exceptions import RayTaskError, WorkerCrashedError

        remote = ray.remote(fn).options(max_retries=self.max_retries, retry_exceptions=False,
                                        name=fn.__name__)
        started = time.perf_counter()
        refs = [remote.remote(*arg) for arg in args]
        try:
            with row_progress(f"{label} ({len(refs)} tasks on ray)") as advance:
                pending = list(refs)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    advance(len(done))
            results = ray.get(refs)
            log.info("ray: %s, %d tasks in %.1f s", label, len(refs), time.perf_counter() - started)
            return results
        except RayTaskError as exc:
            for ref in refs:
                ray.cancel(ref, force=True)
            cause = exc.cause if isinstance(exc.cause, Exception) else None
            if isinstance(cause, RecsysError):
                raise type(cause)(str(cause)) from None
            raise RecsysError(f"{label}: a Ray task failed: {str(exc).splitlines()[-1]}") from None
        except WorkerCrashedError as exc:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise RecsysError(f"{label}: a Ray worker died {self.max_retries + 1} times running one task; "
                              f"nothing written ({exc})") from None

    def count_values(self, parts: list[Path], split_of: pl.Expr, columns: dict[str, list[tuple[str, bool]]],
                     min_counts: dict[str, int]) -> dict[str, pl.DataFrame]:
        """A Ray Data groupby-sum: each block's train rows counted by (table, value) where it is read, the
        counts hash-partitioned over the cluster and summed there, the values under their table's
        ``min_counts`` dropped there; only the kept values come back to the driver."""
        from ray.data.aggregate import Sum

        started = time.perf_counter()
        with _ray_data_failures("counting values"):
            counted = (self._read(parts, {name for table in columns.values() for name, _ in table}, split_of)
                       .map_batches(_block_value_counts, fn_args=(split_of, columns), batch_format="pyarrow",
                                    batch_size=None)
                       .groupby(["table", "value"], num_partitions=self._partitions())
                       .aggregate(Sum("count", alias_name="count"))
                       .map_batches(_frequent, fn_args=(min_counts,), batch_format="pyarrow", batch_size=None))
            kept = self._collect(counted, _COUNTS_SCHEMA)
        log.info("ray data: %d kept values of %d tables counted in %.1f s", kept.height, len(columns),
                 time.perf_counter() - started)
        by_table = {name: frame.drop("table") for (name,), frame in kept.partition_by("table", as_dict=True).items()}
        empty = pl.DataFrame(schema={"value": pl.String, "count": pl.Int64})
        return {table: by_table.get(table, empty) for table in columns}

    def dense_moments(self, parts: list[Path], pre: list[pl.Expr],
                      split_of: pl.Expr) -> tuple[int, np.ndarray, np.ndarray]:
        """Each block's (count, mean, squared deviations) where it is read (a Ray Data map), merged here
        (Chan et al., as the polars engine merges its parts): a few numbers per block come back, so no
        shuffle is needed. Merged in a fixed order (sorted), as the blocks come back in any order, so a rerun
        gives the same bits; equal to the polars engine's to float tolerance, since Ray Data's blocks need
        not be the spool's parts."""
        started = time.perf_counter()
        with _ray_data_failures("dense statistics"):
            rows = (self._read(parts, {name for expr in pre for name in expr.meta.root_names()}, split_of)
                    .map_batches(_block_moments, fn_args=(pre, split_of), batch_format="pyarrow", batch_size=None)
                    .take_all())
        partials = sorted(((row["count"], np.asarray(row["mean"]), np.asarray(row["m2"])) for row in rows),
                          key=lambda partial: (partial[0], partial[1].tolist(), partial[2].tolist()))
        log.info("ray data: dense statistics of %d features from %d blocks in %.1f s", len(pre), len(partials),
                 time.perf_counter() - started)
        return merge_moments(partials, len(pre))

    def _read(self, parts: list[Path], columns: set[str], split_of: pl.Expr) -> Any:
        """The spool parts as a Ray Data dataset of ``columns`` and the columns ``split_of`` reads (the parts
        are on storage every node sees)."""
        import ray.data

        # A block per part: Ray Data's default of 200 read tasks cut the 20 parts of 1M rows into 200 blocks,
        # each paying a task's overhead and sending its own counts through the shuffle (the counts took
        # 29.5 s, 14.3 s with a block per part).
        return ray.data.read_parquet([str(part) for part in parts], override_num_blocks=len(parts)) \
            .select_columns(sorted(columns | set(split_of.meta.root_names())))  # pushed into the read

    def _partitions(self) -> int:
        """One shuffle partition per CPU of the cluster (Ray Data's default, 200, is for large clusters)."""
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    @staticmethod
    def _collect(dataset: Any, schema: dict[str, Any]) -> pl.DataFrame:
        import ray

        tables = [pl.from_arrow(table) for table in ray.get(dataset.to_arrow_refs())]
        tables = [table for table in tables if isinstance(table, pl.DataFrame) and table.height]
        return pl.concat(tables).cast(schema) if tables else pl.DataFrame(schema=schema)

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()


@contextmanager
def _ray_data_failures(label: str) -> Iterator[None]:
    """A failed Ray Data execution as one line naming the step and the error that started it."""
    from ray.exceptions import RayError

    try:
        yield
    except RayError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RecsysError):
            raise type(cause)(str(cause)) from None
        # Ray Data hands back a UserCodeException whose cause stays in the worker: only its text names it.
        raised = [(name.rsplit(".", 1)[-1], message) for name, message in _RAISED.findall(str(exc))]
        name, message = next(((n, m) for n, m in raised if n not in ("UserCodeException", "RayTaskError")),
                             (type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else ""))
        raise RecsysError(f"{label}: a Ray Data task failed: {name}: {message}") from None


_RAISED = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): (.*)$", re.MULTILINE)
_COUNTS_SCHEMA = {"table": pl.String, "value": pl.String, "count": pl.Int64}


def _block_value_counts(block: pa.Table, split_of: pl.Expr, columns: dict[str, list[tuple[str, bool]]]) -> pa.Table:
    """(table, value, count) of one block's train rows: the map side of the vocabulary groupby."""
    train = pl.from_arrow(block).lazy().filter(split_of == 0)
    counts = pl.collect_all([_value_counts(train, table_columns).select(pl.lit(table).alias("table"), "value", "count")
                             for table, table_columns in columns.items()])
    return pl.concat(counts).cast(_COUNTS_SCHEMA).to_arrow()


def _frequent(block: pa.Table, min_counts: dict[str, int]) -> pa.Table:
    """The summed counts of values seen at least their table's minimum count."""
    counts = pl.from_arrow(block)
    return counts.filter(pl.col("count") >= pl.col("table").replace_strict(min_counts, return_dtype=pl.Int64)).to_arrow()


def _block_moments(block: pa.Table, pre: list[pl.Expr], split_of: pl.Expr) -> pa.Table:
    """One row: (count, mean, sum of squared deviations) of one block's train rows' dense values."""
    count, mean, m2 = train_moments(pl.from_arrow(block).lazy(), pre, split_of)
    return pa.table({"count": [count], "mean": [mean.tolist()], "m2": [m2.tolist()]})


def worker_pools(cpus_per_node: int) -> dict[str, int]:
    """A Ray system config that keeps idle workers for Ray Data's three worker pools, for a driver that runs
    several jobs on one cluster. Ray Data's shuffle runs its map and its reduce tasks in worker pools of their own
    (runtime environments of their own), and Ray keeps only as many idle workers per node as the node has CPUs,
    so each step of each job killed the other pools' workers and started new ones (about 1.5 s each here). On a
    2-node local cluster of 1 CPU each, one driver's second 12,000-row job took 12.6 s with Ray's default and
    1.5 s with this. For one ``recsys data prepare`` job it does not pay: 1M rows took 38.6–44.5 s with it
    and 36.2–37.4 s without (3 alternating rounds each), so the engine leaves a cluster's config alone."""
    return {"num_workers_soft_limit": 3 * max(1, cpus_per_node)}


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line error unless something listens at ``host:port`` (the head's GCS port)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except ValueError:
        raise RecsysError(f"--ray-address {address}: expected host:port, 'auto' or ray://host:port") from None
    except OSError as exc:
        raise RecsysError(f"--ray-address {address}: no Ray head answers there ({exc.strerror or exc}); start one "
                          "with `ray start --head` or pass 'auto' on a node of a running cluster") from None


def parse_task(task: ParseTask, spool: Path, index: int,
               wanted: list[str]) -> tuple[list[tuple[str | None, int, bool]], int, str | None]:
    """Parse one piece of the input: its chunks as ``raw-INDEX-CHUNK.parquet`` (without ordinals) and its
    malformed rows as ``bad-INDEX.parquet``; returns ((file or None, rows, has the given split) per chunk,
    rows filtered out, the bad rows' file or None)."""
    chunks: list[tuple[str | None, int, bool]] = []
    filtered = 0
    bad: list[pl.DataFrame] = []
    for number, part in enumerate(task()):
        if part.bad is not None and part.bad.height:
            bad.append(part.bad)
        rows, given = part.rows, GIVEN_SPLIT in part.rows.columns
        path = None
        if rows.height:
            path = spool / f"raw-{index:05d}-{number:05d}.parquet"
            rows.select(wanted + ([GIVEN_SPLIT] if given else [])).write_parquet(path)
        chunks.append((None if path is None else str(path), rows.height, given))
        filtered += part.filtered
    bad_file = None
    if bad:
        bad_file = spool / f"bad-{index:05d}.parquet"
        pl.concat(bad).write_parquet(bad_file)
    return chunks, filtered, None if bad_file is None else str(bad_file)


def number_part(raw: str, part: str, first_row: int, seed: int) -> int:
    """Give a parsed chunk's rows their global ordinals and uniforms; writes it as spool part ``part``.
    Every step is idempotent (same inputs, same files), so Ray may run it again after a worker dies."""
    rows = numbered(pl.read_parquet(raw), first_row, seed)
    rows.write_parquet(part)
    return rows.height  # the raw chunk stays until every chunk is numbered: a retried task reads it again


def spool_distributed(source: Source, spool: Path, quarantine: _Quarantine, options: PrepareOptions,
                      executor: Any) -> tuple[int, int]:
    """The polars engine's ``_spool_parts`` on an executor: the same spool parts (names, rows, ordinals) and
    the same quarantine file; returns (good rows, filtered rows)."""
    wanted = [*source.schema.columns, *options.passthrough]
    tasks = source_tasks(source)
    parsed = executor.map(parse_task, [(task, spool, index, wanted) for index, task in enumerate(tasks)], "parsing")
    good = filtered = chunk_index = 0
    given = False
    numbering: list[tuple[str, str, int, int]] = []
    for chunks, task_filtered, bad_file in parsed:
        if bad_file is not None:
            quarantine.add(pl.read_parquet(bad_file))
            Path(bad_file).unlink()
        for raw, rows, has_given in chunks:
            if raw is not None:
                given = given or has_given
                if given and not has_given:
                    raise RecsysError(f"input part {chunk_index} has no {GIVEN_SPLIT} column but an earlier one had")
                numbering.append((raw, str(spool / f"part-{chunk_index:05d}.parquet"), good, options.seed))
                good += rows
            chunk_index += 1
        filtered += task_filtered
    executor.map(number_part, numbering, "numbering rows")
    for raw, *_ in numbering:
        Path(raw).unlink()
    return good, filtered


class LocalRayCluster:
    """A Ray cluster on this machine as ``ray start`` makes one: a head node and ``nodes - 1`` more node
    processes joining it, each offering ``cpus_per_node`` CPUs, on loopback (for tests and benchmarks)."""

    def __init__(self, address: str, temp_dir: Path, env: dict[str, str]) -> None:
        self.address, self.temp_dir, self._env = address, temp_dir, env

    @classmethod
    def start(cls, nodes: int = 2, cpus_per_node: int = 1, timeout: float = 300.0,
              keep_idle_workers: bool = False) -> LocalRayCluster:
        """``keep_idle_workers``: the head's system config is ``worker_pools`` (for a driver that runs many
        jobs, as the tests' does); else Ray's defaults, as a plain ``ray start``."""
        # No token authentication: it listens on loopback for one test or benchmark. Said explicitly, as a
        # ~/.ray/auth_token (which a local ray.init writes) would otherwise switch the head to tokens alone.
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
        port = free_port()
        cluster = cls(f"127.0.0.1:{port}", temp_dir, env)
        common = ["--num-cpus", str(cpus_per_node), "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        commands = [[str(_RAY_CLI), "start", "--head", "--port", str(port), "--include-dashboard", "false",
                     "--temp-dir", str(temp_dir), *common]]
        if keep_idle_workers:
            commands[0] += ["--system-config", json.dumps(worker_pools(cpus_per_node))]
        commands += [[str(_RAY_CLI), "start", "--address", cluster.address, *common]] * (nodes - 1)
        try:
            for command in commands:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
                if done.returncode != 0:
                    raise RecsysError(f"{' '.join(command[1:3])} failed: {(done.stdout + done.stderr)[-800:]}")
        except BaseException:
            cluster.stop()
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        return cluster

    def stop(self, timeout: float = 60.0) -> None:
        """SIGKILL to this cluster's processes (those started with its temporary folder: the GCS, raylets,
        monitors) and all their descendants (agents, workers), then its folder removed. Not ``ray stop``, which
        stops every Ray cluster of this user on the machine, and took 7 s here."""
        parents: dict[int, list[int]] = {}
        roots = []
        marker = str(self.temp_dir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
                if marker in (entry / "cmdline").read_bytes():
                    roots.append(int(entry.name))
        doomed, pending = set(), list(roots)
        while pending:
            pid = pending.pop()
            if pid not in doomed and pid != os.getpid():
                doomed.add(pid)
                pending.extend(parents.get(pid, []))
        for pid in doomed:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(_running(pid) for pid in doomed) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting for its parent."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
