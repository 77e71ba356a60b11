"""Retrievers: every registered retriever on the synthetic implicit set, MovieLens (implicit) and Gowalla, same budget.

Issue #14. For each (dataset, retriever) the real trainer runs in its own process
(``python -m recsys.cli.main train``, reused from ``--work`` when its settings are
unchanged: ``bench_models.train_run``), then this process reads and measures:

- test Recall@K, NDCG@K, HR@K (K = 5, 10, 20, 50) and MRR: the trainer's full-ranking
  evaluation (``recsys.eval.retrieval``: every catalogue item scored, the user's training
  and validation items excluded), from the artifact's metrics.json;
- training seconds per epoch (``train.seconds / train.epochs``: reading and stepping) and
  the training process's CPU seconds (start-up and evaluation included), which a shared
  machine's load does not inflate;
- the index (``services.retrieval.index.build_index``) over the artifact's item vectors,
  for each kind (exact, IVF, HNSW; the default kind is exact at these catalogue sizes):
  build seconds, recall@100 against exact search with the retriever's real user vectors
  as queries (the first ``--queries`` test rows' users), and single-query latency
  p50/p99 over those queries (one thread, as the service searches).

The budget (the same for every retriever): its ``configs/MODEL.yaml`` with
``embedding.dim`` set to ``--dim`` for every table, ``trainer.epochs`` capped per dataset
(``--epochs``), early stopping on valid Recall@20 with ``--patience`` evaluations (one per
epoch), the best epoch's weights exported. One process, all threads.

Data, prepared once in ``--work``: ``recsys data synth --kind implicit --rows N --split loo``;
``recsys data prepare --format movielens --task implicit --split loo`` of ml-latest-small
(ratings ≥ 4 are interactions); ``recsys data prepare --format interactions`` of the
LightGCN Gowalla split (its train/test files kept; valid: ``--valid-fraction`` of train).
Gowalla's published figures (BARS) come from ~1,000 epochs; the long LightGCN/LTGNN runs
against wall time are ``benchmarks/bench_gowalla.py``'s. ``/v1/recommend`` latency at 100k
and 1M items and the 1M-item ANN figures are ``benchmarks/bench_ann.py``'s.

    .venv/bin/python benchmarks/bench_retrieval.py            # every retriever, three datasets
    .venv/bin/python benchmarks/bench_retrieval.py --quick    # small data, a few steps: a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import bench_models as zoo  # noqa: E402
from bench_data import cpu_pressure, machine  # noqa: E402

from recsys import artifact as artifacts  # noqa: E402
from recsys.data.layout import read_stats  # noqa: E402
from recsys.data.reader import ParquetReader  # noqa: E402
from recsys.models import model_names  # noqa: E402
from recsys.models.retriever import Similarity  # noqa: E402
from recsys.tasks.implicit import CUTOFFS  # noqa: E402
from services.retrieval.index import IndexKind, build_index  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "datasets"
DATASETS = ("synthetic", "movielens", "gowalla")
METRIC_KEYS = [f"{m}@{k}" for m in ("recall", "ndcg", "hr") for k in CUTOFFS] + ["mrr"]
RECALL_K = 100
RETRIEVERS = ("mf", "two_tower", "cml", "lightgcn", "ltgnn")  # the registered ones of these, in this order


@dataclass(frozen=True)
class Settings:
    models: list[str]
    datasets: list[str]
    synthetic_rows: int
    movielens: Path
    gowalla: Path
    epochs: dict[str, int]
    patience: int
    max_steps: int | None
    dim: int
    queries: int
    work: Path
    out: Path
    fresh: bool
    quick: bool
    seeds: tuple[int, ...] = (0,)


def prepare_command(name: str, settings: Settings, out: Path) -> list[str]:
    if name == "synthetic":
        return zoo.cli("-q", "data", "synth", "--kind", "implicit", "--rows", str(settings.synthetic_rows), "--seed",
                       "0", "--split", "loo", "--out", str(out), "--overwrite")
    if name == "movielens":
        return zoo.cli("-q", "data", "prepare", "--format", "movielens", "--task", "implicit", "--split", "loo",
                       "--input", str(settings.movielens), "--out", str(out), "--overwrite")
    return zoo.cli("-q", "data", "prepare", "--format", "interactions", "--input", str(settings.gowalla),
                   "--out", str(out), "--overwrite")


def prepare_data(name: str, settings: Settings) -> Path:
    """The prepared data folder of one dataset, made once in ``--work`` (again when its command changed)."""
    out = settings.work / "data" / (f"synthetic-{settings.synthetic_rows}" if name == "synthetic" else name)
    command = prepare_command(name, settings, out)
    record = out / zoo.DATA_RECORD
    wanted = {"command": command[1:]}
    if record.is_file() and json.loads(record.read_text()) == wanted:
        return out
    zoo.log(f"preparing {name}: {shlex.join(command[1:])}")
    if subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL).returncode != 0:
        raise SystemExit(f"preparing {name} failed (the error is above)")
    record.write_text(json.dumps(wanted) + "\n")
    return out


def dataset_record(name: str, data: Path, command: list[str]) -> dict[str, Any]:
    stats = read_stats(data)
    splits = stats.get("splits", {})
    return {"path": str(data), "command": shlex.join(command[1:]),
            "rows": {split: rec.get("rows") for split, rec in splits.items()},
            "split": stats.get("split"), "protocol": (stats.get("protocol") or {}).get("description")}


def budget(settings: Settings, dataset: str) -> list[str]:
    """``--set`` values after bench_models' budget: the retrieval metric to stop on, one dim for every table."""
    return ["trainer.early_stopping.metric=recall@20", f"embedding.dim={settings.dim}"]


