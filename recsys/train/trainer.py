"""The training job one process runs: shard, train, evaluate, checkpoint, export.

Every process of a job runs ``train(job)``; rank 0 alone writes the run folder's
files (plan, metrics, artifact). The same code runs with one process (a gloo group
of one) and under torchrun with many.

Resuming: a checkpoint records the epoch and the number of global batches already
taken in it. With the default ``global`` partition the batch sequence does not
depend on the process count, so a run resumes with any number of processes and
continues with exactly the batches it would have seen. It also records the model,
the resolved config and the data's schema, and a resume that would change any of
them (but the keys in ``recsys.config.RESUMABLE``) is refused.

Divergence: a NaN or infinite loss stops the job with a one-line error, keeping
the last good checkpoint. The loss is checked where it is read anyway (each
``log_every`` window: reading it on every step would stall a GPU's queue, and a
late stop costs at most ``log_every`` wasted steps), and the weights before every
checkpoint and evaluation (and ``artifact.save`` before export), so a non-finite
value is never saved and a diverged run never exports an artifact.

Precision: ``trainer.precision`` (``recsys.precision``) decides the training steps' compute; the weights stay
fp32 and evaluation runs fp32, so the metrics describe the artifact as ``recsys serve`` scores it by default.
The precision used is in every train line of metrics.jsonl, in metrics.json (``train.precision``) and in the
artifact's manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from recsys import artifact
from recsys.config import RESUMABLE, Partition, TrainConfig, resumable
from recsys.data.layout import load_schema, read_stats
from recsys.data.reader import ParquetReader
from recsys.distributed import checkpoint, sharding
from recsys.distributed.env import DistEnv, init_distributed, shutdown
from recsys.distributed.export import full_tensor, gather_state_dict
from recsys.distributed.init import init_embeddings
from recsys.embeddings import TablePart, embedding_parameters, full_table_bytes, model_bytes
from recsys.errors import RecsysError
from recsys.models import build_model, embedded_schema, model_config
from recsys.models.retriever import Retriever, is_retriever
from recsys.precision import resolve as resolve_precision
from recsys.schema import Schema
from recsys.system import ThreadGovernor, threads_chosen, write_atomic
from recsys.tasks import EvalSplit, TaskSpec, task_spec
from recsys.train.evaluate import evaluate_split
from recsys.train.retrieval import catalogue_vectors, training_interactions
from recsys.train.step import pipelined_steps, train_step

log = logging.getLogger(__name__)

METRICS_LOG, PLAN_FILE, CHECKPOINTS, ARTIFACT, CONFIG_FILE, LOCK_FILE = (
    "metrics.jsonl", "plan.txt", "checkpoints", "artifact", "config.yaml", ".lock")


@dataclass(frozen=True)
class TrainJob:
    model: str
    data: Path
    out: Path
    config: TrainConfig
    resume: bool = False
    schema_file: Path | None = None  # --schema: a pruned schema of the data set (``features select``)

    def schema(self) -> Schema:
        """The data set's schema, or the pruned one given with ``--schema`` once checked against it."""
        schema = load_schema(self.data)
        if self.schema_file is None:
            return schema
        from recsys.features.select import check_subset

        selected = Schema.load(self.schema_file)
        check_subset(schema, selected, f"--schema {self.schema_file}")
        return selected


@dataclass
class _Position:
    epoch: int = 0
    step_in_epoch: int = 0  # global batches of this epoch already trained on
    step: int = 0  # global batches trained on in total
    samples: int = 0
    train_seconds: float = 0.0


def local_batch_size(config: TrainConfig, world_size: int) -> int:
    batch = config.trainer.batch_size
    if batch % world_size:
        raise RecsysError(f"trainer.batch_size {batch} is not divisible by the {world_size} processes")
    return batch // world_size


