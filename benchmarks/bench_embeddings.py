"""Embedding schemes at equal memory: test AUC against the embedding tables' bytes, per scheme and ratio.

Issue 13. The question of Shi et al., "Compositional Embeddings Using Complementary Partitions for
Memory-Efficient Recommendation Systems" (KDD 2020): at one memory budget, does the quotient-remainder trick
(``qr``, a distinct vector per id) beat the hashing trick (``hash``, colliding ids share a vector)? Beside
them, Unified Embedding (``unified``, every table multiplexed into one) and any other registered scheme.

For each (dataset, model, scheme, ratio, seed) the real trainer runs in its own process, as
benchmarks/bench_models.py runs it (its helpers: data preparation, the budget, run reuse, test scoring):
``recsys train --set embedding.scheme=S --set embedding.ratio=R`` (every table at 1/R of its full rows × dim;
qr's ``operation`` as ``embedding.operation``), full tables (``standard``) once per seed as the reference.
Measured per run:

- test AUC, gAUC and log loss of the exported artifact (``bench_models.measure``);
- ``embedding_bytes`` and ``dense_bytes`` as the trainer measured them on the built model (the artifact's
  metrics.json), ``embedding_bytes_full`` (full fp32 tables); never the ratio's nominal size, which small
  tables cannot reach (qr below c ≈ √rows keeps c + rows/c rows, a hashed table keeps at least one row);
- training samples/s (``train.samples_per_s``: reading and stepping), and its ratio to full tables.

Every figure is the mean ± sample std over seeds. Per (dataset, model) the Pareto front of mean AUC against
mean bytes is marked, and the paper's claim is checked per ratio: qr (mult and add) against hash, Δ AUC and
whether it is beyond noise (|Δ| ≥ 2 × pooled std, bench_models' rule; undecided with one seed).

Schemes come from the registry (``recsys.embeddings.scheme_names()``), so one registered later is run by
name; those that need more than a ratio (``NEEDS_SETUP``: dnis's search run, mc's hash-encoded ids) are listed
with the reason and skipped. Serving precisions: when ``kernels/quantize.py`` has ``quantize_tables(model,
precision)``, each full-table artifact is scored again with int8 and int4 tables (AUC loss against fp32) and
its embedding lookup (``model.sparse_arch`` on 1,000 test rows) and whole forward are timed against fp32, in
interleaved rounds (``bench_models.time_calls``).

    .venv/bin/python benchmarks/bench_embeddings.py            # dlrm and din, both datasets, 3 ratios, 3 seeds
    .venv/bin/python benchmarks/bench_embeddings.py --quick    # 4,000 synthetic rows, 1 ratio, 1 seed, 10 steps
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# This checkout's recsys and benchmarks (bench_models puts them first on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as zoo
from bench_data import cpu_pressure, machine

from recsys import artifact as artifacts
from recsys.data.layout import load_schema
from recsys.embeddings import scheme_names
from recsys.tasks import task_spec

HERE = zoo.HERE
REPO = zoo.REPO
DATASETS = ("synthetic", "movielens")  # movielens: bench_models' time split of ml-latest-small
FULL = "standard"
RATIOS = (4, 16, 64)
# Option sets run per scheme (a scheme not named: its defaults). Each becomes a label: scheme-value-….
VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {"qr": ({"operation": "mult"}, {"operation": "add"})}
NEEDS_SETUP = {
    "dnis": "needs a search run first (soft selection over dims), then the pruned dims retrained: not one "
            "ratio's training",
    "mc": "needs hash-encoded ids (data prepared with hashed sparse columns), which these datasets do not have",
}
HISTORY_MODELS = {"din"}  # run only where the schema has behaviour sequences
PRECISIONS = ("int8", "int4")
METRICS = ("auc", "gauc", "logloss", "embedding_bytes", "dense_bytes", "embedding_bytes_full", "embedding_params",
           "train_samples_per_s", "cpu_s")
CLAIM = ("qr", "hash")  # the paper's claim: the first beats the second at equal memory


@dataclass(frozen=True)
class Variant:
    """One embedding setting to train: a scheme, its options and a ratio (1 for full tables)."""

    scheme: str
    options: tuple[tuple[str, Any], ...]
    ratio: float

    @property
    def label(self) -> str:
        return "-".join([self.scheme, *(str(v) for _, v in self.options)]) if self.scheme != FULL else "full"

    @property
    def folder(self) -> str:
        return self.label if self.scheme == FULL else f"{self.label}-r{self.ratio:g}"

    def overrides(self) -> list[str]:
        sets = [f"embedding.scheme={self.scheme}", f"embedding.ratio={self.ratio:g}"]
        return sets + [f"embedding.{key}={value}" for key, value in self.options]


@dataclass(frozen=True)
class Settings(zoo.Settings):
    """What the command line decides: bench_models' settings (its helpers read them) plus the ratios and schemes."""

    ratios: list[float]
    schemes: list[str]
    note: str = ""
    reuse_only: bool = False


