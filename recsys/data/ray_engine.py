"""``recsys data prepare --engine ray``: the prepare engine's work spread over a Ray cluster.

The same pipeline as the polars engine (``recsys.data.pipeline``), with its per-file and
per-part steps run as Ray tasks, so the answers are the same: schema, vocabularies,
statistics, split membership, quarantined lines and output files.

1. parse: one task per input file (a source's ``tasks()``; MovieLens, whose histories
   need every rating, is one task) parses its chunks exactly as the polars engine does
   and writes them, with its malformed rows, into the job's temporary folder;
2. number: the driver adds up the chunks' row counts in input order, and one task per
   chunk gives its rows their global ordinals and seeded uniforms (what the random
   split and ``--split time`` without a timestamp read) — as the polars engine numbers
   them while it streams;
3. fit: per spool part, a task counts the train rows' values of every vocabulary table
   and the count, mean and squared deviations of every dense feature; the driver sums
   the counts and merges the moments in part order (Chan et al.), bit-identical to the
   polars engine's merge; the time split's cut points and leave-one-out's held-out rows
   are read by the driver (a column or two of every part);
4. write: per spool part, a task encodes it and writes its rows to the split folders.

Everything is written into the output folder's temporary sibling, renamed into place
only when the whole job succeeds, so the folder must be on storage every Ray node
sees (one machine, NFS, a shared volume). A task whose worker dies is retried
(``max_retries``, Ray's default 3; the steps are idempotent: a retry rewrites the same
files); one that raises fails the job, and nothing is written.

Ray tasks rather than Ray Data's shuffles: the aggregations are per-part sums merged on
the driver, which is what a groupby-count over value counts comes to, without Ray
Data's shuffle stages (a 100k-row ``groupby().count()`` took 10 s with the sort shuffle
and over 200 s with the default hash shuffle on this 2-core machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data.pipeline import (
    GIVEN_SPLIT,
    PrepareOptions,
    RawPart,
    Source,
    _Quarantine,
    numbered,
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

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()


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
    def start(cls, nodes: int = 2, cpus_per_node: int = 1, timeout: float = 300.0) -> LocalRayCluster:
        # No token authentication: it listens on loopback for one test or benchmark. Said explicitly, as a
        # ~/.ray/auth_token (which a local ray.init writes) would otherwise switch the head to tokens alone.
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
        port = free_port()
        cluster = cls(f"127.0.0.1:{port}", temp_dir, env)
        common = ["--num-cpus", str(cpus_per_node), "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        commands = [[str(_RAY_CLI), "start", "--head", "--port", str(port), "--include-dashboard", "false",
                     "--temp-dir", str(temp_dir), *common]]
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

    def stop(self) -> None:
        """``ray stop --force``: stops every Ray process of this user on the machine, this cluster's included."""
        subprocess.run([str(_RAY_CLI), "stop", "--force"], env=self._env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
