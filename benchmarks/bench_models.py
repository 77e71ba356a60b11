"""Model zoo: every registered ranking model on the 3M-row synthetic set and on MovieLens, same budget, 3 seeds.

Issue #12. For each (dataset, model, seed) the real trainer runs in its own process
(``python -m recsys.cli.main train``, so runs are isolated and the command is the one a
user types; forked from a pre-imported interpreter, ``recsys/zygote.py``, so that each run
does not import torch again), then this process loads the exported artifact and measures:

- test AUC and log loss: the test split scored with the artifact (``recsys.artifact.load``,
  ``ParquetReader.iter_with_row_ids``, the task's link), the task's own offline metrics
  (scikit-learn); the trainer's ``test.auc`` is kept beside it as a check.
- gAUC: per-user AUC averaged over users weighted by their test impressions, users with one
  class skipped (Zhou et al., "Deep Interest Network", KDD 2018, eq. 1; BARS reports the same),
  users from the test Parquet's ``user_key`` column. Each user's AUC is the Mann–Whitney
  statistic with average ranks for ties, which is what ``sklearn.metrics.roc_auc_score``
  computes (tests/report/test_report_bench_models.py checks them equal user by user); it is
  computed over polars groups in one pass (under a second for 300,000 rows of 60,000 users, on
  a loaded machine) because scikit-learn costs 1–7 ms a call, minutes for that many users.
- parameters: all of the model's, and those of its embedding module (``model.sparse_arch``).
- training samples/s: ``train.samples_per_s`` of the artifact's metrics.json (reading and
  stepping; evaluation and checkpoints excluded); and the training process's CPU seconds
  (``cpu_s``, evaluation included, the imports that the zygote did once not), which a shared
  machine's load does not inflate.
- inference ms per 1,000 candidates: the forward of the test split's first 1,000 rows under
  ``torch.inference_mode``, after ``--warmup`` forwards, median over ``--rounds`` × ``--repeats``
  timed forwards; the artifacts of one dataset are timed in interleaved rounds (rotating order),
  so a load change on a shared machine hits every model alike.

Every figure is given as mean ± sample std over the seeds.

The budget (the same for every model): each model's own ``configs/MODEL.yaml`` (its tuned
architecture, optimizer, learning rates and batch size; none: the model's defaults), with
``trainer.epochs`` set to the dataset's cap (``--epochs``: 1 on the synthetic set, where the
configs were tuned for one epoch and a second over-fits; 10 on MovieLens), early stopping on
valid AUC with ``--patience`` evaluations (one per epoch), the best epoch's weights exported,
and ``trainer.max_steps`` cleared (``--quick``: a handful of steps). One process, all threads.

Data, prepared once and kept in ``--work``: ``recsys data synth --kind ctr --rows N`` (random
split, histories, a known Bayes-optimal AUC) and ``recsys data prepare --format movielens
--split time --task ctr`` of ml-latest-small (rating ≥ 4 is a click; histories of earlier
ratings), and the same with ``--split random`` (``movielens-random``: 80/10/10, the kind of split
RecBole's MovieLens-100K figures use; its histories may hold later ratings). A run whose settings (model, config file, overrides, seed, data) are unchanged is
reused from ``--work`` (``--fresh`` retrains); its samples/s is then that of the earlier run.

Published anchors (BARS, Zhu et al., "BARS: Towards Open Benchmarking for Recommender Systems",
SIGIR 2022; openbenchmark.github.io/BARS) are shown beside ours. They are other data and other
splits, so the numbers do not compare; the ordering does: on MovielensLatest_x1 DLRM, DCN-V2 and
AutoInt+ are within 0.0001 of each other, and on AmazonElectronics_x1 (histories) DIN leads
DCN-V2. The check computed here: which models are within noise of the best (|Δ mean AUC| <
2 × pooled std, pooled std = √((s₁² + s₂²)/2)), whether DLRM, DCN-V2 and AutoInt are all
pairwise within noise, and whether DIN is ahead on each dataset.

    .venv/bin/python benchmarks/bench_models.py            # every model, both datasets, 3 seeds
    .venv/bin/python benchmarks/bench_models.py --quick    # ~20,000 synthetic rows, a few steps: a smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

# This checkout's recsys, which the training subprocesses (``python -m`` in REPO) run too, whatever the
# editable install points at; then bench_data beside this file.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from bench_data import cpu_pressure, machine  # noqa: E402

from recsys import artifact as artifacts  # noqa: E402
from recsys.data.layout import load_schema, read_stats, split_files  # noqa: E402
from recsys.data.reader import ParquetReader  # noqa: E402
from recsys.models import model_names, model_spec  # noqa: E402
from recsys.tasks import task_spec  # noqa: E402
from recsys.types import Batch  # noqa: E402
from recsys.zygote import Zygote  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MOVIELENS = REPO.parent / "shared" / "datasets" / "movielens" / "ml-latest-small"
DATASETS = ("synthetic", "movielens", "movielens-random")
MOVIELENS_SPLITS = {"movielens": "time", "movielens-random": "random"}
METRICS = ("auc", "gauc", "logloss", "params", "embedding_params", "train_samples_per_s", "inference_ms_per_1000",
           "cpu_s")
RUN_RECORD = "bench-run.json"  # in a run folder: the settings it was trained with, for reuse
DATA_RECORD = "bench-data.json"  # in a data folder: the command that prepared it
NOISE_FACTOR = 2.0  # within noise: |Δ mean| < NOISE_FACTOR · pooled std

# BARS test AUC (openbenchmark.github.io/BARS), with the model of ours each row is about. ``autoint`` is
# AutoInt+ when its config adds the parallel DNN (model.dnn non-empty), plain AutoInt otherwise.
ANCHORS = [
    {"dataset": "MovielensLatest_x1", "model": "DLRM", "ours": "dlrm", "auc": 0.9691},
    {"dataset": "MovielensLatest_x1", "model": "DCN-V2", "ours": "dcnv2", "auc": 0.9691},
    {"dataset": "MovielensLatest_x1", "model": "AutoInt+", "ours": "autoint", "auc": 0.9692},
    {"dataset": "MovielensLatest_x1", "model": "AutoInt", "ours": "autoint", "auc": 0.9663},
    {"dataset": "AmazonElectronics_x1", "model": "DIN", "ours": "din", "auc": 0.8860},
    {"dataset": "AmazonElectronics_x1", "model": "DCN-V2", "ours": "dcnv2", "auc": 0.8812},
    # RecBole run with its defaults (early stopping on valid AUC) on MovieLens-100K, rating >= 4, user and item
    # side features, random 80/10/10, as measured for issue #12; compare with movielens-random.
    {"dataset": "RecBole, MovieLens-100K", "model": "DCN-V2", "ours": "dcnv2", "auc": 0.775},
    {"dataset": "RecBole, MovieLens-100K", "model": "AutoInt", "ours": "autoint", "auc": 0.785},
]
ANCHOR_SOURCE = ("BARS (Zhu et al., SIGIR 2022; openbenchmark.github.io/BARS) and RecBole (MovieLens-100K, "
                 "random 80/10/10, its defaults), test AUC; other data than ours (ml-latest-small has no user "
                 "side features): compare orderings and levels, not exact values")
PEERS = ("dlrm", "dcnv2", "autoint")  # BARS: within noise of each other on MovielensLatest_x1
HISTORY_MODEL = "din"


@dataclass(frozen=True)
class Settings:
    """What the command line decides."""

    models: list[str]
    seeds: list[int]
    datasets: list[str]
    synthetic_rows: int
    movielens: Path
    epochs: dict[str, int]
    patience: int
    max_steps: int | None
    work: Path
    out: Path
    rounds: int
    repeats: int
    warmup: int
    fresh: bool
    quick: bool


@dataclass
class RunResult:
    model: str
    dataset: str
    seed: int
    record: dict[str, Any] = field(default_factory=dict)  # the measured figures, or {"error": ...}
    artifact: Path | None = None


# ---- data ------------------------------------------------------------------------------------------

def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsys.cli.main", *args]


# Training runs and data preparation fork from one pre-imported interpreter (recsys/zygote.py) instead of
# each paying ~8 s of CPU for torch's, torchrec's and torchmetrics' imports: the figures are the job's own.
_ZYGOTE = Zygote(REPO)


def run_cli(command: list[str], log: Path | None) -> tuple[int, float]:
    """Run a ``cli(...)`` command with its output in ``log`` (None: discarded); (exit status, CPU seconds
    of the command and the processes it waited for)."""
    with open(log or os.devnull, "w") as handle, open(os.devnull, "rb") as nothing:
        process = _ZYGOTE.popen(command[3:], cwd=REPO, env=dict(os.environ), stdin=nothing, stdout=handle,
                                stderr=subprocess.STDOUT)
        returncode = process.wait()
    return returncode, process.cpu_s or 0.0


def prepare_data(name: str, settings: Settings) -> Path:
    """The prepared data folder of one dataset, made once in ``--work`` (again when its command changed)."""
    if name == "synthetic":
        out = settings.work / "data" / f"synthetic-{settings.synthetic_rows}"
        command = cli("-q", "data", "synth", "--kind", "ctr", "--rows", str(settings.synthetic_rows), "--seed", "0",
                      "--out", str(out), "--overwrite")
    else:
        out = settings.work / "data" / name
        command = cli("-q", "data", "prepare", "--format", "movielens", "--input", str(settings.movielens),
                      "--split", MOVIELENS_SPLITS[name], "--task", "ctr", "--out", str(out), "--overwrite")
    record = out / DATA_RECORD
    wanted = {"command": command[1:]}  # the interpreter's path does not change the data
    if record.is_file() and json.loads(record.read_text()) == wanted:
        return out
    log(f"preparing {name}: {shlex.join(command[1:])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    log_file = out.with_name(out.name + ".log")
    if run_cli(command, log_file)[0] != 0:
        raise SystemExit(f"preparing {name} failed:\n{log_file.read_text()[-3000:]}")
    record.write_text(json.dumps(wanted) + "\n")
    return out


def dataset_record(name: str, data: Path) -> dict[str, Any]:
    stats = read_stats(data)
    schema = load_schema(data)
    splits = stats.get("splits", {})
    return {
        "path": str(data),
        "rows": {split: rec.get("rows") for split, rec in splits.items()},
        "positive_rate": {split: rec.get("positive_rate") for split, rec in splits.items()},
        "test_bayes_auc": stats.get("splits_bayes", {}).get("test", {}).get("auc"),
        "split": stats.get("split"),
        "sequences": [s.name for s in schema.sequences],
        "user_key": schema.user_key.name if schema.user_key else None,
        "source": "recsys data synth --kind ctr" if name == "synthetic" else
                  f"recsys data prepare --format movielens --split {MOVIELENS_SPLITS[name]} --task ctr (ml-latest-small)",
    }


# ---- training --------------------------------------------------------------------------------------

def config_file(model: str) -> Path | None:
    path = REPO / "configs" / f"{model}.yaml"
    return path if path.is_file() else None


def budget_overrides(settings: Settings, dataset: str) -> list[str]:
    """The ``--set`` values every model gets on ``dataset``: the budget."""
    steps = "null" if settings.max_steps is None else str(settings.max_steps)
    return [f"trainer.epochs={settings.epochs[dataset]}", f"trainer.max_steps={steps}",
            f"trainer.early_stopping.patience={settings.patience}", "trainer.early_stopping.metric=auc",
            "trainer.progress=false"]


def train_command(model: str, data: Path, out: Path, seed: int, overrides: list[str]) -> list[str]:
    command = cli("-q", "train", "--model", model, "--data", str(data), "--out", str(out), "--seed", str(seed))
    config = config_file(model)
    if config is not None:
        command += ["--config", str(config.relative_to(REPO))]
    for value in overrides:
        command += ["--set", value]
    return command


def run_digest(command: list[str], data: Path, model: str) -> str:
    """What decides a run's result: the command (less the interpreter), the config's text, the data's stats."""
    config = config_file(model)
    parts = [*command[1:], config.read_text() if config else "", (data / "stats.json").read_text()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def train_run(model: str, dataset: str, data: Path, seed: int, settings: Settings, overrides: list[str] | None = None,
              variant: str | None = None, reuse_only: bool = False) -> tuple[Path | None, dict]:
    """Train (or reuse) one run; (artifact path or None, what to record about the run).

    ``overrides`` are ``--set`` values after the budget's (an embedding scheme, say), ``variant`` names them in
    the run's folder (``runs/DATASET/MODEL/VARIANT/seedN``); other benchmarks pass a Settings-like object
    with ``work``, ``fresh``, ``epochs``, ``max_steps`` and ``patience``. ``reuse_only``: a run not already in
    ``work`` is not trained but returned as an error (collecting runs that parallel invocations trained).
    """
    out = settings.work / "runs" / dataset / model / (variant or "") / f"seed{seed}"
    command = train_command(model, data, out, seed, budget_overrides(settings, dataset) + list(overrides or []))
    digest = run_digest(command, data, model)
    info: dict[str, Any] = {"command": shlex.join(command[1:]),
                            "config": str(config_file(model).relative_to(REPO)) if config_file(model) else None}
    record = out / RUN_RECORD
    if not settings.fresh and record.is_file() and (out / "artifact" / artifacts.METRICS).is_file():
        saved = json.loads(record.read_text())
        if saved.get("digest") == digest:
            return out / "artifact", {**info, "reused": saved.get("trained_at"),
                                      **{k: saved[k] for k in ("wall_s", "cpu_s") if k in saved}}
    if reuse_only:
        return None, {**info, "error": "not trained (reuse only, and not in the work folder)"}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    returncode, cpu_s = run_cli(command, out / "bench-train.log")
    # CPU seconds say what the run costs on a shared machine, where wall time depends on the other load.
    info |= {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu_s, 1)}
    if returncode != 0:
        lines = [line for line in (out / "bench-train.log").read_text().splitlines() if line.strip()]
        info["error"] = lines[-1] if lines else f"exit status {returncode}"
        return None, info
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the artifact is all that is read; saves disk
    record.write_text(json.dumps({"digest": digest, "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "wall_s": info["wall_s"], "cpu_s": info["cpu_s"]}) + "\n")
    return out / "artifact", info


# ---- measuring an artifact -------------------------------------------------------------------------

def gauc(users: Any, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Impression-weighted mean of per-user AUCs, users with one class skipped (DIN, eq. 1).

    users: (N,) keys (anything polars holds); labels: (N,) 0/1; scores: (N,) floats.
    Returns {"gauc": value or None, "users": users counted, "rows": their rows}.
    """
    frame = pl.DataFrame({"user": users, "label": np.asarray(labels, dtype=np.float64),
                          "score": np.asarray(scores, dtype=np.float64)})
    per_user = (frame.with_columns(rank=pl.col("score").rank("average").over("user"))
                .group_by("user")
                .agg(n=pl.len(), positives=pl.col("label").sum(), rank_sum=(pl.col("rank") * pl.col("label")).sum())
                .filter((pl.col("positives") > 0) & (pl.col("positives") < pl.col("n"))))
    if per_user.height == 0:
        return {"gauc": None, "users": 0, "rows": 0}
    n = per_user["n"].to_numpy().astype(np.float64)
    positives = per_user["positives"].to_numpy()
    negatives = n - positives
    # Mann–Whitney: the rank sum of the positives less its least possible value, over the pairs.
    auc = (per_user["rank_sum"].to_numpy() - positives * (positives + 1) / 2) / (positives * negatives)
    return {"gauc": float((auc * n).sum() / n.sum()), "users": per_user.height, "rows": int(n.sum())}


def score_test(artifact: artifacts.Artifact, data: Path, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the whole test split in split order."""
    reader = ParquetReader(data, "test", batch_size, schema=artifact.schema)
    labels, logits, row_ids = [], [], []
    with torch.inference_mode():
        for batch, ids in reader.iter_with_row_ids():
            logits.append(artifact.model(batch).double().numpy())
            labels.append(batch.labels.double().numpy())
            row_ids.append(ids.numpy())
    order = np.argsort(np.concatenate(row_ids), kind="stable")
    scores = task_spec(artifact.schema).link_numpy(np.concatenate(logits))
    return np.concatenate(labels)[order], scores[order]


def test_users(data: Path, column: str) -> pl.Series:
    """The test split's user key column in split order (files in name order, rows in file order)."""
    return pl.read_parquet([str(f) for f in split_files(data, "test")], columns=[column])[column]


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    embeddings = getattr(model, "sparse_arch", None)
    embedding = sum(p.numel() for p in embeddings.parameters()) if isinstance(embeddings, torch.nn.Module) else 0
    return {"params": total, "embedding_params": embedding, "dense_params": total - embedding}


def measure(path: Path, data: Path) -> dict[str, Any]:
    """Test metrics, gAUC, parameters and training rate of one artifact."""
    artifact = artifacts.load(path)
    labels, scores = score_test(artifact, data)
    figures = task_spec(artifact.schema).offline_metrics(labels, scores)
    record: dict[str, Any] = {"auc": figures.get("auc"), "logloss": figures.get("logloss"),
                              "test_rows": int(len(labels))}
    if artifact.schema.user_key is not None:
        users = test_users(data, artifact.schema.user_key.name)
        by_user = gauc(users, labels, scores)
        record |= {"gauc": by_user["gauc"], "gauc_users": by_user["users"], "gauc_rows": by_user["rows"]}
    metrics = artifact.metrics
    record |= parameter_counts(artifact.model)
    record |= {"train_samples_per_s": metrics.get("train.samples_per_s"), "train_seconds": metrics.get("train.seconds"),
               "train_samples": metrics.get("train.samples"), "epochs": metrics.get("train.epochs"),
               "best_epoch": metrics.get("train.best_epoch"), "stopped_early": metrics.get("train.stopped_early"),
               "trainer_test_auc": metrics.get("test.auc"), "valid_auc": metrics.get("valid.auc"),
               "batch_size": artifact.config.trainer.batch_size, "model_config": artifact.config.model}
    return record


def inference_batch(data: Path, rows: int = 1000) -> Batch:
    return next(iter(ParquetReader(data, "test", rows)))


def time_calls(calls: dict[str, Callable[[], Any]], rows: int, rounds: int, repeats: int, warmup: int
               ) -> dict[str, dict[str, float]]:
    """ms per 1,000 rows of each call (each handles ``rows`` rows): median of ``rounds`` × ``repeats`` timed
    calls, the calls in interleaved rounds (rotating order) after ``warmup`` calls each, so a load change on a
    shared machine hits every call alike."""
    keys = list(calls)
    scale = 1000 / rows
    times: dict[str, list[float]] = {key: [] for key in keys}
    with torch.inference_mode():
        for key in keys:
            for _ in range(warmup):
                calls[key]()
        for r in range(rounds):
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                calls[key]()  # the first call after switching refills the caches
                for _ in range(repeats):
                    start = time.perf_counter()
                    calls[key]()
                    times[key].append(time.perf_counter() - start)
    return {key: {"ms_per_1000": 1e3 * statistics.median(t) * scale,
                  "ms_q1": 1e3 * float(np.percentile(t, 25)) * scale,
                  "ms_q3": 1e3 * float(np.percentile(t, 75)) * scale} for key, t in times.items()}


def time_inference(paths: dict[str, Path], batch: Batch, rounds: int, repeats: int, warmup: int
                   ) -> dict[str, dict[str, float]]:
    """ms per 1,000 rows of each artifact's forward (``time_calls``)."""
    models = {key: artifacts.load(path).model for key, path in paths.items()}
    timed = time_calls({key: (lambda m=model: m(batch)) for key, model in models.items()}, batch.labels.shape[0],
                       rounds, repeats, warmup)
    return {key: {"inference_ms_per_1000": t["ms_per_1000"], "inference_ms_q1": t["ms_q1"],
                  "inference_ms_q3": t["ms_q3"]} for key, t in timed.items()}


# ---- summary and the ordering check ----------------------------------------------------------------

def mean_std(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{dataset: {model: {metric: {mean, std, n}}}} over the seeds that finished."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        if "error" in run:
            continue
        out.setdefault(run["dataset"], {}).setdefault(run["model"], {})
    for dataset, models in out.items():
        for model in models:
            mine = [r for r in runs if r["dataset"] == dataset and r["model"] == model and "error" not in r]
            models[model] = {m: mean_std([r.get(m) for r in mine]) for m in METRICS}
            models[model]["seeds"] = sorted(r["seed"] for r in mine)
    return out


def pooled_std(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if a["std"] is None or b["std"] is None:
        return None
    return math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)


def within_noise(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """|Δ mean| < NOISE_FACTOR · pooled std; None without two seeds on both sides."""
    pooled = pooled_std(a, b)
    if pooled is None or a["mean"] is None or b["mean"] is None:
        return None
    return abs(a["mean"] - b["mean"]) < NOISE_FACTOR * pooled


def ordering(summary: dict[str, dict[str, dict[str, Any]]], metric: str = "auc") -> dict[str, Any]:
    """Per dataset: the best model, those within noise of it, the peers' check and DIN's place."""
    out: dict[str, Any] = {"metric": metric, "rule": f"within noise: |Δ mean {metric}| < {NOISE_FACTOR:g} × pooled "
                           "std, pooled std = sqrt((s1² + s2²) / 2) over seeds", "datasets": {}}
    for dataset, models in summary.items():
        scored = {m: s[metric] for m, s in models.items() if s[metric]["mean"] is not None}
        if not scored:
            continue
        ranked = sorted(scored, key=lambda m: -scored[m]["mean"])
        best = ranked[0]
        entry: dict[str, Any] = {
            "ranking": [{"model": m, "mean": scored[m]["mean"], "std": scored[m]["std"],
                         "delta_to_best": scored[m]["mean"] - scored[best]["mean"],
                         "within_noise_of_best": True if m == best else within_noise(scored[m], scored[best])}
                        for m in ranked],
            "best": best,
        }
        peers = [m for m in PEERS if m in scored]
        pairs = [(a, b, within_noise(scored[a], scored[b])) for i, a in enumerate(peers) for b in peers[i + 1:]]
        verdicts = [v for _, _, v in pairs]
        entry["peers"] = {
            "models": peers,
            "pairs": [{"a": a, "b": b, "delta": scored[a]["mean"] - scored[b]["mean"], "within_noise": v}
                      for a, b, v in pairs],
            "all_within_noise": None if len(peers) < 2 or None in verdicts else all(verdicts),
        }
        if HISTORY_MODEL in scored and len(scored) > 1:
            runner_up = next(m for m in ranked if m != HISTORY_MODEL)
            ahead = scored[HISTORY_MODEL]["mean"] > scored[runner_up]["mean"]
            noise = within_noise(scored[HISTORY_MODEL], scored[runner_up])
            entry["history_model"] = {
                "model": HISTORY_MODEL, "rank": ranked.index(HISTORY_MODEL) + 1, "ahead": ahead,
                "closest_other": runner_up, "delta": scored[HISTORY_MODEL]["mean"] - scored[runner_up]["mean"],
                "beyond_noise": None if noise is None else ahead and not noise}
        out["datasets"][dataset] = entry
    return out


def anchors(summary: dict[str, dict[str, dict[str, Any]]], configs: dict[str, dict[str, Any]]) -> list[dict]:
    """The BARS rows, each with our mean AUC per dataset for the model it is about (when registered)."""
    rows = []
    for anchor in ANCHORS:
        ours = anchor["ours"]
        variant = None
        if ours == "autoint" and ours in configs:
            variant = "AutoInt+" if configs[ours].get("dnn") else "AutoInt"
        row = {**anchor, "ours_variant_matches": None if variant is None else variant == anchor["model"],
               "ours_auc": {d: models[ours]["auc"] for d, models in summary.items() if ours in models}}
        rows.append(row)
    return rows


# ---- output ----------------------------------------------------------------------------------------

def pm(stat: dict[str, Any], digits: int, thousands: bool = False) -> str:
    if stat.get("mean") is None:
        return "–"
    number = (lambda v: f"{v:,.{digits}f}") if thousands else (lambda v: f"{v:.{digits}f}")
    return number(stat["mean"]) + (f" ± {number(stat['std'])}" if stat.get("std") is not None else "")


def markdown(results: dict[str, Any]) -> str:
    machine_info = results["machine"]
    lines = ["# Model zoo benchmark", "",
             f"{'**Smoke run (--quick): not results.** ' if results['quick'] else ''}"
             f"{machine_info['cpu']}, {machine_info['nproc']} cores, {machine_info['torch_threads']} torch threads, "
             f"torch {machine_info['torch']}, {machine_info['date']}, git {results['git_sha']}; load average "
             f"{machine_info['load_average']} → {machine_info.get('load_average_end')}.", "",
             f"Command: `{results['command']}`", "", f"Budget: {results['budget']['description']}", "",
             "## Results (mean ± std over seeds)", "",
             "| dataset | model | seeds | test AUC | gAUC | log loss | parameters | train samples/s "
             "| inference ms / 1,000 |", "|---|---|---|---|---|---|---|---|---|"]
    for dataset, models in results["summary"].items():
        for model, stats in sorted(models.items(), key=lambda kv: -(kv[1]["auc"]["mean"] or 0)):
            params = stats["params"]["mean"]  # the same for every seed
            lines.append(f"| {dataset} | {model} | {len(stats['seeds'])} | {pm(stats['auc'], 4)} | "
                         f"{pm(stats['gauc'], 4)} | {pm(stats['logloss'], 4)} | "
                         f"{'–' if params is None else f'{params:,.0f}'} | "
                         f"{pm(stats['train_samples_per_s'], 0, True)} | {pm(stats['inference_ms_per_1000'], 2)} |")
    lines.append("")
    for name, data in results["datasets"].items():
        rows = " / ".join(f"{data['rows'].get(s) or 0:,}" for s in ("train", "valid", "test"))
        line = f"- {name}: {rows} train / valid / test rows ({data['split']} split)"
        if data.get("gauc_users"):
            line += f"; gAUC over {data['gauc_users']:,} test users with both labels ({data['gauc_rows']:,} rows)"
        if data.get("test_bayes_auc") is not None:
            line += f"; Bayes-optimal test AUC {data['test_bayes_auc']:.4f} (the data's true probabilities)"
        lines.append(line + ".")
    if results["failed"]:
        lines += ["", "Failed runs: " + "; ".join(f"{f['model']} on {f['dataset']} seed {f['seed']}: {f['error']}"
                                                 for f in results["failed"])]
    lines += ["", "## Published anchors", "", results["anchors_source"] + ".", "",
              "| published on | model | published test AUC | ours | "
              + " | ".join(f"our AUC ({d})" for d in results["datasets"]) + " |",
              "|---|---|---|---|" + "---|" * len(results["datasets"])]
    for row in results["anchors"]:
        ours = row["ours"] + ("" if row["ours_variant_matches"] in (None, True) else " (other variant)")
        lines.append(f"| {row['dataset']} | {row['model']} | {row['auc']:.4f} | {ours} | "
                     + " | ".join(pm(row["ours_auc"].get(d, {}), 4) for d in results["datasets"]) + " |")
    lines += ["", "## Ordering check", "", results["ordering"]["rule"] + ".", ""]
    lines += [f"- {line}" for line in results["ordering"]["statements"]]
    return "\n".join(lines) + "\n"


def ordering_lines(check: dict[str, Any]) -> list[str]:
    """The ordering check in sentences (models.json keeps them; models.md and the report show them)."""
    out = []
    for dataset, entry in check.get("datasets", {}).items():
        near = [r["model"] for r in entry["ranking"] if r["within_noise_of_best"] and r["model"] != entry["best"]]
        unknown = [r["model"] for r in entry["ranking"] if r["within_noise_of_best"] is None]
        line = f"{dataset}: best {entry['best']}"
        if len(entry["ranking"]) == 1:
            line += " (the only model)"
        else:
            line += f"; within noise of it: {', '.join(near)}" if near else "; no other model within noise of it"
        if unknown:
            line += f" (undecided without 2 seeds: {', '.join(unknown)})"
        out.append(line + ".")
        peers = entry["peers"]
        verdict = {True: "all within noise of each other", False: "not all within noise of each other",
                   None: "undecided (fewer than 2 of them or 1 seed)"}[peers["all_within_noise"]]
        out.append(f"{dataset}: {', '.join(peers['models']) or 'none of dlrm, dcnv2, autoint'}: {verdict}.")
        history = entry.get("history_model")
        if history:
            place = "ahead" if history["ahead"] else "not ahead"
            margin = {True: "beyond noise", False: "within noise", None: "noise undecided"}[history["beyond_noise"]]
            out.append(f"{dataset}: {history['model']} is {place} (rank {history['rank']}, Δ {history['delta']:+.4f} "
                       f"to {history['closest_other']}, {margin}).")
    return out


def log(message: str) -> None:
    print(f"… {message}", file=sys.stderr, flush=True)


# ---- main ------------------------------------------------------------------------------------------

def ranking_models() -> list[str]:
    """The registered models that score CTR rows; retrievers train on implicit data (bench_retrieval.py)."""
    return [name for name in model_names() if not model_spec(name).retriever]


def parse_runs(parser: argparse.ArgumentParser, args: argparse.Namespace, known: tuple[str, ...]
               ) -> tuple[list[str], list[str], dict[str, int]]:
    """--models (default: every registered ranking model), --datasets (of ``known``) and --epochs (NAME=N,…; 1
    each with --quick), checked: a bad value is the parser's error naming the flag. Shared with bench_embeddings."""
    registered = model_names()
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else ranking_models()
    unknown = [m for m in models if m not in registered]
    if unknown:
        parser.error(f"--models: not registered: {', '.join(unknown)}; registered: {', '.join(registered)}")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not datasets or any(d not in known for d in datasets):
        parser.error(f"--datasets: choose from {', '.join(known)}")
    try:
        epochs = {k.strip(): int(v) for k, v in (item.split("=") for item in args.epochs.split(","))}
    except ValueError:
        parser.error("--epochs: expected NAME=N,… e.g. synthetic=1,movielens=10")
    if args.quick:
        epochs = dict.fromkeys(known, 1)
    missing = [d for d in datasets if epochs.get(d, 0) < 1]
    if missing:
        parser.error(f"--epochs: no epoch cap ≥ 1 for {', '.join(missing)}")
    return models, datasets, epochs


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated registered models (default: every ranking model: "
                        f"{', '.join(ranking_models())})")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … N-1 per (model, dataset)")
    parser.add_argument("--synthetic-rows", type=int, help="rows of the synthetic set (default 3,000,000; "
                        "--quick: 20,000)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: synthetic, movielens (time "
                        "split), movielens-random (80/10/10, the split of RecBole's figures)")
    parser.add_argument("--movielens", type=Path, default=MOVIELENS, help="the ml-latest-small folder")
    parser.add_argument("--epochs", default="synthetic=1,movielens=10,movielens-random=10",
                        help="the epoch cap per dataset, NAME=N,… (the budget)")
    parser.add_argument("--patience", type=int, default=2, help="early stopping: evaluations without improvement")
    parser.add_argument("--max-steps", type=int, help="cap every run's steps (default: none; --quick: 20)")
    parser.add_argument("--rounds", type=int, help="inference timing rounds (default 5; --quick: 2)")
    parser.add_argument("--repeats", type=int, help="timed forwards per model per round (default 10; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards per model first")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "models", help="data and runs (gitignored)")
    parser.add_argument("--out", type=Path, help="folder for models.json and models.md (default "
                        "benchmarks/results; --quick: WORK/quick, so a smoke run never replaces results)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs already in --work")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps: a smoke run")
    args = parser.parse_args(argv)
    models, datasets, epochs = parse_runs(parser, args, DATASETS)
    if args.seeds < 1:
        parser.error("--seeds: at least 1")
    if any(d in MOVIELENS_SPLITS for d in datasets) and not (args.movielens / "ratings.csv").is_file():
        parser.error(f"--movielens {args.movielens}: no ratings.csv there; pass the ml-latest-small folder")
    rows = args.synthetic_rows or (20_000 if args.quick else 3_000_000)
    return Settings(
        models=models, seeds=list(range(args.seeds)), datasets=datasets, synthetic_rows=rows,
        movielens=args.movielens, epochs=epochs, patience=args.patience,
        max_steps=args.max_steps if args.max_steps is not None else (20 if args.quick else None),
        work=args.work.resolve(), out=(args.out or (args.work / "quick" if args.quick else HERE / "results")).resolve(),
        rounds=args.rounds or (2 if args.quick else 5), repeats=args.repeats or (3 if args.quick else 10),
        warmup=args.warmup, fresh=args.fresh, quick=args.quick)


def budget_description(settings: Settings) -> str:
    caps = ", ".join(f"{d} {settings.epochs[d]} epoch(s)" for d in settings.datasets)
    steps = f"; at most {settings.max_steps} steps a run" if settings.max_steps is not None else ""
    return (f"each model's configs/MODEL.yaml (its architecture, optimizers, learning rates and batch size; the "
            f"model's defaults without one) with trainer.epochs capped at {caps}{steps}; early stopping on valid "
            f"AUC with patience {settings.patience} (one evaluation per epoch), the best epoch's weights exported; "
            f"1 process, {torch.get_num_threads()} threads")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings = parse(argv)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # a torch deprecation note per load
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "models", "quick": settings.quick,
        "machine": {**machine(), "cpu_pressure": cpu_pressure()},
        "git_sha": artifacts.git_sha(),
        "command": shlex.join([sys.executable, str(Path(__file__).resolve().relative_to(REPO)),
                               *(argv if argv is not None else sys.argv[1:])]),
        "models": settings.models, "seeds": settings.seeds,
        "budget": {"description": budget_description(settings), "epochs": {d: settings.epochs[d]
                                                                            for d in settings.datasets},
                   "early_stopping": {"metric": "auc", "patience": settings.patience},
                   "max_steps": settings.max_steps,
                   "configs": {m: str(c.relative_to(REPO)) if (c := config_file(m)) else None
                               for m in settings.models}},
        "inference": {"rows": 1000, "rounds": settings.rounds, "repeats": settings.repeats,
                      "warmup": settings.warmup, "mode": "torch.inference_mode, interleaved rounds, median"},
        "datasets": {}, "runs": [], "failed": [],
    }
    data = {name: prepare_data(name, settings) for name in settings.datasets}
    for name, path in data.items():
        results["datasets"][name] = dataset_record(name, path)
    total = len(settings.datasets) * len(settings.models) * len(settings.seeds)
    done = 0
    configs: dict[str, dict[str, Any]] = {}
    for dataset in settings.datasets:
        finished: dict[str, RunResult] = {}
        for model in settings.models:
            for seed in settings.seeds:
                done += 1
                log(f"[{done}/{total}] {model} on {dataset}, seed {seed}")
                path, info = train_run(model, dataset, data[dataset], seed, settings)
                base = {"model": model, "dataset": dataset, "seed": seed, **info}
                if path is None:
                    results["failed"].append(base)
                    results["runs"].append(base)
                    log(f"    failed: {info['error']}")
                    continue
                try:
                    record = {**base, **measure(path, data[dataset])}
                except Exception as exc:  # noqa: BLE001 — one broken artifact must not end a run of hours
                    results["failed"].append({**base, "error": f"measuring: {type(exc).__name__}: "
                                                               f"{str(exc).splitlines()[0] if str(exc) else ''}"})
                    results["runs"].append(results["failed"][-1])
                    log(f"    failed: {results['failed'][-1]['error']}")
                    continue
                configs.setdefault(model, record["model_config"])
                finished[f"{model}/{seed}"] = RunResult(model, dataset, seed, record, path)
                results["runs"].append(record)
                log(f"    AUC {record['auc']:.4f}, gAUC {record.get('gauc') or float('nan'):.4f}, "
                    f"{record['train_samples_per_s']:,.0f} samples/s, {time.perf_counter() - started:,.0f} s so far")
        if finished:
            log(f"timing inference on {dataset}: {len(finished)} artifacts × {settings.rounds} rounds")
            batch = inference_batch(data[dataset])
            results["datasets"][dataset]["inference_rows"] = int(batch.labels.shape[0])
            timed = time_inference({k: r.artifact for k, r in finished.items() if r.artifact}, batch,
                                   settings.rounds, settings.repeats, settings.warmup)
            for key, run in finished.items():
                run.record.update(timed[key])
            first = next(iter(finished.values())).record  # the same test users for every run
            results["datasets"][dataset] |= {"gauc_users": first.get("gauc_users"), "gauc_rows": first.get("gauc_rows")}
    results["summary"] = summarize(results["runs"])
    results["ordering"] = ordering(results["summary"])
    results["ordering"]["statements"] = ordering_lines(results["ordering"])
    results["anchors"] = anchors(results["summary"], configs)
    results["anchors_source"] = ANCHOR_SOURCE
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] |= {"load_average_end": [round(x, 2) for x in os.getloadavg()],
                           "cpu_pressure_end": cpu_pressure()}
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "models.json").write_text(artifacts.json_text(results, indent=1) + "\n")
    (settings.out / "models.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {settings.out / 'models.json'} and {settings.out / 'models.md'} in {results['seconds']:,.0f} s",
          file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