def variants(settings: Settings) -> tuple[list[Variant], dict[str, str]]:
    """(the variants to train, {scheme: why it is skipped}) from the registry and --schemes."""
    plan = [Variant(FULL, (), 1.0)]
    skipped: dict[str, str] = {}
    for scheme in scheme_names():
        if scheme == FULL:
            continue
        chosen = [options for options in VARIANTS.get(scheme, ({},))
                  if scheme in settings.schemes or Variant(scheme, tuple(options.items()), 1).label in settings.schemes]
        if not chosen:
            skipped[scheme] = "not in --schemes"
            continue
        if scheme in NEEDS_SETUP:
            skipped[scheme] = NEEDS_SETUP[scheme]
            continue
        for options in chosen:
            plan += [Variant(scheme, tuple(options.items()), float(ratio)) for ratio in settings.ratios]
    return plan, skipped


# ---- measuring ---------------------------------------------------------------------------------------

def table_bytes(path: Path) -> dict[str, Any]:
    """The sizes the trainer measured on the built model (metrics.json), and their ratio to full tables."""
    metrics = json.loads((path / artifacts.METRICS).read_text())
    keys = ("embedding_bytes", "dense_bytes", "embedding_bytes_full", "embedding_params")
    record = {key: metrics.get(key) for key in keys}
    if record["embedding_bytes"] and record["embedding_bytes_full"]:
        record["compression"] = record["embedding_bytes_full"] / record["embedding_bytes"]
    return record


def quantize_function() -> Any:
    """``kernels.quantize.quantize_tables`` when this checkout has it, else None."""
    try:
        from kernels.quantize import quantize_tables
    except ImportError:
        return None
    return quantize_tables


def served_embedding_bytes(model: Any) -> int:
    from kernels.quantize import served_embedding_bytes as measured

    return measured(model)


def serving_precisions(path: Path, data: Path, settings: Settings, quantize: Any) -> dict[str, Any]:
    """One full-table artifact at fp32, int8 and int4: test AUC, AUC loss, table bytes, lookup and forward ms."""
    batch = zoo.inference_batch(data)
    rows = int(batch.labels.shape[0])
    out: dict[str, Any] = {}
    calls = {}
    for precision in ("fp32", *PRECISIONS):
        artifact = artifacts.load(path)
        model = quantize(artifact.model, precision)
        artifact.model = model
        labels, scores = zoo.score_test(artifact, data)
        arch = model.sparse_arch
        out[precision] = {
            "auc": task_spec(artifact.schema).offline_metrics(labels, scores).get("auc"),
            "table_bytes": served_embedding_bytes(model)}  # fbgemm's rows with their scale and bias
        calls[f"{precision}/lookup"] = lambda a=arch: a(batch.sparse)
        calls[f"{precision}/forward"] = lambda m=model: m(batch)
    timed = zoo.time_calls(calls, rows, settings.rounds, settings.repeats, settings.warmup)
    for precision, record in out.items():
        record["lookup_ms_per_1000"] = timed[f"{precision}/lookup"]["ms_per_1000"]
        record["forward_ms_per_1000"] = timed[f"{precision}/forward"]["ms_per_1000"]
        if precision != "fp32":
            record["auc_loss"] = out["fp32"]["auc"] - record["auc"]
            record["lookup_speedup"] = out["fp32"]["lookup_ms_per_1000"] / record["lookup_ms_per_1000"]
    return out