def _reader(job: TrainJob, split: str, env: DistEnv, train: bool, schema: Schema) -> ParquetReader:
    trainer = job.config.trainer
    if train:
        return ParquetReader(
            job.data, split, local_batch_size(job.config, env.world_size), shuffle=trainer.shuffle,
            shuffle_buffer=trainer.shuffle_buffer, drop_last=True, num_workers=trainer.num_workers,
            rank=env.rank, world_size=env.world_size, seed=job.config.seed, partition=trainer.partition.value,
            pin_memory=env.device.type == "cuda", schema=schema)
    # Evaluation reads disjoint rows per process: every row once, the order is irrelevant.
    return ParquetReader(job.data, split, trainer.eval_batch_size, num_workers=trainer.num_workers,
                         rank=env.rank, world_size=env.world_size, partition="rank", schema=schema)


class _MetricsLog:
    """``RUN/metrics.jsonl``, one JSON object per line, written by rank 0 only."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            # Lines past the checkpoint were written by the interrupted run and will be written again.
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif enabled and resume_step is None:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(artifact.json_text(record) + "\n")


def _mean_over_ranks(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return float(tensor.item())


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:>8.0f} samples/s  loss {task.fields[loss]:.4f}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled,
                    transient=False)


def check_run_dir(out: Path, resume: bool) -> None:
    """Refuse to start over a run that has checkpoints unless resuming it."""
    if not resume and checkpoint.checkpoints(out / CHECKPOINTS):
        raise RecsysError(f"{out}: already holds checkpoints; pass --resume to continue that run, "
                          "or choose another --out")


def resolved_config(model: str, config: TrainConfig) -> TrainConfig:
    """The config with the model section's defaults filled in: what config.yaml and checkpoints record."""
    return config.model_copy(update={"model": model_config(model, config.model).model_dump(mode="json")})


def schema_digest(schema: Schema) -> str:
    return hashlib.sha256(schema.to_json().encode()).hexdigest()


def check_resume(job: TrainJob, latest: Path, schema: Schema) -> dict[str, Any]:
    """Refuse to continue ``latest`` with another model, data schema or config (but the RESUMABLE keys);
    returns its trainer state. Checkpoints written before these were recorded are compared with the run's
    config.yaml."""
    state = checkpoint.trainer_state(latest)
    if state.get("model", job.model) != job.model:
        raise RecsysError(f"--model {job.model}: {latest} was trained with --model {state['model']}")
    if state.get("schema_sha256", schema_digest(schema)) != schema_digest(schema):
        raise RecsysError(f"--data {job.data}: its schema differs from the data {latest} was trained on "
                          f"({state.get('data', 'unknown')}); resume with that data or start a new --out")
    if "config" in state:
        trained = TrainConfig.from_dict(state["config"], where=f"{latest / checkpoint.TRAINER_FILE} config")
    elif (job.out / CONFIG_FILE).is_file():
        trained = TrainConfig.read(job.out / CONFIG_FILE)
    else:
        return state
    for key, old, new in resolved_config(job.model, trained).changes(resolved_config(job.model, job.config)):
        if not resumable(key):
            raise RecsysError(f"--resume: {key} would change from {old!r} to {new!r}, but {latest} was trained "
                              f"with {old!r}; a resumed run may change only {', '.join(RESUMABLE)} "
                              "(start a new --out to train with other values)")
    return state


class Diverged(RecsysError):
    """The loss or the weights became NaN or infinite."""


def train(job: TrainJob) -> dict[str, Any]:
    """Run the job in this process (one of ``world_size``); returns the final metrics (all ranks)."""
    env = init_distributed()
    try:
        metrics = _train(job, env)
    except Exception:
        shutdown(failed=True)
        raise
    except BaseException:  # Ctrl-C, SystemExit: leave at once
        shutdown()
        raise
    shutdown()
    return metrics


