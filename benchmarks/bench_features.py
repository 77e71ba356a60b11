"""Feature methods: ranking quality on planted data, run time on 1M rows, AUC of DLRM retrained on each selection.

Issue #15. For each data set (the planted synthetic set, the Criteo sample, MovieLens) and each
registered feature method (``--methods``, default all), this process loads a seeded sample of the
train rows once (``recsys.features.data.load_feature_data``, the sample ``recsys features rank``
takes by default: 200,000 rows), then:

- ranks the fields (``FeatureMethod.timed_rank``: the method's own seconds, the load of the sample
  recorded separately); on the 1M-row synthetic set this is the "run time on 1M rows" figure;
- on planted data (``recsys data synth --noise-fields 30 --redundant-fields 6 --planted-cross``,
  truth in stats.json): precision@k (``recsys.features.output.planted_scores``: k = the informative
  fields, over the pool of informative and noise fields), the share of noise fields the method's own
  selection drops, and the planted redundant copies it keeps beside their source;
- selects with the method's own cut (``choose_fields(keep=None, budget=None)``: its suggestion, else the
  knee of its scores), writes the pruned schema (``pruned_schema``) and retrains DLRM on it through the
  CLI (``recsys train --model dlrm --schema S --config configs/dlrm.yaml``), the same budget as the
  full-schema baseline: test AUC from the artifact's metrics.json and its difference to the baseline;
- for one reference method (``--reference``, outrank by default) retrains at k = 5, 10, 20, 40 fields
  (those below the field count; ``--curve``) for the AUC-vs-number-of-fields curve (all fields: the
  baseline);
- for every generator (``FeatureGenerator``, openfe) generates features on the same sample and writes the
  data set with them (``recsys.features.generate.write_generated``, what ``recsys features generate``
  does, the equivalent command recorded), says whether the planted cross was found (a ``cross`` recipe
  over the two ``planted["cross"]`` fields), and retrains DLRM on the generated data set.

Per data set it also keeps the redundancy matrix of the sample (``recsys.features.quality.redundancy``),
the pairs flagged at ≥ 0.8 against the planted copies, and each method's top 20 scores (the report's
bar charts). Every AUC is the mean over ``--seeds`` (per-seed values kept).

The training budget (every run of a data set alike): configs/dlrm.yaml with ``trainer.epochs`` capped per
data set (``--epochs``), early stopping on valid AUC (patience ``--patience``), ``trainer.max_steps``
(``--max-steps``, none by default). Data and runs live in ``--work`` (benchmarks/work/features, gitignored);
a run whose command, config, data and schema are unchanged is reused (``--fresh`` retrains). The Criteo
sample and MovieLens come from ``--shared`` (../shared/datasets beside the checkout); a data set whose
files are absent is skipped with the reason recorded. The Criteo sample has 200 rows: a format check,
its AUCs are noise.

    .venv/bin/python benchmarks/bench_features.py            # every method, three data sets (hours)
    .venv/bin/python benchmarks/bench_features.py --quick    # 100k rows, outrank and openfe, a few steps: a smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import bench_models as zoo  # noqa: E402
from bench_data import cpu_pressure, machine  # noqa: E402

from recsys import artifact as artifacts  # noqa: E402
from recsys.data.layout import read_stats  # noqa: E402
from recsys.features import FEATURE_METHODS, feature_method, method_names  # noqa: E402
from recsys.features.base import FeatureData, FeatureGenerator, Ranking  # noqa: E402
from recsys.features.data import DEFAULT_SAMPLE, load_feature_data  # noqa: E402
from recsys.features.output import planted_scores, planted_truth  # noqa: E402
from recsys.features.quality import REDUNDANT_NMI, redundancy, redundant_pairs  # noqa: E402
from recsys.features.select import choose_fields, pruned_schema  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "datasets"
DATASETS = ("synthetic", "criteo", "movielens")
MODEL = "dlrm"
CONFIG = "configs/dlrm.yaml"
TOP = 20  # scores per method kept for the report's bar charts
CURVE = (5, 10, 20, 40)
RUN_RECORD = "bench-run.json"
QUICK_METHODS = ("outrank", "openfe")
# The Criteo sample's 160 train rows make no full batch of configs/dlrm.yaml's 512.
DATASET_OVERRIDES = {"criteo": ["trainer.batch_size=32"]}
NOTES = {"criteo": "DeepCTR's 200-row Criteo sample (20 test rows): a check that the methods run on real Criteo "
                   "fields; its AUCs are noise",
         "movielens": "ml-latest-small, time split, rating ≥ 4 a click: few fields (the curve has one point below "
                      "all of them)"}


@dataclass(frozen=True)
class Settings:
    """What the command line decides."""

    methods: list[str]
    datasets: list[str]
    rows: int
    noise_fields: int
    redundant_fields: int
    sample: int
    seeds: list[int]
    epochs: dict[str, int]
    patience: int
    max_steps: int | None
    reference: str | None
    curve: tuple[int, ...]
    shared: Path
    work: Path
    out: Path
    fresh: bool
    quick: bool
    train: bool


# ---- data ------------------------------------------------------------------------------------------

def source_path(name: str, shared: Path) -> Path | None:
    """The raw input of a real data set (None for the synthetic one)."""
    return {"criteo": shared / "criteo-sample" / "criteo_sample.txt",
            "movielens": shared / "movielens" / "ml-latest-small"}.get(name)


def prepare_command(name: str, settings: Settings, out: Path) -> list[str]:
    if name == "synthetic":
        return zoo.cli("-q", "data", "synth", "--kind", "ctr", "--rows", str(settings.rows), "--seed", "0",
                       "--noise-fields", str(settings.noise_fields), "--redundant-fields",
                       str(settings.redundant_fields), "--planted-cross", "--out", str(out), "--overwrite")
    source = source_path(name, settings.shared)
    if name == "criteo":
        return zoo.cli("-q", "data", "prepare", "--format", "criteo", "--input", str(source), "--out", str(out),
                       "--overwrite")
    return zoo.cli("-q", "data", "prepare", "--format", "movielens", "--task", "ctr", "--split", "time",
                   "--input", str(source), "--out", str(out), "--overwrite")


def missing_source(name: str, settings: Settings) -> str | None:
    """Why a data set cannot be prepared here (its raw files are absent), or None."""
    source = source_path(name, settings.shared)
    if source is None or source.exists():
        return None
    return f"{source} is absent (the real data sets live in ../shared/datasets beside the checkout; --shared)"


def prepare_data(name: str, settings: Settings) -> tuple[Path, list[str]]:
    """(the prepared folder, its command), made once in ``--work`` (again when the command changed)."""
    out = settings.work / "data" / (f"synthetic-{settings.rows}" if name == "synthetic" else name)
    command = prepare_command(name, settings, out)
    record = out / zoo.DATA_RECORD
    wanted = {"command": command[1:]}
    if record.is_file() and json.loads(record.read_text()) == wanted:
        return out, command
    zoo.log(f"preparing {name}: {shlex.join(command[1:])}")
    if subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL).returncode != 0:
        raise SystemExit(f"preparing {name} failed (the error is above)")
    record.write_text(json.dumps(wanted) + "\n")
    return out, command


def data_record(data: Path, command: list[str], loaded: FeatureData, load_s: float) -> dict[str, Any]:
    stats = read_stats(data)
    return {"path": str(data), "command": shlex.join(command[1:]),
            "rows": {split: rec.get("rows") for split, rec in stats.get("splits", {}).items()},
            "test_bayes_auc": stats.get("splits_bayes", {}).get("test", {}).get("auc"),
            "fields": loaded.fields, "kinds": loaded.kinds, "kept_unranked": loaded.kept_unranked,
            "rows_total": loaded.rows_total, "rows_sampled": loaded.frame.height, "load_s": round(load_s, 3)}


# ---- scoring against the planted truth ---------------------------------------------------------------

def truth_pairs(truth: dict[str, Any] | None) -> set[frozenset[str]]:
    return {frozenset(p) for p in (truth or {}).get("redundant", {}).items()}


def redundancy_record(fields: list[str], matrix: dict[tuple[str, str], float], seconds: float,
                      truth: dict[str, Any] | None) -> dict[str, Any]:
    """The matrix (1 on the diagonal), the pairs flagged at ≥ REDUNDANT_NMI and, with a truth, how they match
    the planted copies."""
    flagged = [{"a": a, "b": b, "redundancy": round(v, 4)} for a, b, v in redundant_pairs(matrix)]
    out: dict[str, Any] = {
        "fields": fields, "seconds": round(seconds, 3), "threshold": REDUNDANT_NMI, "flagged": flagged,
        "matrix": [[1.0 if a == b else round(matrix.get((a, b), matrix.get((b, a), 0.0)), 4) for b in fields]
                   for a in fields]}
    planted = truth_pairs(truth)
    if planted:
        found = {frozenset((p["a"], p["b"])) for p in flagged}
        out["vs_truth"] = {"planted": len(planted), "flagged": len(found), "found": len(found & planted),
                           "missed": sorted("~".join(sorted(p)) for p in planted - found),
                           "extra": sorted("~".join(sorted(p)) for p in found - planted)}
    return out


def planted_record(order: list[str], kept: list[str], truth: dict[str, Any]) -> dict[str, Any]:
    """precision@k of the ranking, and what the method's own selection does with noise and copies."""
    scores = planted_scores(order, truth)
    noise = [f for f in truth.get("noise", []) if f in order]
    kept_set = set(kept)
    dropped = [f for f in noise if f not in kept_set]
    copies = {copy: source for copy, source in truth.get("redundant", {}).items() if copy in order}
    both = sorted(f"{copy}~{source}" for copy, source in copies.items() if copy in kept_set and source in kept_set)
    return {**scores, "noise_total": len(noise), "noise_dropped": len(dropped),
            "noise_dropped_fraction": len(dropped) / len(noise) if noise else None,
            "noise_kept": sorted(f for f in noise if f in kept_set),
            "copies_kept_with_source": both, "copies_total": len(copies)}


