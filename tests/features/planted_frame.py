"""A planted frame for the statistical feature methods (outrank, disco, inffs), built with numpy.

Five informative sparse fields of cardinality 10..50,000 (Zipf-distributed ids, a random logit effect per id),
three informative dense fields, three redundant noisy copies of informative fields, and fifteen pure-noise
fields with the same cardinalities (and id distributions) as the informative ones; the label is drawn from a
logistic model of the informative fields only. Until the lead's ``recsys data synth --noise-fields`` lands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys.features.base import FeatureData, Ranking
from recsys.schema import Schema

SPARSE_CARDINALITIES = [10, 100, 1_000, 10_000, 50_000]
INFORMATIVE = [*(f"s{c}" for c in SPARSE_CARDINALITIES), "d0", "d1", "d2"]
REDUNDANT = {"r_s100": "s100", "r_s1000": "s1000", "r_d0": "d0"}
NOISE = [*(f"n{k}_s{c}" for k in (0, 1) for c in SPARSE_CARDINALITIES), *(f"n_d{i}" for i in range(5))]
HIGH_CARDINALITY_NOISE = [f for f in NOISE if f.endswith(("s10000", "s50000"))]


def _zipf_ids(rng: np.random.Generator, cardinality: int, rows: int) -> np.ndarray:
    """Ids 1..cardinality-1 (0 is 'missing' in prepared data) with Zipf(1.05) frequencies, shuffled per field."""
    ranks = np.arange(1, cardinality, dtype=np.float64)
    p = ranks ** -1.05
    ids = rng.permutation(np.arange(1, cardinality))
    return ids[rng.choice(cardinality - 1, size=rows, p=p / p.sum())].astype(np.int64)


def planted_data(rows: int = 30_000, seed: int = 0) -> FeatureData:
    """The planted ``FeatureData`` (sparse ids int64, dense float32, label float 0/1)."""
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    logit = np.full(rows, -1.0)
    for c in SPARSE_CARDINALITIES:
        ids = _zipf_ids(rng, c, rows)
        effect = rng.normal(0.0, 0.6, size=c)
        logit += effect[ids]
        columns[f"s{c}"] = ids
    for i, weight in enumerate([0.6, 0.45, 0.35]):
        x = rng.normal(size=rows)
        logit += weight * x
        columns[f"d{i}"] = x.astype(np.float32)
    for copy, source in REDUNDANT.items():
        if source.startswith("s"):
            ids = columns[source].copy()
            replaced = rng.random(rows) < 0.2
            ids[replaced] = rng.integers(1, int(source[1:]), size=int(replaced.sum()))
            columns[copy] = ids
        else:
            columns[copy] = (columns[source] + rng.normal(0.0, 0.7, size=rows)).astype(np.float32)
    for name in NOISE:
        if "_s" in name:
            columns[name] = _zipf_ids(rng, int(name.split("_s")[1]), rows)
        else:
            columns[name] = rng.normal(size=rows).astype(np.float32)
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return feature_data(columns, label, seed)


def feature_data(columns: dict[str, np.ndarray], label: np.ndarray, seed: int = 0) -> FeatureData:
    """A ``FeatureData`` over ``columns`` (int64: sparse with identity tables, float32: dense) and a label."""
    dense = [n for n, v in columns.items() if v.dtype.kind == "f"]
    sparse = [n for n, v in columns.items() if v.dtype.kind != "f"]
    cardinality = {n: int(columns[n].max()) + 1 for n in sparse}
    schema = Schema.from_dict({
        "dense": [{"name": n, "entity": "user", "transform": "none"} for n in dense],
        "sparse": [{"name": n, "entity": "user"} for n in sparse],
        "tables": [{"name": n, "encoding": "identity", "cardinality": cardinality[n], "embedding_dim": 4}
                   for n in sparse],
        "labels": [{"name": "label"}],
    })
    frame = pl.DataFrame({**{n: columns[n] for n in dense + sparse}, "label": label})
    return FeatureData(data_dir=Path("."), schema=schema, frame=frame, label="label", fields=dense + sparse,
                       kinds={**{n: "dense" for n in dense}, **{n: "sparse" for n in sparse}},
                       cardinality=cardinality, rows_total=len(label), seed=seed)


def precision_at(ranking: Ranking, relevant: set[str], k: int) -> float:
    return len(set(ranking.order()[:k]) & relevant) / k
