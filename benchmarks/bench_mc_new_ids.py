"""Managed collisions (``mc``) against one OOV row, for users the vocabulary never saw: MovieLens, time split.

The setting of an open vocabulary: MovieLens ratings split by time into P1 (first
70%), P2 (next 20%) and P3 (last 10%). The user vocabulary is fit on P1, as
``recsys data prepare`` fits it on its train split; the model then trains on P1
and P2, as a production model keeps training on fresh logs, and is tested on P3.
Two arms differ only in the user_id table:

- ``vocab``: vocabulary encoding, the standard scheme; a user first seen in P2 or
  P3 reads the one OOV row (which P2's new users train).
- ``mc``: ``encoding: hash`` with 2³¹ buckets (the raw id reaches the model) and
  the ``mc`` scheme; a user first seen in P2 gets a row of its own in training,
  one first seen in P3 reads a miss row.

P3's rows are grouped by their user: ``known`` (in P1), ``new_in_p2`` (the
vocabulary's OOV, mc's own rows: the claim), ``new_in_p3`` (unseen by both).
The test AUC of each group is averaged over seeds; the DLRM of configs/dlrm.yaml
trains one epoch in every run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_mc_new_ids.py \\
        --movielens ../shared/datasets/movielens/ml-latest-small --work /tmp/mc-bench --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys import artifact
from recsys.data.formats.movielens import default_schema
from recsys.data.reader import ParquetReader
from recsys.tasks import task_spec

# arm → (user_id encoding, training settings); 610 users in all: mc_256 must evict
ARMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "vocab": ("vocab", ()),
    "mc": ("hash", ("embedding.tables.user_id.scheme=mc", "embedding.tables.user_id.zch_size=1024")),
    "mc_256": ("hash", ("embedding.tables.user_id.scheme=mc", "embedding.tables.user_id.zch_size=256")),
}


def cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "recsys.cli.main", "-q", *args], check=False, cwd=REPO,
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"recsys {' '.join(args[:2])} failed:\n{result.stderr[-3000:]}")


def prepare(movielens: Path, work: Path, arm: str) -> Path:
    """P1/P2/P3 as train/valid/test (vocabulary fit on P1), then a copy whose train split is P1 + P2.
    ``arm``: the user_id encoding."""
    schema = json.loads(default_schema(user_features=False).model_dump_json(exclude_none=True))
    if arm == "hash":
        table = next(t for t in schema["tables"] if t["name"] == "user_id")
        table.update(encoding="hash", hash_buckets=2 ** 31)
        table.pop("min_count", None)
    prepared, stream = work / f"{arm}-prepared", work / f"{arm}-stream"
    if not prepared.exists():
        (work / f"{arm}-schema.json").write_text(json.dumps(schema))
        cli("data", "prepare", "--format", "movielens", "--input", str(movielens), "--out", str(prepared),
            "--schema", str(work / f"{arm}-schema.json"), "--split", "time", "--valid-fraction", "0.2",
            "--test-fraction", "0.1")
    if stream.exists():
        return stream
    shutil.copytree(prepared, stream)
    for part in sorted((prepared / "valid").glob("*.parquet")):
        shutil.copy(part, stream / "train" / f"p2-{part.name}")
    return stream


def train(data: Path, out: Path, seed: int, settings: tuple[str, ...], nproc: int) -> Path:
    if not (out / "artifact").is_dir():
        shutil.rmtree(out, ignore_errors=True)
        args = ["train", "--model", "dlrm", "--data", str(data), "--out", str(out), "--nproc", str(nproc),
                "--config", str(REPO / "configs" / "dlrm.yaml")]
        for setting in ("trainer.progress=false", f"seed={seed}", *settings):
            args += ["--set", setting]
        cli(*args)
    return out / "artifact"


@torch.no_grad()
def scores(path: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of the test split by the exported (unsharded) model, in file order."""
    loaded = artifact.load(path)
    task = task_spec(loaded.schema)
    out, labels = [], []
    for batch in ParquetReader(data, "test", 4096):
        out.append(task.link(loaded.model(batch)).numpy())
        labels.append(batch.labels.numpy())
    return np.concatenate(out), np.concatenate(labels)


def groups(data: Path) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """Test rows in file order with each one's user group (known, new_in_p2, new_in_p3)."""
    def users(split: str) -> set[str]:
        return set(pl.read_parquet(sorted((data / split).glob("*.parquet")), columns=["user_key"])["user_key"])

    p1 = set(pl.read_parquet(sorted((data / "train").glob("part-*.parquet")), columns=["user_key"])["user_key"])
    p2 = users("valid")
    test = pl.read_parquet(sorted((data / "test").glob("*.parquet")), columns=["user_key", "label"])
    keys = test["user_key"].to_numpy()
    known = np.isin(keys, list(p1))
    new_p2 = ~known & np.isin(keys, list(p2 - p1))
    return test, {"all": np.ones(len(keys), bool), "known": known, "new_in_p2": new_p2,
                  "new_in_p3": ~known & ~new_p2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "mc_new_ids.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"arms": {}, "seeds": args.seeds, "nproc": args.nproc}
    for arm, (encoding, settings) in ARMS.items():
        data = prepare(args.movielens, args.work, encoding)
        test, masks = groups(data)
        results["rows"] = {name: int(mask.sum()) for name, mask in masks.items()}
        per_seed: dict[str, list[float]] = {name: [] for name in masks}
        for seed in args.seeds:
            predicted, labels = scores(train(data, args.work / f"{arm}-run-{seed}", seed, settings, args.nproc), data)
            if not np.array_equal(labels, test["label"].to_numpy()):
                raise SystemExit(f"{arm}: the reader's test rows are not in file order")
            for name, mask in masks.items():
                per_seed[name].append(float(roc_auc_score(labels[mask], predicted[mask])))
            print(arm, seed, {k: round(v[-1], 4) for k, v in per_seed.items()}, flush=True)
        results["arms"][arm] = {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v}
                                for name, v in per_seed.items()}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    for name in results["rows"]:
        line = "  ".join(f"{arm} {r[name]['mean']:.4f} ± {r[name]['std']:.4f}" for arm, r in results["arms"].items())
        print(f"test AUC {name:10s} ({results['rows'][name]:5d} rows): {line}")


if __name__ == "__main__":
    main()
