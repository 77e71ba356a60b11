"""``recsys train``: check everything that can be checked up front, then run the job on N processes.

With ``--nproc 1`` the job runs in this process; with N > 1 this process becomes a
torchrun (torch elastic) agent for N local workers; under an outer ``torchrun``
(multi-host, see deploy/) every worker runs the job directly. Configuration,
data and plan errors are found before any worker starts and print one line.

One job per run folder: the process that owns the job (this one; under an outer
torchrun, rank 0) holds an exclusive lock on ``RUN/.lock`` from before the checks
until the job ends, so a second ``train`` on the same ``--out`` fails at once
naming the holder. A resume starts from the run's saved ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from recsys.config import TrainConfig
from recsys.data.layout import split_files
from recsys.errors import RecsysError

if TYPE_CHECKING:  # the trainer imports torch; keep `recsys --help` fast
    import torch

    from recsys.schema import Schema
    from recsys.train.trainer import TrainJob

_ERROR_DIR = "RECSYS_WORKER_ERRORS"  # where failing workers leave their one-line message for the agent
_START_ENV, _START_METHODS = "RECSYS_WORKER_START", ("fork", "spawn", "forkserver")  # how workers start


def train(
    model: str = typer.Option(..., "--model", help="Registered model name, e.g. dlrm."),
    data: Path = typer.Option(..., "--data", help="Prepared data directory (schema.json, train/, valid/, test/)."),
    out: Path = typer.Option(..., "--out", help="Run directory: metrics.jsonl, plan.txt, checkpoints/, artifact/."),
    config: Path | None = typer.Option(None, "--config", help="YAML with model, embedding, optimizer, sharding, "
                                       "trainer sections; unknown keys are errors."),
    overrides: list[str] = typer.Option([], "--set", help="Override one key, e.g. --set optimizer.dense.lr=0.002 "
                                        "--set trainer.epochs=2 (repeatable; values parsed as YAML)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this host (torchrun: gloo on CPU, nccl on "
                              "GPU). 1 runs the same code in this process."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out (any "
                                "process count), with the run's saved config.yaml; --config/--set may change "
                                "only trainer.epochs, max_steps, log_every, checkpoint_every, keep_checkpoints, "
                                "progress, eval_batch_size, pipeline and sharding.topology."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed of initialisation and shuffling "
                                    "(overrides the config's seed)."),
    schema_file: Path | None = typer.Option(None, "--schema", help="Train on a pruned schema of --data (from "
                                            "recsys features select): only its fields are read; it must describe "
                                            "the data as prepared (fields may only be dropped)."),
) -> None:
    """Train a model with torchrec sharding and export RUN/artifact/.

    Example: recsys train --model dlrm --data .demo/ctr --out runs/dlrm --set trainer.epochs=2 --nproc 2
    """
    from recsys.system import thread_policy

    chosen = thread_policy(int(os.environ.get("LOCAL_WORLD_SIZE", nproc)))  # before torch loads
    from recsys.distributed.env import launched_by_torchrun
    from recsys.train.trainer import TrainJob

    if chosen:
        logging.getLogger(__name__).debug("OpenMP settings: %s", chosen)

    def job() -> TrainJob:
        settings = _settings(model, out, config, overrides, seed, resume)
        return TrainJob(model=model, data=data, out=out, config=settings, resume=resume, schema_file=schema_file)

    if launched_by_torchrun():  # one process of an outer torchrun: rank 0 owns the run folder
        with _run_folder(out) if os.environ.get("RANK") == "0" else contextlib.nullcontext():
            _run_worker(job())
        return
    with _run_folder(out):
        start_method = _start_method() if nproc > 1 else ""  # a bad RECSYS_WORKER_START: before any work
        if start_method == "fork":
            _agent_single_threaded()
        checked = job()
        _check(checked, nproc)
        if nproc == 1:
            _run_worker(checked)
        else:
            _launch(checked, nproc, start_method)


def _settings(model: str, out: Path, path: Path | None, overrides: list[str], seed: int | None,
              resume: bool) -> TrainConfig:
    """The resolved config: a resume starts from the run's saved config.yaml (when it has one), a new run from
    the defaults; then --config, --set and --seed."""
    from recsys.train.trainer import CONFIG_FILE, resolved_config

    saved = out / CONFIG_FILE
    base = TrainConfig.read(saved) if resume and saved.is_file() else None
    settings = TrainConfig.load(path, overrides, base=base)
    if seed is not None:
        settings = settings.model_copy(update={"seed": seed})
    return resolved_config(model, settings)


@contextlib.contextmanager
def _run_folder(out: Path) -> Iterator[None]:
    """Create the run folder and hold its lock for the block. A folder this call created is removed again when
    the block fails before writing anything into it (a config error leaves nothing behind)."""
    from recsys.system import exclusive_lock
    from recsys.train.trainer import LOCK_FILE

    try:
        created = not out.exists()
        if not created and not out.is_dir():
            raise RecsysError(f"--out {out}: is a file; the run directory must be a directory")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecsysError(f"--out {out}: cannot create the run directory ({exc.strerror or exc})") from None
    with exclusive_lock(out / LOCK_FILE, f"run folder {out}"):
        try:
            yield
        except BaseException:
            if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:
                (out / LOCK_FILE).unlink()
                with contextlib.suppress(OSError):  # another command has just created something in it
                    out.rmdir()
            raise


def _check(job: TrainJob, nproc: int) -> None:
    """Fail before starting workers: model and config, data directory, run directory, sharding plan."""
    import torch

    from recsys.distributed.checkpoint import latest
    from recsys.distributed.sharding import check_sparse_optimizer, plan
    from recsys.models import build_model, model_spec
    from recsys.train.trainer import CHECKPOINTS, check_resume, check_run_dir, local_batch_size

    model_spec(job.model)
    if not job.data.is_dir():
        raise RecsysError(f"--data {job.data}: directory not found")
    schema = job.schema()
    for split in ("train", "valid", "test"):
        if not split_files(job.data, split):
            raise RecsysError(f"{job.data / split}: no Parquet files")
    check_run_dir(job.out, job.resume)
    last = latest(job.out / CHECKPOINTS) if job.resume else None
    if last is not None:
        check_resume(job, last, schema)
    local_batch_size(job.config, nproc)
    model = build_model(job.model, schema, job.config.model, job.config.embedding, embedding_device="meta")
    _check_task(job, model, schema)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    check_sparse_optimizer(job.config, device)
    plan(model, job.config, nproc, nproc, device)


def _check_task(job: TrainJob, model: torch.nn.Module, schema: Schema) -> None:
    """A retriever (its forward gives PairScores) trains on implicit data and a ranking model on anything else;
    a mismatch fails here, in one line, rather than in the first step's loss."""
    from recsys.models.retriever import is_retriever
    from recsys.tasks import task_spec

    task = task_spec(schema).name
    if is_retriever(model) and task != "implicit":
        raise RecsysError(f"--model {job.model}: a retriever, which trains on implicit data (recsys data synth "
                          f"--kind implicit, or prepare --task implicit); --data {job.data} holds a {task} task")
    if not is_retriever(model) and task == "implicit":
        raise RecsysError(f"--model {job.model}: a ranking model; --data {job.data} holds implicit data, which "
                          "trains retrievers (two_tower, mf, ...)")


