"""A small prepared CTR data set with a known truth, for the gated selectors' tests (OptFS, OptFeature).

label ~ Bernoulli(sigmoid(w_a[good_a] + w_b[good_b] + good_d + W[cross_x, cross_y] - 0.5)): two informative
sparse fields, one informative dense field, a pair that matters only through its interaction (W's rows and
columns are centred, so neither field alone predicts), and pure-noise fields independent of everything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPARSE = {"good_a": 30, "good_b": 30, "cross_x": 8, "cross_y": 8, "noise_a": 40, "noise_b": 300}  # table rows
DENSE = ["good_d", "noise_x"]
INFORMATIVE = ["good_a", "good_b", "good_d", "cross_x", "cross_y"]
NOISE = ["noise_a", "noise_b", "noise_x"]
CROSS = ("cross_x", "cross_y")


def planted_ctr(out: Path, rows: int = 20_000, seed: int = 0) -> Path:
    """Write the prepared data set (schema.json, train/valid/test Parquet: 80/10/10) under ``out``."""
    rng = np.random.default_rng(seed)
    ids = {name: rng.integers(1, n, rows) for name, n in SPARSE.items()}  # row 0: missing, never used
    dense = {name: rng.normal(size=rows).astype(np.float32) for name in DENSE}
    w_a, w_b = rng.normal(0, 1.0, SPARSE["good_a"]), rng.normal(0, 1.0, SPARSE["good_b"])
    cross = np.zeros((SPARSE["cross_x"], SPARSE["cross_y"]))
    inner = rng.normal(0, 2.0, (SPARSE["cross_x"] - 1, SPARSE["cross_y"] - 1))
    inner -= inner.mean(axis=0, keepdims=True)
    cross[1:, 1:] = inner - inner.mean(axis=1, keepdims=True)
    logit = w_a[ids["good_a"]] + w_b[ids["good_b"]] + dense["good_d"] + cross[ids["cross_x"], ids["cross_y"]] - 0.5
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    columns = {**dense, **ids, "label": label}
    cut, end = int(rows * 0.8), int(rows * 0.9)
    bounds = {"train": (0, cut), "valid": (cut, end), "test": (end, rows)}
    for split, (lo, hi) in bounds.items():
        (out / split).mkdir(parents=True)
        pq.write_table(pa.table({k: v[lo:hi] for k, v in columns.items()}), out / split / "part-00000.parquet")
    schema = {
        "task": "ctr",
        "dense": [{"name": n, "entity": "context", "transform": "none", "clip_min": None} for n in DENSE],
        "sparse": [{"name": n, "entity": "context"} for n in SPARSE],
        "tables": [{"name": n, "encoding": "identity", "cardinality": r, "embedding_dim": 16}
                   for n, r in SPARSE.items()],
        "labels": [{"name": "label"}],
    }
    (out / "schema.json").write_text(json.dumps(schema, indent=2))
    return out
