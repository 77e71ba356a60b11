"""``recsys train``: check everything that can be checked up front, then run the job on N processes.

With ``--nproc 1`` the job runs in this process; with N > 1 this process becomes a
torchrun (torch elastic) agent for N local workers; under an outer ``torchrun``
(multi-host, see deploy/) every worker runs the job directly. Configuration,
data and plan errors are found before any worker starts and print one line.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from recsys.config import TrainConfig
from recsys.data.layout import load_schema, split_files
from recsys.errors import RecsysError

if TYPE_CHECKING:  # the trainer imports torch; keep `recsys --help` fast
    from recsys.train.trainer import TrainJob

_ERROR_DIR = "RECSYS_WORKER_ERRORS"  # where failing workers leave their one-line message for the agent


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
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out "
                                "(any process count)."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed of initialisation and shuffling "
                                    "(overrides the config's seed)."),
) -> None:
    """Train a model with torchrec sharding and export RUN/artifact/.

    Example: recsys train --model dlrm --data .demo/ctr --out runs/dlrm --set trainer.epochs=2 --nproc 2
    """
    from recsys.distributed.env import launched_by_torchrun
    from recsys.train.trainer import TrainJob

    settings = TrainConfig.load(config, overrides)
    if seed is not None:
        settings = settings.model_copy(update={"seed": seed})
    job = TrainJob(model=model, data=data, out=out, config=settings, resume=resume)
    if launched_by_torchrun():
        _run_worker(job)
        return
    _check(job, nproc)
    if nproc == 1:
        _run_worker(job)
    else:
        _launch(job, nproc)


def _check(job: TrainJob, nproc: int) -> None:
    """Fail before starting workers: model and config, data directory, run directory, sharding plan."""
    import torch

    from recsys.distributed.sharding import check_sparse_optimizer, plan
    from recsys.models import build_model, model_spec
    from recsys.train.trainer import check_run_dir, local_batch_size

    model_spec(job.model)
    if not job.data.is_dir():
        raise RecsysError(f"--data {job.data}: directory not found")
    schema = load_schema(job.data)
    for split in ("train", "valid", "test"):
        if not split_files(job.data, split):
            raise RecsysError(f"{job.data / split}: no Parquet files")
    check_run_dir(job.out, job.resume)
    local_batch_size(job.config, nproc)
    model = build_model(job.model, schema, job.config.model, job.config.embedding, embedding_device="meta")
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    check_sparse_optimizer(job.config, device)
    plan(model, job.config, nproc, nproc, device)


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


def _launch(job: TrainJob, nproc: int) -> None:
    """Run ``nproc`` local workers through torch elastic (what torchrun runs), and wait for them."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from recsys.system import free_port

    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # failures are reported below, in one line
    threads = max(1, (os.cpu_count() or 1) // nproc)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    with tempfile.TemporaryDirectory(prefix="recsys-train-") as errors:
        os.environ[_ERROR_DIR] = errors
        launch = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"recsys-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
            monitor_interval=0.5, start_method="spawn",
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