def user_queries(artifact: artifacts.Artifact, data: Path, rows: int) -> np.ndarray:
    """The retriever's vectors of the users of the first ``rows`` test rows (real queries for the index)."""
    batch = next(iter(ParquetReader(data, "test", rows)))
    with torch.no_grad():
        return artifact.model.user_vectors(batch).float().numpy()


def latency_ms(index: Any, queries: np.ndarray, k: int) -> dict[str, float]:
    """Single-query search times, p50 and p99 in ms, after one warm-up query."""
    index.search(queries[:1], k)
    times = []
    for row in range(len(queries)):
        start = time.perf_counter()
        index.search(queries[row:row + 1], k)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 4), "p99_ms": round(float(np.percentile(times, 99)), 4)}


def measure_index(path: Path, data: Path, settings: Settings) -> dict[str, Any]:
    """Exact, IVF and HNSW over the artifact's catalogue: build time, recall@100 vs exact, query latency."""
    import faiss

    faiss.omp_set_num_threads(1)  # the service searches one request's query on its own
    keys, vectors, similarity = artifacts.load_item_vectors(path)
    loaded = artifacts.load(path)
    queries = user_queries(loaded, data, settings.queries)
    items = vectors.numpy()
    k = min(RECALL_K, len(keys))
    out: dict[str, Any] = {"items": len(keys), "dim": int(items.shape[1]), "queries": len(queries), "k": k}
    truth = None
    for kind in (IndexKind.EXACT, IndexKind.IVF, IndexKind.HNSW):
        index, report = build_index(items, Similarity(similarity), kind, queries=queries, k=k,
                                    progress=lambda _: None)
        searcher = _Searcher(index, report.max_norm)
        _, found = searcher.search(queries, k)
        if truth is None:
            truth = found
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
        out[kind.value] = {"build_s": round(report.build_seconds + report.tune_seconds, 3), "params": report.params,
                           f"recall@{k}_vs_exact": round(recall, 4), **latency_ms(searcher, queries, k)}
    return out