def _train(job: TrainJob, env: DistEnv) -> dict[str, Any]:
    config, main = job.config, env.is_main
    console = Console(stderr=True)
    schema = job.schema()
    task = task_spec(schema)
    watched = _watched_metric(task, config)
    latest = checkpoint.latest(job.out / CHECKPOINTS) if job.resume else None
    if latest is not None:
        check_resume(job, latest, schema)  # before config.yaml is rewritten with this run's values
    if main:
        job.out.mkdir(parents=True, exist_ok=True)
        write_atomic(job.out / CONFIG_FILE, config.to_yaml())  # other hosts' processes may read it
    torch.manual_seed(config.seed)  # dense layers: the same initial values on every rank and process count
    model = build_model(job.model, schema, config.model, config.embedding, embedding_device="meta")
    if callable(getattr(model, "attach_interactions", None)):  # a graph retriever (issue 14, interface 3)
        model.attach_interactions(*training_interactions(job.data, schema))
    tables = {name: table for name, (_, table) in sharding.embedding_tables(model).items()}
    full_bytes = full_table_bytes(embedded_schema(job.model, schema, config.model), config.embedding)
    sizes = model_bytes(model) | {"embedding_bytes_full": full_bytes, "embedding_params": embedding_parameters(model),
                                  "embedding_params_full": full_bytes // 4}
    plan = sharding.plan(model, config, env.world_size, env.local_world_size, env.device, dist.group.WORLD)
    text = sharding.plan_text(plan, model)
    if main:
        (job.out / PLAN_FILE).write_text(text)
        if log.isEnabledFor(logging.INFO):
            console.print(f"sharding plan for {env.world_size} process(es) (saved to {job.out / PLAN_FILE}):\n"
                          + text.rstrip(), highlight=False, soft_wrap=True, markup=False)
    dmp = sharding.shard(model, config, env, plan)
    init_embeddings(dmp, tables, config.seed)
    optimizer = sharding.optimizer(dmp, config)
    base_rates = sharding.base_learning_rates(optimizer, config)

    use_pipeline = config.trainer.pipeline == "on" or (config.trainer.pipeline == "auto"
                                                       and env.device.type == "cuda")
    if use_pipeline and not getattr(model, "pipelineable", True):
        if config.trainer.pipeline == "on":
            raise RecsysError(f"trainer.pipeline: --model {job.model} looks up embeddings inside its forward (sampled "
                              "items) that torchrec's train pipeline cannot prefetch; use auto or off")
        use_pipeline = False
    precision = resolve_precision(config.trainer.precision, env.device)
    if main:
        log.info("training at %s (trainer.precision %s); evaluation at fp32", precision, config.trainer.precision)
    train_reader = _reader(job, "train", env, train=True, schema=schema)
    steps_per_epoch = train_reader.num_batches
    if steps_per_epoch == 0:
        raise RecsysError(f"{job.data / 'train'}: {train_reader.total_rows} rows make no full batch of "
                          f"{config.trainer.batch_size}")
    total_steps = config.trainer.epochs * steps_per_epoch
    if config.trainer.max_steps is not None:
        total_steps = min(total_steps, config.trainer.max_steps)

    keys = {table: key for key, table in tables.items()}  # physical table → its state-dict key
    moving = [m for m in dmp.modules() if isinstance(m, TablePart) and callable(getattr(m, "update", None))]

    def table_value(table: str) -> torch.Tensor:
        return full_tensor(dmp, keys[table])

    def split(name: str) -> EvalSplit:
        return EvalSplit(job.data, name, env.device, lambda: _reader(job, name, env, train=False, schema=schema))

    position = _Position()
    if latest is not None:
        state = checkpoint.load(latest, dmp, optimizer)
        if config.trainer.partition is Partition.RANK and state["world_size"] != env.world_size \
                and state["step_in_epoch"]:
            raise RecsysError(f"{latest}: written by {state['world_size']} processes mid-epoch with "
                              f"trainer.partition=rank; resume with {state['world_size']} processes or use "
                              "the global partition")
        if not all(isinstance(state.get(k), int | float) for k in _Position.__dataclass_fields__):
            raise RecsysError(f"{latest / checkpoint.TRAINER_FILE}: expected numbers for "
                              f"{', '.join(_Position.__dataclass_fields__)}")
        position = _Position(**{k: state[k] for k in _Position.__dataclass_fields__})
        if main:
            log.info("resumed from %s (epoch %d, step %d) with %d process(es)", latest, position.epoch + 1,
                     position.step, env.world_size)
    elif job.resume and main:
        log.info("no checkpoint in %s: starting from the beginning", job.out / CHECKPOINTS)
    best = _best_of(state, latest) if latest is not None else None  # the best evaluation so far
    metrics_log = _MetricsLog(job.out / METRICS_LOG, main, position.step if latest is not None else None)
    good = latest  # the newest checkpoint with finite weights

    def diverged(what: str) -> Diverged:
        kept = f"the last good checkpoint, {good}, is kept" if good is not None else "no checkpoint was saved"
        return Diverged(f"training diverged at step {position.step} (epoch {position.epoch + 1}): {what}; "
                        f"stopped, {kept}. Lower optimizer.dense.lr / optimizer.sparse.lr or check the data "
                        f"in {job.data}")

    def check_weights(before: str) -> None:
        """Collective: every process takes rank 0's normalisation statistics, checks its shards, all agree."""
        sharding.sync_norm_statistics(dmp)
        bad = checkpoint.non_finite(dmp)
        if bad is not None:
            raise diverged(f"weights '{bad}' hold NaN or infinite values (checked before {before})")

    def save_checkpoint() -> None:
        nonlocal good
        check_weights("a checkpoint")
        state: dict[str, Any] = {k: getattr(position, k) for k in _Position.__dataclass_fields__}
        state |= {"world_size": env.world_size, "model": job.model, "config": config.model_dump(mode="json"),
                  "data": str(job.data), "schema_sha256": schema_digest(schema), "best": best}
        good = checkpoint.save(job.out / CHECKPOINTS, position.step, dmp, optimizer, state,
                               config.trainer.keep_checkpoints, protect_step=best["step"] if best else None)
        if main:
            log.debug("checkpoint %s", good)

    valid_metrics: dict[str, float] = {}
    stopping = config.trainer.early_stopping
    stopped_early = False
    # One CPU process whose thread count recsys chose gives threads up while other processes take cores.
    governor = (ThreadGovernor(torch.get_num_threads()) if env.world_size == 1 and env.device.type == "cpu"
                and threads_chosen() else None)
    dmp.train()
    with _progress(console, main and config.trainer.progress) as progress:
        bar = progress.add_task("train", total=total_steps, completed=position.step, rate=0.0, loss=float("nan"))
        while position.step < total_steps and position.epoch < config.trainer.epochs and not stopped_early:
            train_reader.set_epoch(position.epoch)
            train_reader.set_start(position.step_in_epoch)
            progress.update(bar, description=f"epoch {position.epoch + 1}/{config.trainer.epochs}")
            window_loss: torch.Tensor | float = 0.0
            window_steps, window_start = 0, time.perf_counter()
            tick = window_start  # train time counts reading and stepping, not evaluation or checkpoints
            if use_pipeline:
                steps = pipelined_steps(dmp, optimizer, iter(train_reader), env.world_size, env.device, task,
                                        precision)
            else:
                steps = (train_step(dmp, optimizer, batch.to(env.device, non_blocking=True), env.world_size, task,
                                    precision) for batch in train_reader)
            while position.step < total_steps:
                factor = sharding.schedule_factor(position.step, total_steps, config)
                for group, rate in zip(optimizer.param_groups, base_rates):
                    group["lr"] = rate * factor
                loss = next(steps, None)  # runs the step with the rate just set
                if loss is None:
                    break
                window_loss = window_loss + loss  # a tensor: no device sync until the log line
                now = time.perf_counter()
                position.train_seconds += now - tick
                tick = now
                position.step += 1
                position.step_in_epoch += 1
                position.samples += config.trainer.batch_size
                window_steps += 1
                threads = governor.update() if governor is not None else None
                if threads is not None:
                    log.info("other processes keep CPUs busy: torch threads now %d of %d", threads, governor.share)
                for part in moving:  # schemes whose structure moves with training (dsl's prune-and-grow)
                    part.update(position.step, total_steps, table_value)
                if position.step % config.trainer.log_every == 0 or position.step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    rate = window_steps * config.trainer.batch_size / max(elapsed, 1e-9)
                    mean_loss = _mean_over_ranks(float(window_loss) / window_steps, env.device)
                    metrics_log.write({"step": position.step, "epoch": position.epoch + 1, "split": "train",
                                       "precision": precision, "loss": mean_loss,
                                       "lr_sparse": config.optimizer.sparse.lr * factor,
                                       "lr_dense": config.optimizer.dense.lr * factor, "samples_per_s": rate})
                    if not math.isfinite(mean_loss):
                        raise diverged(f"mean loss {mean_loss} over steps {position.step - window_steps + 1}-"
                                       f"{position.step}")
                    progress.update(bar, rate=rate, loss=mean_loss)
                    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                progress.update(bar, completed=position.step)
                every = config.trainer.checkpoint_every
                if every and position.step % every == 0 and position.step_in_epoch < steps_per_epoch:
                    save_checkpoint()
                    tick = time.perf_counter()
            steps.close()  # detaches the pipeline before evaluation
            if position.step_in_epoch >= steps_per_epoch or position.step >= total_steps:
                check_weights("evaluation")
                valid_metrics = evaluate_split(dmp, split("valid"), task)
                metrics_log.write({"step": position.step, "epoch": position.epoch + 1, "split": "valid",
                                   **valid_metrics})
                value = valid_metrics[watched]
                if task.improved(watched, value, best["value"] if best else None, stopping.min_delta):
                    best = {"epoch": position.epoch + 1, "step": position.step, "value": value, "stale": 0,
                            "valid": valid_metrics}
                else:
                    assert best is not None
                    best["stale"] += 1
                    stopped_early = bool(stopping.patience) and best["stale"] >= stopping.patience
                if main:
                    log.info("epoch %d: valid %s%s", position.epoch + 1, task.summary(valid_metrics),
                             "" if best["step"] == position.step else
                             f" (best {watched} {best['value']:.4f} at epoch {best['epoch']})")
                    if stopped_early:
                        log.info("early stopping: valid %s has not improved for %d evaluation(s)", watched,
                                 best["stale"])
                if position.step_in_epoch >= steps_per_epoch:
                    position.epoch += 1
                    position.step_in_epoch = 0
                save_checkpoint()

    if best is not None and best["step"] != position.step:
        found = checkpoint.of_step(job.out / CHECKPOINTS, best["step"])
        if found is None:
            raise RecsysError(f"{job.out / CHECKPOINTS}: the best evaluation's checkpoint (step {best['step']}) "
                              "is missing")
        checkpoint.load(found, dmp, optimizer)
        if main:
            log.info("exporting the best evaluation's weights: epoch %d, step %d (valid %s %.4f)", best["epoch"],
                     best["step"], watched, best["value"])
    if best is not None:
        valid_metrics = best["valid"]
    elif not valid_metrics:  # resumed from the final checkpoint: nothing left to train
        valid_metrics = evaluate_split(dmp, split("valid"), task)
    test_metrics = evaluate_split(dmp, split("test"), task)
    metrics_log.write({"step": position.step, "epoch": position.epoch, "split": "test", **test_metrics})
    metrics = _final_metrics(job, env, position, valid_metrics, test_metrics) | sizes
    if governor is not None:  # the count recsys chose, not the governor's latest
        metrics["train.threads"] = governor.share
    metrics["train.precision"] = precision  # of this process's last steps (a resume may have changed it)
    if best is not None:
        metrics |= {"train.best_epoch": best["epoch"], "train.best_step": best["step"],
                    "train.stopped_early": stopped_early}
    state = gather_state_dict(dmp)
    if main:
        metrics |= _served_sizes(job.model, schema, config, state, sizes)
        items = _item_vectors(job, schema, config, state) if is_retriever(model) else None
        artifact.save(job.out / ARTIFACT, model_name=job.model, state=state, schema=schema, config=config,
                      metrics=metrics, data_dir=job.data, items=items,
                      extra={"world_size": env.world_size, "plan": text.splitlines(), "precision": precision})
        console.print(_summary(job, env, task, metrics), highlight=False, soft_wrap=True, markup=False)
    if dist.is_initialized():
        dist.barrier()
    return metrics


def _final_metrics(job: TrainJob, env: DistEnv, position: _Position, valid: dict[str, float],
                   test: dict[str, float]) -> dict[str, Any]:
    # Each process measures its own step time; the job's rate counts every process's samples.
    seconds = _mean_over_ranks(position.train_seconds, env.device)
    metrics: dict[str, Any] = {f"valid.{k}": v for k, v in valid.items()}
    metrics |= {f"test.{k}": v for k, v in test.items()}
    metrics |= {"train.samples": position.samples, "train.steps": position.step,
                "train.epochs": position.epoch, "train.seconds": seconds,
                "train.samples_per_s": position.samples / max(seconds, 1e-9), "train.world_size": env.world_size,
                "train.threads": torch.get_num_threads()}  # per process: recsys.system.thread_policy
    stats = read_stats(job.data)
    bayes = stats.get("splits_bayes", {}).get("test", {}).get("auc") if isinstance(stats, dict) else None
    if bayes is not None:
        metrics["test.bayes_auc"] = bayes
    return metrics


def _served_sizes(model_name: str, schema: Schema, config: TrainConfig, state: dict[str, torch.Tensor],
                  trained: dict[str, int]) -> dict[str, Any]:
    """Bytes of the model as ``recsys serve`` holds it by default: its tables at ``embedding.serving_precision``
    (fbgemm's quantised rows with their scale and bias, measured on a quantised copy), the rest fp32."""
    precision = config.embedding.serving_precision.value
    if precision in ("fp32", "bf16"):  # bf16 serving keeps fp32 tables and weights
        return {"served.precision": precision, "served.embedding_bytes": trained["embedding_bytes"],
                "served.dense_bytes": trained["dense_bytes"]}
    from kernels.quantize import dense_bytes, quantize_tables, served_embedding_bytes

    model = build_model(model_name, schema, config.model, config.embedding)
    model.load_state_dict(state)
    quantize_tables(model, precision)
    return {"served.precision": precision, "served.embedding_bytes": served_embedding_bytes(model),
            "served.dense_bytes": dense_bytes(model)}


def _item_vectors(job: TrainJob, schema: Schema, config: TrainConfig, state: dict[str, torch.Tensor]
                  ) -> artifact.ItemVectors:
    """The catalogue's vectors from the unsharded model as ``artifact.load`` rebuilds it (rank 0)."""
    model = build_model(job.model, schema, config.model, config.embedding)
    model.load_state_dict(state)
    assert isinstance(model, Retriever)
    return catalogue_vectors(model, job.data, schema)


def _best_of(state: dict[str, Any], latest: Path) -> dict[str, Any] | None:
    """The best evaluation a checkpoint records (None before any), checked: trainer.json is read from disk."""
    best = state.get("best")
    if best is None:
        return None
    fields = {"epoch": int, "step": int, "stale": int, "value": int | float, "valid": dict}
    if not isinstance(best, dict) or not all(isinstance(best.get(k), t) for k, t in fields.items()):
        raise RecsysError(f"{latest / checkpoint.TRAINER_FILE}: 'best' should hold "
                          f"{', '.join(fields)}, got {str(best)[:200]}")
    return best


def _watched_metric(task: TaskSpec, config: TrainConfig) -> str:
    """The validation metric early stopping and the best-epoch choice follow."""
    metric = config.trainer.early_stopping.metric or task.primary
    known = [m.key for m in task.metrics]
    if metric not in known:
        raise RecsysError(f"trainer.early_stopping.metric: '{metric}' is not a metric of the {task.name} task; "
                          f"known: {', '.join(known)}")
    return metric


def _summary(job: TrainJob, env: DistEnv, task: TaskSpec, metrics: dict[str, Any]) -> str:
    primary = metrics.get(f"test.{task.primary}")
    bayes = f" (Bayes-optimal AUC {metrics['test.bayes_auc']:.4f})" if "test.bayes_auc" in metrics else ""
    best = (f"; weights of epoch {metrics['train.best_epoch']} (the best valid {task.primary}"
            f"{', stopped early' if metrics.get('train.stopped_early') else ''})" if "train.best_epoch" in metrics
            else "")
    valid = metrics.get(f"valid.{task.primary}")
    return (f"Trained {job.model} on {job.data} for {metrics['train.steps']} steps "
            f"({metrics['train.samples']:,} samples) on {env.world_size} process(es) in "
            f"{metrics['train.seconds']:.1f} s, {metrics['train.samples_per_s']:,.0f} samples/s{best}. "
            f"Test {task.summary(metrics, 'test.')}{bayes if primary is not None else ''}; valid {task.primary} "
            f"{valid:.4f}. Artifact: {job.out / ARTIFACT}")