def _agent_single_threaded() -> None:
    """The agent computes nothing worth threads, and on CPU it forks its workers (see ``_launch``): GNU OpenMP
    hangs a forked child whose parent ever ran a parallel region, so an agent that forks never runs one. Each
    worker sets its own thread count (``init_distributed``)."""
    import torch

    torch.set_num_threads(1)


def _start_method() -> str:
    """``fork`` on CPU: the workers inherit the agent's imported torch, torchrec and recsys instead of importing
    them again (about 8 s of CPU each); ``spawn`` with CUDA, which a forked child cannot use once the parent
    has touched it. ``RECSYS_WORKER_START`` chooses (e.g. ``spawn`` for a model library that is not fork-safe)."""
    import torch

    chosen = os.environ.get(_START_ENV, "")
    if chosen not in ("", *_START_METHODS):
        raise RecsysError(f"{_START_ENV}={chosen!r}: expected one of {', '.join(_START_METHODS)} (or unset)")
    return chosen or ("spawn" if torch.cuda.is_available() else "fork")


def _run_worker(job: TrainJob) -> None:
    from recsys.cli.main import setup_logging
    from recsys.train.trainer import train as run

    setup_logging(int(os.environ.get("RECSYS_LOG_LEVEL", logging.INFO)))
    try:
        run(job)
    except RecsysError as exc:
        errors = os.environ.get(_ERROR_DIR)
        if errors:
            Path(errors, f"rank-{os.environ.get('RANK', '0')}.txt").write_text(str(exc))
        raise


def _launch(job: TrainJob, nproc: int, start_method: str) -> None:
    """Run ``nproc`` local workers through torch elastic (what torchrun runs), and wait for them."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from recsys.system import free_port

    if start_method == "fork":
        gc.collect()
        gc.freeze()  # the workers' collections and exit skip the inherited heap instead of copying its pages
    for name in ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # failures are reported below, in one line
    with tempfile.TemporaryDirectory(prefix="recsys-train-") as errors:
        os.environ[_ERROR_DIR] = errors
        launch = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"recsys-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
            monitor_interval=0.5, start_method=start_method,
        )
        try:
            elastic_launch(launch, _run_worker)(job)
        except ChildFailedError as exc:
            messages = sorted(Path(errors).glob("rank-*.txt"))
            if messages:
                raise RecsysError(messages[0].read_text()) from None
            first = next(iter(exc.failures.values()))
            raise RecsysError(f"training worker (local rank {first.local_rank}) failed with exit code "
                              f"{first.exitcode}; see its output above") from None
        finally:
            os.environ.pop(_ERROR_DIR, None)