def top_scores(ranking: Ranking, n: int = TOP) -> list[dict[str, Any]]:
    return [{"field": f, "score": float(ranking.scores[f])} for f in ranking.order()[:n]]


def cross_found(generated: list[dict[str, Any]], truth: dict[str, Any] | None) -> bool | None:
    """Whether a generated feature is a cross of exactly the two planted cross fields (None: no planted cross)."""
    cross = set((truth or {}).get("cross") or [])
    if not cross:
        return None
    return any(g.get("recipe", {}).get("op") == "cross" and set(g["recipe"].get("inputs", [])) == cross
               for g in generated)


# ---- training ----------------------------------------------------------------------------------------

def budget_overrides(settings: Settings, dataset: str) -> list[str]:
    steps = "null" if settings.max_steps is None else str(settings.max_steps)
    return [f"trainer.epochs={settings.epochs[dataset]}", f"trainer.max_steps={steps}",
            f"trainer.early_stopping.patience={settings.patience}", "trainer.early_stopping.metric=auc",
            "trainer.progress=false", *DATASET_OVERRIDES.get(dataset, [])]


def train_command(data: Path, out: Path, seed: int, schema: Path | None, overrides: list[str]) -> list[str]:
    command = zoo.cli("-q", "train", "--model", MODEL, "--data", str(data), "--out", str(out), "--seed", str(seed),
                      "--config", CONFIG)
    if schema is not None:
        command += ["--schema", str(schema)]
    for value in overrides:
        command += ["--set", value]
    return command