class _Searcher:
    """What ``ItemIndex.search`` does (the MIPS → L2 query augmentation of a dot HNSW index), without keys."""

    def __init__(self, index: Any, max_norm: float | None) -> None:
        from services.retrieval.index import augment_queries

        self.index, self.max_norm, self.augment = index, max_norm, augment_queries

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries if self.max_norm is None else self.augment(queries), k)


def measure(path: Path, data: Path, settings: Settings) -> dict[str, Any]:
    metrics = json.loads((path / artifacts.METRICS).read_text())
    epochs = max(int(metrics.get("train.epochs") or 0), 1)
    record: dict[str, Any] = {key: metrics.get(f"test.{key}") for key in METRIC_KEYS}
    record |= {"valid_recall@20": metrics.get("valid.recall@20"), "epochs": metrics.get("train.epochs"),
               "best_epoch": metrics.get("train.best_epoch"), "steps": metrics.get("train.steps"),
               "train_s_per_epoch": round(float(metrics.get("train.seconds", 0.0)) / epochs, 2),
               "train_samples_per_s": metrics.get("train.samples_per_s"),
               "embedding_params": metrics.get("embedding_params")}
    record["index"] = measure_index(path, data, settings)
    return record


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"# Retrievers (`benchmarks/bench_retrieval.py`{' --quick' if results['quick'] else ''})", "",
             f"Command: `{results['command']}`  ", f"Machine: {m['cpu']}, {m['nproc']} cores; load average at "
             f"start {m['load_average']}, at end {m.get('load_average_end')}  ",
             f"Budget: {results['budget']}  ",
             "Metrics: full ranking over the catalogue, the user's training (and validation) items excluded.", ""]
    for dataset, info in results["datasets"].items():
        lines += [f"## {dataset}", "", f"Data: `{info['command']}` — rows {info['rows']}, split {info['split']}"
                  f", protocol {info.get('protocol')}", "",
                  "| model | Recall@20 | NDCG@20 | Recall@50 | HR@10 | MRR | best epoch | s/epoch | CPU s | "
                  "index exact p50 ms | IVF recall@100 / p50 ms | HNSW recall@100 / p50 ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for run in results["runs"]:
            if run["dataset"] != dataset:
                continue
            if "error" in run:
                lines.append(f"| {run['model']} | failed: {run['error']} |" + " |" * 11)
                continue
            index = run["index"]
            k = index["k"]

            def ann(kind: str) -> str:
                return f"{index[kind][f'recall@{k}_vs_exact']:.3f} / {index[kind]['p50_ms']:.3f}"

            lines.append(f"| {run['model']} | {run['recall@20']:.4f} | {run['ndcg@20']:.4f} | {run['recall@50']:.4f}"
                         f" | {run['hr@10']:.4f} | {run['mrr']:.4f} | {run['best_epoch']} | "
                         f"{run['train_s_per_epoch']:.1f} | {run.get('cpu_s', float('nan'))} | "
                         f"{index['exact']['p50_ms']:.3f} | {ann('ivf')} | {ann('hnsw')} |")
        lines.append("")
    lines += ["Published (BARS, Gowalla, ~1,000 epochs, dim 64): LightGCN Recall@20 0.1820 / NDCG@20 0.1547, "
              "MF-BPR 0.1627 / 0.1378. The per-epoch curves against wall and CPU time are in "
              "`retrieval-gowalla.md` (`benchmarks/bench_gowalla.py`).", ""]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    registered = [m for m in RETRIEVERS if m in model_names()]
    parser.add_argument("--models", default=",".join(registered), help="comma-separated retrievers")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated: {', '.join(DATASETS)}")
    parser.add_argument("--synthetic-rows", type=int, help="rows of the synthetic set (default 1,000,000; "
                        "--quick: 30,000)")
    parser.add_argument("--movielens", type=Path, default=SHARED / "movielens" / "ml-latest-small")
    parser.add_argument("--gowalla", type=Path, default=SHARED / "gowalla")
    parser.add_argument("--epochs", default="synthetic=10,movielens=50,gowalla=20",
                        help="the epoch cap per dataset, NAME=N,… (the budget)")
    parser.add_argument("--patience", type=int, default=3, help="early stopping: evaluations without improvement")
    parser.add_argument("--max-steps", type=int, help="cap every run's steps (default: none; --quick: 30)")
    parser.add_argument("--dim", type=int, default=64, help="embedding dim of every table (BARS: 64)")
    parser.add_argument("--queries", type=int, default=1000, help="test rows whose users query the indexes")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "retrieval", help="data and runs (gitignored)")
    parser.add_argument("--out", type=Path, help="folder for retrieval.json/.md (default benchmarks/results; "
                        "--quick: WORK/quick)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs already in --work")
    parser.add_argument("--quick", action="store_true", help="small data and a few steps: a smoke run")
    args = parser.parse_args(argv)
    args.models = ",".join(m.strip() for m in args.models.split(",") if m.strip())
    models, datasets, epochs = zoo.parse_runs(parser, args, DATASETS)
    if "movielens" in datasets and not (args.movielens / "ratings.csv").is_file():
        parser.error(f"--movielens {args.movielens}: no ratings.csv there")
    if "gowalla" in datasets and not (args.gowalla / "train.txt").is_file():
        parser.error(f"--gowalla {args.gowalla}: no train.txt there")
    work = args.work.resolve()
    return Settings(models=models, datasets=datasets,
                    synthetic_rows=args.synthetic_rows or (30_000 if args.quick else 1_000_000),
                    movielens=args.movielens, gowalla=args.gowalla, epochs=epochs, patience=args.patience,
                    max_steps=args.max_steps if args.max_steps is not None else (30 if args.quick else None),
                    dim=args.dim, queries=min(args.queries, 200) if args.quick else args.queries, work=work,
                    out=(args.out or (work / "quick" if args.quick else HERE / "results")).resolve(),
                    fresh=args.fresh, quick=args.quick)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings = parse(argv)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    started = time.perf_counter()
    steps = f", at most {settings.max_steps} steps" if settings.max_steps is not None else ""
    results: dict[str, Any] = {
        "benchmark": "retrieval", "quick": settings.quick, "machine": {**machine(), "cpu_pressure": cpu_pressure()},
        "git_sha": artifacts.git_sha(),
        "command": shlex.join([sys.executable, str(Path(__file__).resolve().relative_to(REPO)),
                               *(argv if argv is not None else sys.argv[1:])]),
        "budget": (f"configs/MODEL.yaml, embedding.dim {settings.dim}, epochs capped at "
                   f"{', '.join(f'{d} {settings.epochs[d]}' for d in settings.datasets)}{steps}; early stopping on "
                   f"valid recall@20, patience {settings.patience}; 1 process, {torch.get_num_threads()} threads"),
        "datasets": {}, "runs": [],
    }
    for dataset in settings.datasets:
        data = prepare_data(dataset, settings)
        results["datasets"][dataset] = dataset_record(dataset, data, prepare_command(dataset, settings, data))
        for model in settings.models:
            zoo.log(f"{model} on {dataset}")
            path, info = zoo.train_run(model, dataset, data, 0, settings, budget(settings, dataset))
            run = {"model": model, "dataset": dataset, **info}
            if path is not None:
                try:
                    run |= measure(path, data, settings)
                except Exception as exc:  # noqa: BLE001 — one broken artifact must not end the run
                    run["error"] = f"measuring: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            results["runs"].append(run)
            zoo.log(f"    failed: {run['error']}" if "error" in run else f"    Recall@20 {run['recall@20']:.4f}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] |= {"load_average_end": [round(x, 2) for x in os.getloadavg()],
                           "cpu_pressure_end": cpu_pressure()}
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "retrieval.json").write_text(artifacts.json_text(results, indent=1) + "\n")
    (settings.out / "retrieval.md").write_text(markdown(results))
    zoo.log(f"wrote {settings.out / 'retrieval.json'} and retrieval.md in {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