# ---- summary -----------------------------------------------------------------------------------------

def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, model, label, ratio) over the seeds that finished, with the Pareto front marked and
    AUC and samples/s against full tables of the same (dataset, model)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        if "error" not in run:
            groups.setdefault((run["dataset"], run["model"], run["label"], run["ratio"]), []).append(run)
    rows = []
    for (dataset, model, label, ratio), mine in groups.items():
        rows.append({"dataset": dataset, "model": model, "label": label, "scheme": mine[0]["scheme"],
                     "options": mine[0]["options"], "ratio": ratio, "seeds": sorted(r["seed"] for r in mine),
                     **{m: zoo.mean_std([r.get(m) for r in mine]) for m in METRICS}})
    for row in rows:
        full = next((r for r in rows if (r["dataset"], r["model"], r["label"]) == (row["dataset"], row["model"],
                                                                                  "full")), None)
        row["auc_vs_full"] = _delta(row, full, "auc")
        row["speed_vs_full"] = _ratio(row, full, "train_samples_per_s")
        row["bytes_vs_full"] = _ratio(row, full, "embedding_bytes")
    for key in {(r["dataset"], r["model"]) for r in rows}:
        front = pareto([r for r in rows if (r["dataset"], r["model"]) == key])
        for row in rows:
            if (row["dataset"], row["model"]) == key:
                row["pareto"] = any(row is f for f in front)
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], -(r["embedding_bytes"]["mean"] or 0), r["label"]))


def _delta(row: dict[str, Any], full: dict[str, Any] | None, metric: str) -> float | None:
    if full is None or row[metric]["mean"] is None or full[metric]["mean"] is None:
        return None
    return row[metric]["mean"] - full[metric]["mean"]