def train(settings: Settings, dataset: str, data: Path, label: str, seed: int, schema: Path | None
          ) -> dict[str, Any]:
    """One DLRM run (reused from ``--work`` when nothing that decides it changed): its test AUC or an error."""
    out = settings.work / "runs" / dataset / label / f"seed{seed}"
    command = train_command(data, out, seed, schema, budget_overrides(settings, dataset))
    parts = [*command[1:], (REPO / CONFIG).read_text(), (data / "stats.json").read_text(),
             schema.read_text() if schema is not None else ""]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    info: dict[str, Any] = {"seed": seed, "command": shlex.join(command[1:])}
    record = out / RUN_RECORD
    metrics_file = out / "artifact" / artifacts.METRICS
    if not settings.fresh and record.is_file() and metrics_file.is_file() and \
            json.loads(record.read_text()).get("digest") == digest:
        saved = json.loads(record.read_text())
        info |= {"reused": saved.get("trained_at"), **{k: saved[k] for k in ("wall_s", "cpu_s") if k in saved}}
    else:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start, cpu = time.perf_counter(), zoo._children_cpu_s()
        with (out / "bench-train.log").open("w") as handle:
            result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
        info |= {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(zoo._children_cpu_s() - cpu, 1)}
        if result.returncode != 0:
            lines = [line for line in (out / "bench-train.log").read_text().splitlines() if line.strip()]
            return {**info, "error": lines[-1] if lines else f"exit status {result.returncode}"}
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        record.write_text(json.dumps({"digest": digest, "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "wall_s": info["wall_s"], "cpu_s": info["cpu_s"]}) + "\n")
    metrics = json.loads(metrics_file.read_text())
    return {**info, "auc": metrics.get("test.auc"), "logloss": metrics.get("test.logloss"),
            "valid_auc": metrics.get("valid.auc"), "steps": metrics.get("train.steps"),
            "best_epoch": metrics.get("train.best_epoch"), "train_s": metrics.get("train.seconds"),
            "embedding_params": metrics.get("embedding_params"), "artifact": str(out / "artifact")}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std of the runs' test AUC (std None with one run), the failed runs' errors."""
    aucs = [r["auc"] for r in runs if isinstance(r.get("auc"), int | float)]
    errors = [r["error"] for r in runs if "error" in r]
    out: dict[str, Any] = {"auc": statistics.fmean(aucs) if aucs else None,
                           "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else None, "runs": runs}
    if errors:
        out["error"] = errors[0]
    return out


def with_delta(record: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    if isinstance(record.get("auc"), float | int) and isinstance(baseline.get("auc"), float | int):
        record["delta_auc"] = record["auc"] - baseline["auc"]
    else:
        record["delta_auc"] = None
    return record


def train_all(settings: Settings, dataset: str, data: Path, label: str, schema: Path | None) -> dict[str, Any]:
    return aggregate([train(settings, dataset, data, label, seed, schema) for seed in settings.seeds])


def save_schema(settings: Settings, dataset: str, name: str, data: FeatureData, kept: list[str],
                interactions: list[tuple[str, str]] | None) -> Path:
    path = settings.work / "schemas" / dataset / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    pruned_schema(data, kept, interactions).save(path)
    return path


def retrain_selection(settings: Settings, dataset: str, data: Path, loaded: FeatureData, name: str,
                      kept: list[str], interactions: list[tuple[str, str]] | None, baseline: dict[str, Any]
                      ) -> dict[str, Any]:
    """DLRM retrained on the pruned schema of ``kept`` (its AUC, Δ to ``baseline``, the schema's path), or the
    error that stopped it."""
    try:
        schema = save_schema(settings, dataset, name, loaded, kept, interactions)
    except Exception as exc:  # noqa: BLE001 — a selection that makes no schema is recorded, the run goes on
        return {"auc": None, "delta_auc": None, "error": f"pruned schema: {type(exc).__name__}: {exc}"}
    return {**with_delta(train_all(settings, dataset, data, f"{name}-selected", schema), baseline),
            "schema": str(schema)}


# ---- one data set ------------------------------------------------------------------------------------

def method_options(name: str, quick: bool) -> dict[str, Any]:
    return dict(FEATURE_METHODS[name].quick or {}) if quick else {}


def rank_method(name: str, loaded: FeatureData, load_s: float, settings: Settings, truth: dict[str, Any] | None
                ) -> tuple[dict[str, Any], Ranking | None, Any]:
    """(record, ranking, method instance) of one method on the sample (``load_s``: the sample's loading, recorded
    apart from the method's own seconds); an exception is the record's error."""
    options = method_options(name, settings.quick)
    record: dict[str, Any] = {"method": name, "options": options}
    try:
        method = feature_method(name, options)
        record["paper"] = method.paper
        ranking = method.timed_rank(loaded)
        kept = choose_fields(loaded, ranking, None, None)
    except Exception as exc:  # noqa: BLE001 — one broken method must not end a run of hours
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return record, None, None
    record |= {"seconds": round(ranking.seconds, 3), "rows_sampled": loaded.frame.height,
               "load_s": round(load_s, 3),
               "rows_total": loaded.rows_total, "top": top_scores(ranking), "order": ranking.order(),
               "suggested": ranking.suggested, "kept": kept, "fields_kept": len(kept),
               "fields_total": len(loaded.fields),
               "interactions": [list(p) for p in ranking.interactions] if ranking.interactions is not None else None}
    if truth is not None:
        record["planted"] = planted_record(ranking.order(), kept, truth)
    return record, ranking, method


def generate_record(name: str, method: FeatureGenerator, loaded: FeatureData, settings: Settings,
                    truth: dict[str, Any] | None) -> tuple[dict[str, Any], Path | None]:
    """Generated features (what ``recsys features generate`` writes) and the folder of the new data set."""
    from recsys.features.generate import write_generated

    out = settings.work / "data" / f"{Path(str(loaded.data_dir)).name}-{name}"
    options = method_options(name, settings.quick)
    command = ["recsys", "features", "generate", "--data", str(loaded.data_dir), "--method", name, "--out", str(out),
               "--sample", str(settings.sample), "--overwrite",
               *(a for k, v in options.items() for a in ("--option", f"{k}={json.dumps(v)}"))]
    record: dict[str, Any] = {"method": name, "command": shlex.join(command), "data": str(out)}
    try:
        start = time.perf_counter()
        proposals = method.generate(loaded)
        record["seconds"] = round(time.perf_counter() - start, 3)
        if not proposals:
            record["error"] = "no generated feature improved on the base fields"
            return record, None
        write_generated(loaded.data_dir, out, proposals, overwrite=True, progress=False,
                        details={"method": name, "seconds": record["seconds"]})
    except Exception as exc:  # noqa: BLE001
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return record, None
    record["features"] = [{"name": p.name, "kind": p.kind, "gain": p.gain,
                           "recipe": p.recipe.model_dump(mode="json", exclude_none=True)} for p in proposals]
    record["cross_found"] = cross_found(record["features"], truth)
    return record, out


def curve_ks(settings: Settings, count: int) -> list[int]:
    return [k for k in settings.curve if 1 <= k < count]


def run_dataset(dataset: str, settings: Settings) -> dict[str, Any]:
    """Everything measured on one data set (module docstring)."""
    data, command = prepare_data(dataset, settings)
    start = time.perf_counter()
    loaded = load_feature_data(data, sample=settings.sample, seed=0)
    load_s = time.perf_counter() - start
    truth = planted_truth(data)
    entry: dict[str, Any] = {"data": data_record(data, command, loaded, load_s), "planted": truth}
    if dataset in NOTES:
        entry["note"] = NOTES[dataset]
    zoo.log(f"{dataset}: {len(loaded.fields)} fields, {loaded.frame.height:,} of {loaded.rows_total:,} train "
            f"rows sampled in {load_s:.1f} s")
    start = time.perf_counter()
    matrix = redundancy(loaded)
    entry["redundancy"] = redundancy_record(loaded.fields, matrix, time.perf_counter() - start, truth)
    if settings.train:
        zoo.log(f"{dataset}: DLRM on every field (the baseline)")
        entry["baseline"] = train_all(settings, dataset, data, "full", None) | {"fields": len(loaded.fields)}
        log_auc("baseline", entry["baseline"])
    baseline = entry.get("baseline", {})
    entry["methods"], rankings, generators = {}, {}, {}
    for name in settings.methods:
        zoo.log(f"{dataset}: {name}")
        record, ranking, method = rank_method(name, loaded, load_s, settings, truth)
        if ranking is not None:
            rankings[name] = ranking
            if isinstance(method, FeatureGenerator):
                generators[name] = method
            zoo.log(f"    ranked in {record['seconds']:.1f} s, keeps {record['fields_kept']} of "
                    f"{record['fields_total']}" + (f", precision@{record['planted']['k']} "
                                                   f"{record['planted']['precision_at_k']:.3f}"
                                                   if record.get("planted") else ""))
            if settings.train:
                record["retrained"] = retrain_selection(settings, dataset, data, loaded, name, record["kept"],
                                                        ranking.interactions, baseline)
                record["schema"] = record["retrained"].pop("schema", None)
                log_auc("    retrained", record["retrained"])
        else:
            zoo.log(f"    failed: {record['error']}")
        entry["methods"][name] = record
    reference = settings.reference if settings.reference in rankings else next(iter(rankings), None)
    if settings.train and reference is not None:
        points = []
        for k in curve_ks(settings, len(loaded.fields)):
            zoo.log(f"{dataset}: {reference}'s best {k} fields")
            kept = choose_fields(loaded, rankings[reference], k, None)
            points.append({"k": k, **retrain_selection(settings, dataset, data, loaded, f"{reference}-top{k}", kept,
                                                       rankings[reference].interactions, baseline)})
            log_auc(f"    {k} fields", points[-1])
        points.append({"k": len(loaded.fields), "all": True, "auc": baseline.get("auc"),
                       "auc_std": baseline.get("auc_std"), "delta_auc": 0.0 if baseline.get("auc") else None})
        entry["curve"] = {"method": reference, "points": points}
    entry["generated"] = {}
    for name, method in generators.items():
        zoo.log(f"{dataset}: {name} generates features")
        record, out = generate_record(name, method, loaded, settings, truth)
        if out is not None and settings.train:
            record["retrained"] = with_delta(train_all(settings, dataset, out, f"{name}-generated", None), baseline)
            log_auc("    retrained on the generated data set", record["retrained"])
        entry["generated"][name] = record
    return entry


def log_auc(what: str, record: dict[str, Any]) -> None:
    if record.get("auc") is None:
        zoo.log(f"{what}: failed: {record.get('error')}")
    else:
        delta = record.get("delta_auc")
        zoo.log(f"{what}: test AUC {record['auc']:.4f}" + (f" (Δ {delta:+.4f})" if delta is not None else ""))


# ---- output ------------------------------------------------------------------------------------------

def _f(value: Any, digits: int = 4, sign: bool = False) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _auc(record: dict[str, Any]) -> str:
    """'0.8123' or '0.8123 ± 0.0008' (over seeds); the error of a failed run."""
    if record.get("auc") is None and "error" in record:
        return f"failed: {record['error']}"
    std = record.get("auc_std")
    return _f(record.get("auc")) + (f" ± {std:.4f}" if isinstance(std, float) else "")


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"# Feature methods (`benchmarks/bench_features.py`{' --quick' if results['quick'] else ''})", "",
             *(["**Smoke run (--quick): not results.**", ""] if results["quick"] else []),
             f"Command: `{results['command']}`  ",
             f"Machine: {m['cpu']}, {m['nproc']} cores, torch {m['torch']}, {m['date']}, git {results['git_sha']}; "
             f"load average {m['load_average']} → {m.get('load_average_end')}  ",
             f"Budget: {results['budget']}", "",
             *([] if results.get("finished") else ["**Unfinished: the data sets below are those done so far.**", ""])]
    for dataset, entry in results["datasets"].items():
        lines += [f"## {dataset}", ""]
        if "skipped" in entry or "error" in entry:
            lines += [f"Skipped: {entry['skipped']}" if "skipped" in entry else f"Failed: {entry['error']}", ""]
            continue
        data = entry["data"]
        lines += [f"Data: `{data['command']}`: {data['rows_total']:,} train rows, {data['rows_sampled']:,} sampled "
                  f"(loaded in {data['load_s']:.1f} s), {len(data['fields'])} candidate fields."
                  + (f" Note: {entry['note']}." if entry.get("note") else ""), ""]
        baseline = entry.get("baseline") or {}
        if baseline:
            lines += [f"Baseline (DLRM, every field): test AUC {_auc(baseline)}.", ""]
        planted = entry.get("planted") is not None
        lines += ["| method | " + ("precision@k | noise dropped | copies kept with source | " if planted else "")
                  + "seconds | fields kept | test AUC | ΔAUC |",
                  "|---|" + ("---:|---:|---:|" if planted else "") + "---:|---:|---:|---:|"]
        for name, record in entry["methods"].items():
            if "error" in record:
                lines.append(f"| {name} | failed: {record['error']} |")
                continue
            cells = [name]
            if planted:
                p = record.get("planted") or {}
                cells += [f"{_f(p.get('precision_at_k'), 3)} (k={p.get('k')})",
                          f"{p.get('noise_dropped')}/{p.get('noise_total')}",
                          f"{len(p.get('copies_kept_with_source', []))}/{p.get('copies_total')}"]
            retrained = record.get("retrained") or {}
            cells += [_f(record.get("seconds"), 2), f"{record['fields_kept']}/{record['fields_total']}",
                      _auc(retrained),
                      _f(retrained.get("delta_auc"), sign=True)]
            lines.append("| " + " | ".join(cells) + " |")
        red = entry["redundancy"]
        vs = red.get("vs_truth")
        lines += ["", f"Redundant pairs (≥ {red['threshold']}): "
                  + (", ".join(f"{p['a']}~{p['b']} ({p['redundancy']:.2f})" for p in red["flagged"]) or "none")
                  + (f"; {vs['found']} of {vs['planted']} planted copies flagged, missed: "
                     f"{', '.join(vs['missed']) or 'none'}, extra: {', '.join(vs['extra']) or 'none'}" if vs else "")
                  + "."]
        curve = entry.get("curve")
        if curve:
            lines += ["", f"AUC against the number of fields ({curve['method']}'s best k): "
                      + ", ".join(f"k={p['k']}{' (all)' if p.get('all') else ''}: {_auc(p)}"
                                  for p in curve["points"]) + "."]
        for name, record in entry.get("generated", {}).items():
            if "error" in record:
                lines += ["", f"{name} generation failed: {record['error']}"]
                continue
            features = ", ".join(f"{g['name']} = {g['recipe'].get('op')}({', '.join(g['recipe'].get('inputs', []))})"
                                 for g in record["features"])
            retrained = record.get("retrained") or {}
            lines += ["", f"{name} generated {len(record['features'])} features in {record['seconds']:.1f} s: "
                      f"{features}; planted cross found: {record.get('cross_found')}; test AUC on the generated data "
                      f"{_auc(retrained)} (Δ {_f(retrained.get('delta_auc'), sign=True)})."]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---- main --------------------------------------------------------------------------------------------

def quick_methods(registered: list[str]) -> list[str]:
    """--quick's two methods: the curve's reference and the generator where registered, else the first two."""
    preferred = [m for m in QUICK_METHODS if m in registered]
    return (preferred + [m for m in registered if m not in preferred])[:2]


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    registered = method_names()
    parser.add_argument("--methods", help=f"comma-separated feature methods (default: all registered: "
                        f"{', '.join(registered) or 'none yet'}; --quick: outrank and openfe)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated: {', '.join(DATASETS)}")
    parser.add_argument("--rows", type=int, help="rows of the planted synthetic set (default 1,000,000; --quick: "
                        "100,000)")
    parser.add_argument("--noise-fields", type=int, default=30)
    parser.add_argument("--redundant-fields", type=int, default=6)
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="train rows the methods see (the "
                        "default of recsys features rank)")
    parser.add_argument("--seeds", type=int, help="DLRM seeds 0 … N-1 per retraining (default 3; --quick: 1); "
                        "seed-to-seed AUC spread is about 0.001, the size of the 0.002 the issue allows")
    parser.add_argument("--epochs", default="synthetic=1,criteo=10,movielens=10",
                        help="the epoch cap per data set, NAME=N,… (the budget)")
    parser.add_argument("--patience", type=int, default=2, help="early stopping: evaluations without improvement")
    parser.add_argument("--max-steps", type=int, help="cap every run's steps (default: none; --quick: 30)")
    parser.add_argument("--reference", default="outrank", help="the method of the AUC-vs-fields curve (absent: "
                        "the first that ranked)")
    parser.add_argument("--curve", default=",".join(map(str, CURVE)), help="numbers of fields of the curve")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared datasets folder")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "features", help="data and runs (gitignored)")
    parser.add_argument("--out", type=Path, help="folder for features.json/.md (default benchmarks/results; "
                        "--quick: WORK/quick)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs already in --work")
    parser.add_argument("--no-train", action="store_true", help="rank and generate only, no retraining")
    parser.add_argument("--quick", action="store_true", help="small data, two methods, a few steps: a smoke run")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else \
        (quick_methods(registered) if args.quick else registered)
    unknown = [m for m in methods if m not in registered]
    if unknown:
        parser.error(f"--methods: not registered: {', '.join(unknown)}; registered: {', '.join(registered)}")
    if not methods:
        parser.error("--methods: no feature method is registered")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not datasets or any(d not in DATASETS for d in datasets):
        parser.error(f"--datasets: choose from {', '.join(DATASETS)}")
    try:
        epochs = {k.strip(): int(v) for k, v in (item.split("=") for item in args.epochs.split(","))}
        curve = tuple(int(k) for k in args.curve.split(",") if k.strip())
    except ValueError:
        parser.error("--epochs NAME=N,… and --curve K,… take integers")
    if args.quick:
        epochs = dict.fromkeys(DATASETS, 1)
    if any(epochs.get(d, 0) < 1 for d in datasets):
        parser.error(f"--epochs: an epoch cap ≥ 1 is needed for each of {', '.join(datasets)}")
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1 or args.sample < 1:
        parser.error("--seeds and --sample: at least 1")
    work = args.work.resolve()
    return Settings(methods=methods, datasets=datasets, rows=args.rows or (100_000 if args.quick else 1_000_000),
                    noise_fields=args.noise_fields, redundant_fields=args.redundant_fields, sample=args.sample,
                    seeds=list(range(seeds)), epochs=epochs, patience=args.patience,
                    max_steps=args.max_steps if args.max_steps is not None else (30 if args.quick else None),
                    reference=args.reference, curve=curve, shared=args.shared.resolve(), work=work,
                    out=(args.out or (work / "quick" if args.quick else HERE / "results")).resolve(),
                    fresh=args.fresh, quick=args.quick, train=not args.no_train)


def budget_description(settings: Settings) -> str:
    if not settings.train:
        return "no retraining (--no-train)"
    caps = ", ".join(f"{d} {settings.epochs[d]}" for d in settings.datasets)
    steps = f"; at most {settings.max_steps} steps a run" if settings.max_steps is not None else ""
    return (f"DLRM, {CONFIG}, trainer.epochs capped at {caps}{steps}; early stopping on valid AUC, patience "
            f"{settings.patience}; seeds {', '.join(map(str, settings.seeds))}; every run of a data set alike")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings = parse(argv)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "features", "quick": settings.quick, "machine": {**machine(), "cpu_pressure": cpu_pressure()},
        "git_sha": artifacts.git_sha(),
        "command": shlex.join([sys.executable, str(Path(__file__).resolve().relative_to(REPO)),
                               *(argv if argv is not None else sys.argv[1:])]),
        "budget": budget_description(settings), "methods": settings.methods, "reference": settings.reference,
        "sample": settings.sample, "seeds": settings.seeds, "datasets": {},
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    for dataset in settings.datasets:
        why = missing_source(dataset, settings)
        if why is not None:
            zoo.log(f"{dataset}: skipped: {why}")
            results["datasets"][dataset] = {"skipped": why}
            continue
        try:
            results["datasets"][dataset] = run_dataset(dataset, settings)
        except Exception as exc:  # noqa: BLE001 — the other data sets still run; the error is recorded
            zoo.log(f"{dataset}: failed: {type(exc).__name__}: {exc}")
            first = str(exc).splitlines()[0] if str(exc) else ""
            results["datasets"][dataset] = {"error": f"{type(exc).__name__}: {first}"}
        write_results(settings.out, results, finished=False)  # what is done so far survives a later failure
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] |= {"load_average_end": [round(x, 2) for x in os.getloadavg()],
                           "cpu_pressure_end": cpu_pressure()}
    write_results(settings.out, results, finished=True)
    zoo.log(f"wrote {settings.out / 'features.json'} and features.md in {results['seconds']:,.0f} s")
    return results


def write_results(out: Path, results: dict[str, Any], finished: bool) -> None:
    results["finished"] = finished
    write_atomic(out / "features.json", artifacts.json_text(results, indent=1) + "\n")
    write_atomic(out / "features.md", markdown(results))


if __name__ == "__main__":
    main()
