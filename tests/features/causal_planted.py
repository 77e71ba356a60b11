"""A planted CTR frame for the causal feature methods (drcfs, macfe): fields whose role is known.

Informative: five sparse fields of cardinality 4..1024 (a random logit effect per id, skewed id frequencies)
and three dense fields (two linear, one symmetric |x| effect that no linear score sees). Redundant: noisy
copies of two sparse and one dense informative field (they carry no information beyond their source). Noise:
fifteen fields independent of everything (sparse of cardinality 3..5000, dense normal and skewed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys.features.base import FeatureData
from recsys.schema import DenseFeature, DenseTransform, Encoding, Entity, Label, Schema, SparseFeature, Table

INFORMATIVE_SPARSE = {"s_inf0": 4, "s_inf1": 16, "s_inf2": 64, "s_inf3": 256, "s_inf4": 1024}
INFORMATIVE_DENSE = ["d_inf0", "d_inf1", "d_inf2"]
INFORMATIVE = [*INFORMATIVE_SPARSE, *INFORMATIVE_DENSE]
REDUNDANT = {"r_s1": "s_inf1", "r_s3": "s_inf3", "r_d0": "d_inf0"}  # copy -> source
NOISE_SPARSE = {"n_s0": 3, "n_s1": 10, "n_s2": 20, "n_s3": 50, "n_s4": 100, "n_s5": 200, "n_s6": 1000,
                "n_s7": 5000}
NOISE_DENSE = ["n_d0", "n_d1", "n_d2", "n_d3", "n_d4", "n_d5", "n_d6"]
NOISE = [*NOISE_SPARSE, *NOISE_DENSE]


def _ids(rng: np.random.Generator, rows: int, cardinality: int) -> np.ndarray:
    """Ids 1..cardinality-1 with Zipf-like frequencies (0 stays 'missing')."""
    weights = 1.0 / np.arange(1, cardinality) ** 0.8
    return rng.choice(np.arange(1, cardinality), size=rows, p=weights / weights.sum()).astype(np.int64)


def planted_frame(rows: int = 24_000, seed: int = 0) -> FeatureData:
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    logit = np.full(rows, -1.0)
    for name, card in INFORMATIVE_SPARSE.items():
        ids = _ids(rng, rows, card)
        effect = rng.normal(0.0, 0.9, size=card)
        logit += effect[ids]
        columns[name] = ids
    for name, coef in zip(INFORMATIVE_DENSE[:2], (0.7, -0.6), strict=True):
        x = rng.normal(size=rows)
        logit += coef * x
        columns[name] = x
    x = rng.normal(size=rows)
    logit += 0.9 * (np.abs(x) - 0.8)
    columns["d_inf2"] = x
    for copy, source in REDUNDANT.items():
        if source in INFORMATIVE_SPARSE:
            card = INFORMATIVE_SPARSE[source]
            relabel = np.concatenate([[0], 1 + rng.permutation(card - 1)])
            ids = relabel[columns[source]]
            swap = rng.random(rows) < 0.25
            ids[swap] = rng.integers(1, card, size=int(swap.sum()))
            columns[copy] = ids
        else:
            columns[copy] = columns[source] + rng.normal(0.0, 0.5, size=rows)
    for name, card in NOISE_SPARSE.items():
        columns[name] = _ids(rng, rows, card)
    for i, name in enumerate(NOISE_DENSE):
        columns[name] = rng.lognormal(0.0, 1.0, size=rows) if i % 2 else rng.normal(size=rows)
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)

    sparse_cards = {**INFORMATIVE_SPARSE, **NOISE_SPARSE,
                    **{c: INFORMATIVE_SPARSE[s] for c, s in REDUNDANT.items() if s in INFORMATIVE_SPARSE}}
    dense = [*INFORMATIVE_DENSE, *[c for c, s in REDUNDANT.items() if s not in INFORMATIVE_SPARSE], *NOISE_DENSE]
    sparse = list(sparse_cards)
    schema = Schema(
        dense=[DenseFeature(name=f, entity=Entity.CONTEXT, transform=DenseTransform.NONE) for f in dense],
        sparse=[SparseFeature(name=f, entity=Entity.CONTEXT) for f in sparse],
        tables=[Table(name=f, encoding=Encoding.IDENTITY, cardinality=c) for f, c in sparse_cards.items()],
        labels=[Label(name="label")],
    )
    frame = pl.DataFrame({**{f: columns[f].astype(np.float32) for f in dense},
                          **{f: columns[f].astype(np.int64) for f in sparse}, "label": label})
    fields = [*dense, *sparse]
    kinds = {f: ("dense" if f in dense else "sparse") for f in fields}
    return FeatureData(data_dir=Path("planted"), schema=schema, frame=frame, label="label", fields=fields,
                       kinds=kinds, cardinality=dict(sparse_cards), rows_total=rows, seed=seed)


def precision_at(order: list[str], relevant: list[str], k: int) -> float:
    return len(set(order[:k]) & set(relevant)) / k