def _ratio(row: dict[str, Any], full: dict[str, Any] | None, metric: str) -> float | None:
    if full is None or row[metric]["mean"] is None or not full[metric]["mean"]:
        return None
    return row[metric]["mean"] / full[metric]["mean"]


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows no other row beats on both fewer mean bytes and higher mean AUC, by increasing bytes."""
    front: list[dict[str, Any]] = []
    best = -math.inf
    scored = [r for r in rows if r["auc"]["mean"] is not None and r["embedding_bytes"]["mean"] is not None]
    for row in sorted(scored, key=lambda r: (r["embedding_bytes"]["mean"], -r["auc"]["mean"])):
        if row["auc"]["mean"] > best:
            front.append(row)
            best = row["auc"]["mean"]
    return front


def claims(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper's claim per (dataset, model) and qr variant, two ways.

    At one ratio: qr against hash of the same ratio. The ratio is nominal: small tables cannot shrink under qr
    (c + rows/c rows at least), so qr may hold more bytes than hash there. At matched memory: each qr row against
    the hash row with the fewest bytes that are still at least qr's measured bytes (hash given as much memory or
    more); the fairer test of "beats at equal memory", absent when no hash row is that large.
    """
    winner, loser = CLAIM
    out: dict[str, Any] = {"claim": f"{winner} beats {loser} at equal memory (Shi et al., KDD 2020)",
                           "rule": f"beyond noise: |Δ mean AUC| ≥ {zoo.NOISE_FACTOR:g} × pooled std over seeds "
                                   "(bench_models' rule; undecided with one seed); at matched memory: against the "
                                   f"{loser} run with the fewest measured bytes ≥ the {winner} run's",
                           "comparisons": [], "verdicts": []}
    scored = [r for r in summary if r["auc"]["mean"] is not None and r["embedding_bytes"]["mean"] is not None]
    for row in scored:
        if row["scheme"] != winner:
            continue
        key = (row["dataset"], row["model"])
        hashes = [r for r in scored if r["scheme"] == loser and (r["dataset"], r["model"]) == key]
        same_ratio = next((r for r in hashes if r["ratio"] == row["ratio"]), None)
        larger = [r for r in hashes if r["embedding_bytes"]["mean"] >= row["embedding_bytes"]["mean"]]
        matched = min(larger, key=lambda r: r["embedding_bytes"]["mean"]) if larger else None
        for kind, base in (("same_ratio", same_ratio), ("matched_memory", matched)):
            if base is None:
                continue
            noise = zoo.within_noise(row["auc"], base["auc"])
            out["comparisons"].append({
                "dataset": row["dataset"], "model": row["model"], "kind": kind, "variant": row["label"],
                "ratio": row["ratio"], "against": base["label"], "against_ratio": base["ratio"],
                "delta_auc": row["auc"]["mean"] - base["auc"]["mean"],
                "beyond_noise": None if noise is None else not noise,
                "bytes": row["embedding_bytes"]["mean"], "against_bytes": base["embedding_bytes"]["mean"]})
    groups = dict.fromkeys((c["dataset"], c["model"], c["variant"], c["kind"]) for c in out["comparisons"])
    for dataset, model, variant, kind in groups:
        mine = [c for c in out["comparisons"] if (c["dataset"], c["model"], c["variant"], c["kind"])
                == (dataset, model, variant, kind)]
        ahead = [c for c in mine if c["delta_auc"] > 0]
        undecided = any(c["beyond_noise"] is None for c in mine)
        decided = sum(1 for c in ahead if c["beyond_noise"])
        deltas = ", ".join(f"{variant} 1/{c['ratio']:g} ({mib(c['bytes'])} MiB) vs {loser} 1/{c['against_ratio']:g} "
                           f"({mib(c['against_bytes'])} MiB): {c['delta_auc']:+.4f}" for c in mine)
        how = "at the same ratio" if kind == "same_ratio" else "at matched memory"
        noise = "noise undecided (1 seed)" if undecided else f"beyond noise at {decided}"
        out["verdicts"].append({
            "dataset": dataset, "model": model, "variant": variant, "kind": kind, "compared": len(mine),
            "ahead": len(ahead), "ahead_beyond_noise": None if undecided else decided,
            "statement": f"{dataset}, {model}, {how}: {variant} ahead of {loser} in {len(ahead)} of {len(mine)}, "
                         f"{noise}; Δ AUC {deltas}."})
    return out


# ---- output ------------------------------------------------------------------------------------------

def mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.2f}"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = ["# Embedding schemes: AUC against embedding bytes", "",
             ("**Smoke run (--quick): not results.** " if results["quick"] else "")
             + f"{m['cpu']}, {m['nproc']} cores, {m['torch_threads']} torch threads, torch {m['torch']}, "
             f"{m['date']}, git {results['git_sha']}; load average {m['load_average']} → "
             f"{m.get('load_average_end')}; {results['seconds']:,.0f} s.", "",
             f"Command: `{results['command']}`", "", *([results["note"], ""] if results.get("note") else []),
             f"Budget: {results['budget']}", "",
             "## Results (mean ± std over seeds)", "",
             ("Bytes are measured on the built model (metrics.json `embedding_bytes`), not the ratio's nominal "
             "size; ×smaller is full tables' bytes over the scheme's. Pareto: on the front of mean AUC against mean "
             "bytes of its dataset and model. Training CPU s: the training process's user + system seconds (start-up "
             "and evaluation included), which other load on a shared machine inflates less than samples/s."), "",
             ("| dataset | model | scheme | ratio | seeds | embedding MiB | ×smaller | test AUC | Δ AUC vs full "
             "| train samples/s | vs full | training CPU s | Pareto |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["summary"]:
        ratio = "1" if row["label"] == "full" else f"1/{row['ratio']:g}"
        smaller = "–" if not row["bytes_vs_full"] else f"{1 / row['bytes_vs_full']:.1f}"
        delta = "–" if row["auc_vs_full"] is None else f"{row['auc_vs_full']:+.4f}"
        speed = "–" if row["speed_vs_full"] is None else f"{row['speed_vs_full']:.2f}×"
        lines.append(f"| {row['dataset']} | {row['model']} | {row['label']} | {ratio} | {len(row['seeds'])} | "
                     f"{mib(row['embedding_bytes']['mean'])} | {smaller} | {zoo.pm(row['auc'], 4)} | {delta} | "
                     f"{zoo.pm(row['train_samples_per_s'], 0, True)} | {speed} | {zoo.pm(row['cpu_s'], 0, True)} | "
                     f"{'yes' if row['pareto'] else ''} |")
    lines.append("")
    for name, data in results["datasets"].items():
        rows = " / ".join(f"{data['rows'].get(s) or 0:,}" for s in ("train", "valid", "test"))
        line = f"- {name}: {rows} train / valid / test rows ({data['split']} split); {data['source']}"
        if data.get("test_bayes_auc") is not None:
            line += f"; Bayes-optimal test AUC {data['test_bayes_auc']:.4f}"
        lines.append(line + ".")
    lines += [f"- {scheme}: skipped, {why}." for scheme, why in results["skipped_schemes"].items()]
    for model, why in results.get("skipped_models", {}).items():
        lines.append(f"- {model}: skipped on {why}.")
    if results["failed"]:
        lines += ["", "Failed runs: " + "; ".join(f"{f['model']} {f['label']} 1/{f['ratio']:g} on {f['dataset']} "
                                                 f"seed {f['seed']}: {f['error']}" for f in results["failed"])]
    check = results["claims"]
    lines += ["", "## The claim: " + check["claim"], "", check["rule"] + ".", ""]
    lines += [f"- {v['statement']}" for v in check["verdicts"]] or ["- no qr and hash runs to compare."]
    serving = results["serving"]
    lines += ["", "## Serving precision (full tables quantised after training)", ""]
    if serving.get("note"):
        lines += [serving["note"], ""]
    if serving.get("runs"):
        lines += [("| dataset | model | seed | precision | test AUC | AUC loss vs fp32 | table MiB | lookup ms / 1,000 "
                  "| lookup speed-up | forward ms / 1,000 |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for run in serving["runs"]:
            if "error" in run:
                lines.append(f"| {run['dataset']} | {run['model']} | {run['seed']} | failed: {run['error']} "
                             "| | | | | | |")
                continue
            for precision, r in run["precisions"].items():
                loss = "–" if "auc_loss" not in r else f"{r['auc_loss']:+.4f}"
                speed = "–" if "lookup_speedup" not in r else f"{r['lookup_speedup']:.2f}×"
                lines.append(f"| {run['dataset']} | {run['model']} | {run['seed']} | {precision} | {r['auc']:.4f} | "
                             f"{loss} | {mib(r['table_bytes'])} | {r['lookup_ms_per_1000']:.3f} | {speed} | "
                             f"{r['forward_ms_per_1000']:.3f} |")
    return "\n".join(lines) + "\n"


# ---- main --------------------------------------------------------------------------------------------

def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dlrm,din", help="comma-separated registered models (din and other "
                        "history models only on data with behaviour sequences)")
    parser.add_argument("--seeds", type=int, help="seeds 0 … N-1 per setting (default 3; --quick: 1)")
    parser.add_argument("--rows", "--synthetic-rows", dest="rows", type=int,
                        help="rows of the synthetic set (default 1,000,000; --quick: 4,000)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated: {', '.join(DATASETS)}")
    parser.add_argument("--movielens", type=Path, default=zoo.MOVIELENS, help="the ml-latest-small folder")
    parser.add_argument("--epochs", default="synthetic=1,movielens=10", help="the epoch cap per dataset, NAME=N,…")
    parser.add_argument("--patience", type=int, default=2, help="early stopping: evaluations without improvement")
    parser.add_argument("--max-steps", type=int, help="cap every run's steps (default: none; --quick: 10)")
    parser.add_argument("--ratios", help="memory divisors against full tables (default 4,16,64; --quick: 16)")
    parser.add_argument("--schemes", help="comma-separated compressing schemes, or variants such as qr-add, to run "
                        f"(default: every registered one; now {', '.join(s for s in scheme_names() if s != FULL)})")
    parser.add_argument("--rounds", type=int, help="timing rounds for serving precisions (default 5; --quick: 1)")
    parser.add_argument("--repeats", type=int, help="timed calls per round (default 10; --quick: 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--work", type=Path, help="data and runs (gitignored; default benchmarks/work/embeddings, "
                        "--quick: benchmarks/work/embeddings-quick, so a smoke run never replaces real runs)")
    parser.add_argument("--out", type=Path, help="folder for embeddings.json and embeddings.md (default "
                        "benchmarks/results; --quick: WORK/quick)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs already in --work")
    parser.add_argument("--reuse-only", action="store_true", help="train nothing: collect the runs already in "
                        "--work (e.g. trained by parallel invocations), the others listed as failed")
    parser.add_argument("--note", default="", help="a line for embeddings.md and .json (how the runs were made, "
                        "e.g. the commands that trained them in parallel before this one reused them)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 seed, 1 ratio, a few steps: a smoke run")
    args = parser.parse_args(argv)
    models, datasets, epochs = zoo.parse_runs(parser, args, DATASETS)
    try:
        ratios = [float(r) for r in (args.ratios or ("16" if args.quick else ",".join(map(str, RATIOS)))).split(",")]
    except ValueError:
        parser.error("--ratios: expected numbers R,… e.g. 4,16,64")
    if any(r <= 1 for r in ratios):
        parser.error("--ratios: each must be > 1 (full tables are always run)")
    compressing = [s for s in scheme_names() if s != FULL]
    labels = [Variant(s, tuple(o.items()), 1).label for s in compressing for o in VARIANTS.get(s, ())]
    schemes = [s.strip() for s in args.schemes.split(",")] if args.schemes else compressing
    if any(s not in compressing + labels for s in schemes):
        parser.error(f"--schemes: choose from {', '.join(compressing + labels)}")
    seeds = args.seeds or (1 if args.quick else 3)
    if seeds < 1:
        parser.error("--seeds: at least 1")
    if "movielens" in datasets and not (args.movielens / "ratings.csv").is_file():
        parser.error(f"--movielens {args.movielens}: no ratings.csv there; pass the ml-latest-small folder")
    work = args.work or HERE / "work" / ("embeddings-quick" if args.quick else "embeddings")
    return Settings(
        models=models, seeds=list(range(seeds)), datasets=datasets,
        synthetic_rows=args.rows or (4_000 if args.quick else 1_000_000), movielens=args.movielens, epochs=epochs,
        patience=args.patience, max_steps=args.max_steps if args.max_steps is not None else (10 if args.quick else None),
        ratios=ratios, schemes=schemes, work=work.resolve(),
        out=(args.out or (work / "quick" if args.quick else HERE / "results")).resolve(),
        rounds=args.rounds or (1 if args.quick else 5), repeats=args.repeats or (2 if args.quick else 10),
        warmup=args.warmup, fresh=args.fresh, quick=args.quick, note=args.note,
        reuse_only=args.reuse_only)


def budget_description(settings: Settings) -> str:
    caps = ", ".join(f"{d} {settings.epochs[d]} epoch(s)" for d in settings.datasets)
    steps = f"; at most {settings.max_steps} steps a run" if settings.max_steps is not None else ""
    return (f"each model's configs/MODEL.yaml with trainer.epochs capped at {caps}{steps}; early stopping on valid "
            f"AUC with patience {settings.patience}, the best epoch's weights exported; only embedding.scheme, "
            f"embedding.ratio and the scheme's options change between runs; 1 process, "
            f"{os.environ.get('OMP_NUM_THREADS', 'all')} thread(s) (OMP_NUM_THREADS)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings = parse(argv)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    started = time.perf_counter()
    plan, skipped = variants(settings)
    quantize = quantize_function()
    results: dict[str, Any] = {
        "benchmark": "embeddings", "quick": settings.quick,
        "machine": {**machine(), "cpu_pressure": cpu_pressure()}, "git_sha": artifacts.git_sha(),
        "command": shlex.join([sys.executable, str(Path(__file__).resolve().relative_to(REPO)),
                               *(argv if argv is not None else sys.argv[1:])]),
        "models": settings.models, "seeds": settings.seeds, "ratios": settings.ratios,
        "schemes": sorted({v.label for v in plan}), "skipped_schemes": skipped, "skipped_models": {},
        "budget": budget_description(settings), "note": settings.note, "datasets": {}, "runs": [], "failed": [],
    }
    data = {name: zoo.prepare_data(name, settings) for name in settings.datasets}
    for name, path in data.items():
        results["datasets"][name] = zoo.dataset_record(name, path)
    jobs = [(d, m) for d in settings.datasets for m in settings.models
            if m not in HISTORY_MODELS or load_schema(data[d]).sequences]
    for d in settings.datasets:
        for m in settings.models:
            if (d, m) not in jobs:
                results["skipped_models"][m] = f"{d}: no behaviour sequences"
    total, done = len(jobs) * len(plan) * len(settings.seeds), 0
    for dataset, model in jobs:
        for variant in plan:
            for seed in settings.seeds:
                done += 1
                zoo.log(f"[{done}/{total}] {model} {variant.folder} on {dataset}, seed {seed}")
                path, info = zoo.train_run(model, dataset, data[dataset], seed, settings, variant.overrides(),
                                           variant.folder, settings.reuse_only)
                base = {"model": model, "dataset": dataset, "seed": seed, "label": variant.label,
                        "scheme": variant.scheme, "options": dict(variant.options), "ratio": variant.ratio, **info}
                try:
                    if path is None:
                        raise RuntimeError(info["error"])
                    measured = zoo.measure(path, data[dataset])
                    measured.pop("model_config", None)
                    record = {**base, **measured, **table_bytes(path), "artifact": str(path)}
                except Exception as exc:  # noqa: BLE001 — one broken run must not end a run of hours
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    record = {**base, "error": first}
                    results["failed"].append(record)
                    zoo.log(f"    failed: {first}")
                else:
                    zoo.log(f"    AUC {record['auc']:.4f}, {record['embedding_bytes'] / 2**20:,.2f} MiB of tables, "
                        f"{record['train_samples_per_s']:,.0f} samples/s, {time.perf_counter() - started:,.0f} s so far")
                results["runs"].append(record)
    results["summary"] = summarize(results["runs"])
    results["claims"] = claims(results["summary"])
    results["serving"] = {"precisions": ["fp32", *PRECISIONS], "runs": []}
    if quantize is None:
        results["serving"]["note"] = ("kernels/quantize.py (quantize_tables) is not in this checkout: int8/int4 "
                                      "serving not measured.")
    else:
        results["serving"]["note"] = ("Each full-table artifact scored again with its tables quantised by "
                                      "kernels.quantize.quantize_tables; lookup: model.sparse_arch on 1,000 test "
                                      f"rows, forward: the whole model; median of {settings.rounds} interleaved "
                                      f"rounds × {settings.repeats} calls.")
        for run in results["runs"]:
            if run["label"] != "full" or "error" in run:
                continue
            zoo.log(f"serving precisions: {run['model']} on {run['dataset']}, seed {run['seed']}")
            try:
                precisions = serving_precisions(Path(run["artifact"]), data[run["dataset"]], settings, quantize)
            except Exception as exc:  # noqa: BLE001 — a kernel that fails is a result, not the end of the run
                results["serving"]["runs"].append({**{k: run[k] for k in ("dataset", "model", "seed")},
                                                   "error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
                continue
            results["serving"]["runs"].append({**{k: run[k] for k in ("dataset", "model", "seed")},
                                               "precisions": precisions})
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] |= {"load_average_end": [round(x, 2) for x in os.getloadavg()],
                           "cpu_pressure_end": cpu_pressure()}
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "embeddings.json").write_text(artifacts.json_text(results, indent=1) + "\n")
    (settings.out / "embeddings.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {settings.out / 'embeddings.json'} and {settings.out / 'embeddings.md'} in "
          f"{results['seconds']:,.0f} s", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
