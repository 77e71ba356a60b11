"""Synthetic data with a known ground truth: Criteo-shaped CTR logs and implicit interactions.

``ctr``: 13 dense and 26 categorical fields (Zipf-distributed ids, declared
cardinalities log-spaced from 10 to 10^6), a user id, a target item with a
category, and the user's behaviour history. Fields are split between user, item
and context entities; a user's (item's) features are the same in every row, so
the data can be served from a feature store. Labels are drawn from a known
logistic model whose logit is a function of the observable features only:

    logit = b + Σ_j a_j·z_j                       dense (log1p-standardised counts)
              + Σ_f w_f[x_f]                      first-order effects (head ids only)
              + Σ_(f,g) <u_f[x_f], u_g[x_g]>      pairwise user×item/context interactions
              + γ · max_h <e_h, e_target>         history / target-item affinity (local)

so the Bayes-optimal AUC is that of the true probabilities, recorded in stats.json.
The history term is local, as DIN assumes (Zhou et al., KDD 2018): only the history
item nearest the target counts, however many unrelated items the history holds. A
mean over the history (γ · <mean_h e_h, e_target>) would be exactly the dot product
of a mean-pooled history with the target, which a dot interaction computes directly;
the maximum is not a function of the mean-pooled history, so a model has to compare
each history item with the target to recover it. The history is the strongest user
signal, as in the behaviour logs DIN was made for: γ = 3 and pairwise factors of std
0.21 (until issue 12 the term was the mean, with γ = 2 and std 0.35, and DLRM led DIN;
``configs/din.yaml`` has the measurements).
Only the 100 most popular ids of a field carry signal and raw ids go through a
thresholded vocabulary (``min_count``), as real logs do: the signal is learnable
by design: a plain PyTorch DLRM-shaped model, one epoch on 3M rows, ends 0.023 below
Bayes; the platform's DLRM 0.017 and DIN 0.014 (``configs/*.yaml``)
(``benchmarks/bench_synth_learnability.py``).

Planted fields (``--noise-fields``, ``--redundant-fields``, ``--planted-cross``), for judging feature
methods: extra fields F1, F2, ... in shuffled order, each one of

- noise: a context field drawn per row independently of everything (sparse with the base fields'
  cardinalities and Zipf shape, or dense with their count-like shape): no effect on the label;
- redundant: a noisy copy of a strong base field (a sparse one keeps the source's id with probability
  0.95, else draws afresh; a dense one adds Gaussian noise of 0.3 source deviations): informative
  alone, nothing to add beside its source;
- the planted cross (two fields of 10 ids, user and item): ``logit += 0.8·s1[x1]·s2[x2]`` with balanced
  random signs, so neither field alone says anything about the label, their pair does.

``stats.json["planted"]`` names them, and splits the base fields into informative (the standard
deviation of their own logit term, first-order plus pairwise, is at least 0.05) and weak. With no
planted field the data is byte-identical to what it was: the planted fields draw from streams of
their own.

``implicit``: users and items in communities; a user mostly interacts with
popular items of their own community (for retrieval models).

Rows are generated in fixed-size chunks, each from its own seeded stream, so the
data is reproducible and memory stays bounded whatever --rows is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import ValidationError
from sklearn.metrics import log_loss, roc_auc_score

from recsys.data import layout
from recsys.data.pipeline import PrepareOptions, PrepareResult, RawPart, run
from recsys.data.formats.criteo import DENSE_NAMES, SPARSE_NAMES
from recsys.errors import RecsysError
from recsys.schema import (
    Column, DenseFeature, Encoding, Entity, Label, Schema, SequenceFeature, SparseFeature, Table, Task,
)

CHUNK_ROWS = 1 << 18
TRUE_PROBABILITY = "true_probability"
CARDINALITIES = [int(round(10 ** (1 + 5 * k / (len(SPARSE_NAMES) - 1)))) for k in range(len(SPARSE_NAMES))]
# Interleave entities so each has small and large fields: C1 user, C2 item, C3 context, C4 user, ...
SPARSE_ENTITIES = [(Entity.USER, Entity.ITEM, Entity.CONTEXT)[k % 3] for k in range(len(SPARSE_NAMES))]
DENSE_ENTITIES = [Entity.USER] * 4 + [Entity.ITEM] * 4 + [Entity.CONTEXT] * 5
HEAD_IDS = 100  # ids past this popularity rank carry no first-order or pairwise signal: learnable by design
# Field pairs (0-based) with a pairwise effect: user×item (C1×C2, C4×C5, C7×C8), user×context
# (C10×C3, C13×C9) and item×context (C11×C6).
INTERACTING_PAIRS = [(0, 1), (3, 4), (6, 7), (9, 2), (12, 8), (10, 5)]
LATENT_DIM = 8
# Strong base fields that redundant copies copy, alternating sparse (index into SPARSE_NAMES) and dense.
REDUNDANT_SOURCES = [("sparse", 0), ("dense", 0), ("sparse", 3), ("dense", 4), ("sparse", 1), ("dense", 8),
                     ("sparse", 6), ("sparse", 4), ("sparse", 7), ("sparse", 9)]
CROSS_IDS = 10
CROSS_WEIGHT = 0.8
REDUNDANT_KEEP = 0.95
INFORMATIVE_STD = 0.05  # a base field whose own logit term varies less than this is listed as weak
AFFINITY_WEIGHT = 3.0  # γ above
PAIR_FACTOR_STD = 0.21  # std of the pairwise factors u_f


@dataclass(frozen=True)
class CtrConfig:
    rows: int
    seed: int = 0
    users: int | None = None
    items: int | None = None
    categories: int = 50
    max_history: int = 20
    positive_rate: float = 0.25
    embedding_dim: int = 16
    min_count: int = 3  # ids seen fewer times in train share the OOV row, as in Criteo preprocessing
    noise_fields: int = 0
    redundant_fields: int = 0
    planted_cross: bool = False

    def __post_init__(self) -> None:
        _check_embedding_dim(self.embedding_dim)
        if self.noise_fields < 0 or self.redundant_fields < 0:
            raise RecsysError("--noise-fields and --redundant-fields take a count >= 0")
        if self.redundant_fields > len(REDUNDANT_SOURCES):
            raise RecsysError(f"--redundant-fields {self.redundant_fields}: at most {len(REDUNDANT_SOURCES)} "
                              "(one per strong base field)")

    @property
    def planted(self) -> bool:
        return bool(self.noise_fields or self.redundant_fields or self.planted_cross)

    @property
    def n_users(self) -> int:
        return self.users or max(100, self.rows // 50)

    @property
    def n_items(self) -> int:
        return self.items or max(50, self.rows // 100)


def _check_embedding_dim(dim: int) -> None:
    """The schema's bounds on a table's width, as one line naming the flag rather than a validation trace."""
    try:
        Table(name="t", embedding_dim=dim)
    except ValidationError as exc:
        raise RecsysError(f"--embedding-dim {dim}: {exc.errors()[0]['msg']}") from None


def _zipf_sampler(size: int, exponent: float) -> np.ndarray:
    """Cumulative distribution over ranks 0..size-1 with P(r) ∝ (r+1)^-exponent."""
    weights = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _draw(cdf: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1).astype(np.int64)


class CtrWorld:
    """The fixed part of the generator: entities, their features, and the ground-truth parameters."""

    def __init__(self, config: CtrConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 0])
        n_users, n_items = config.n_users, config.n_items
        self.field_cdfs = [_zipf_sampler(c, 1.1) for c in CARDINALITIES]
        self.user_cdf = _zipf_sampler(n_users, 0.9)
        self.item_cdf = _zipf_sampler(n_items, 1.0)

        # Entity-level categorical and dense features (same in every row of that user/item).
        self.user_fields = {k: _draw(self.field_cdfs[k], rng, n_users) for k, e in enumerate(SPARSE_ENTITIES) if e is Entity.USER}
        self.item_fields = {k: _draw(self.field_cdfs[k], rng, n_items) for k, e in enumerate(SPARSE_ENTITIES) if e is Entity.ITEM}
        self.dense_mu = rng.uniform(0.5, 4.0, len(DENSE_NAMES))
        self.dense_sigma = rng.uniform(0.8, 1.5, len(DENSE_NAMES))
        self.user_dense = {j: self._dense_values(j, rng, n_users) for j, e in enumerate(DENSE_ENTITIES) if e is Entity.USER}
        self.item_dense = {j: self._dense_values(j, rng, n_items) for j, e in enumerate(DENSE_ENTITIES) if e is Entity.ITEM}

        # Items: category and latent vector near their category's centre.
        self.item_category = rng.integers(0, config.categories, n_items)
        centres = rng.normal(size=(config.categories, LATENT_DIM))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        latent = centres[self.item_category] + 0.1 * rng.normal(size=(n_items, LATENT_DIM)) / np.sqrt(LATENT_DIM)
        self.item_latent = latent / np.linalg.norm(latent, axis=1, keepdims=True)
        self.items_by_category = [np.flatnonzero(self.item_category == c) for c in range(config.categories)]

        # Users: two favourite categories and a fixed history (newest first).
        self.user_favourites = rng.integers(0, config.categories, (n_users, 2))
        lengths = rng.integers(0, config.max_history + 1, n_users)
        self.history_offsets = np.concatenate([[0], np.cumsum(lengths)])
        owners = np.repeat(np.arange(n_users), lengths)
        self.history = self._items_for(owners, rng, in_favourites=0.8)

        # Ground truth.
        self.dense_weights = rng.normal(0.0, 0.15, len(DENSE_NAMES))
        self.first_order = [rng.normal(0.0, 0.15, min(HEAD_IDS, c)) for c in CARDINALITIES]
        self.pair_factors = {
            k: rng.normal(0.0, PAIR_FACTOR_STD, (min(HEAD_IDS, CARDINALITIES[k]), 4)) for pair in INTERACTING_PAIRS for k in pair
        }
        self.affinity_weight = AFFINITY_WEIGHT
        self.planted = PlantedFields(self) if config.planted else None
        self.bias = 0.0
        self.bias = self._calibrate_bias(config.positive_rate)

    def _dense_values(self, j: int, rng: np.random.Generator, n: int) -> np.ndarray:
        """Count-like values: floor(expm1(μ + σ·z)), 5% missing (NaN)."""
        values = np.floor(np.expm1(self.dense_mu[j] + self.dense_sigma[j] * rng.normal(size=n)))
        values[rng.random(n) < 0.05] = np.nan
        return values

    def _items_for(self, users: np.ndarray, rng: np.random.Generator, in_favourites: float) -> np.ndarray:
        """Popular items, from one of each user's favourite categories with probability ``in_favourites``."""
        items = _draw(self.item_cdf, rng, len(users))
        pick = rng.random(len(users)) < in_favourites
        categories = self.user_favourites[users, rng.integers(0, 2, len(users))]
        for category, members in enumerate(self.items_by_category):
            rows = np.flatnonzero(pick & (categories == category))
            if len(rows) and len(members):
                # Within a category, lower item ids are the more popular ones (item_cdf is Zipf by id).
                items[rows] = members[_draw(_zipf_sampler(len(members), 1.0), rng, len(rows))]
        return items

    def standardised(self, j: int, raw: np.ndarray) -> np.ndarray:
        """The observable dense signal: log1p-standardised value, a missing one read as 0 (prepare's fill)."""
        return (np.log1p(np.maximum(np.nan_to_num(raw, nan=0.0), 0.0)) - self.dense_mu[j]) / self.dense_sigma[j]

    def logit(self, users: np.ndarray, items: np.ndarray, fields: list[np.ndarray], dense: list[np.ndarray]) -> np.ndarray:
        out = np.full(len(users), self.bias)
        for j, raw in enumerate(dense):
            out += self.dense_weights[j] * self.standardised(j, raw)
        for k, ids in enumerate(fields):
            head = ids < len(self.first_order[k])
            out[head] += self.first_order[k][ids[head]]
        for f, g in INTERACTING_PAIRS:
            head = (fields[f] < len(self.pair_factors[f])) & (fields[g] < len(self.pair_factors[g]))
            out[head] += np.einsum("nd,nd->n", self.pair_factors[f][fields[f][head]], self.pair_factors[g][fields[g][head]])
        out += self.affinity_weight * self.history_affinity(users, items)
        return out

    def history_rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's user history without a row loop: row offsets (B + 1,) into the gathered histories, and the
        positions in ``self.history`` to gather (Σ lengths,)."""
        starts = self.history_offsets[users]
        lengths = self.history_offsets[users + 1] - starts
        row_offsets = np.concatenate([[0], np.cumsum(lengths)])
        gather = np.repeat(starts - row_offsets[:-1], lengths) + np.arange(row_offsets[-1])
        return row_offsets, gather

    def history_affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """max over the user's history of <e_h, e_target>, 0 for an empty history."""
        row_offsets, gather = self.history_rows(users)
        lengths = np.diff(row_offsets)
        dots = np.einsum("nd,nd->n", self.item_latent[self.history[gather]], self.item_latent[np.repeat(items, lengths)])
        out = np.zeros(len(users))
        present = lengths > 0
        if present.any():
            out[present] = np.maximum.reduceat(dots, row_offsets[:-1][present])
        return out

    def _calibrate_bias(self, rate: float) -> float:
        """Bias giving the requested positive rate, fitted on a pilot sample of its own stream."""
        sample = self.sample_rows(np.random.default_rng([self.config.seed, 2]), 100_000,
                                  np.random.default_rng([self.config.seed, 5]))
        logits = sample["logit"]
        low, high = -20.0, 20.0
        for _ in range(60):
            mid = (low + high) / 2
            if np.mean(1 / (1 + np.exp(-(logits + mid)))) < rate:
                low = mid
            else:
                high = mid
        return (low + high) / 2

    def sample_rows(self, rng: np.random.Generator, n: int, planted_rng: np.random.Generator | None = None
                    ) -> dict[str, Any]:
        """``n`` rows; the planted fields (if any) draw from ``planted_rng`` so the base rows stay as they were."""
        users = _draw(self.user_cdf, rng, n)
        items = self._items_for(users, rng, in_favourites=0.3)
        fields = []
        for k, entity in enumerate(SPARSE_ENTITIES):
            if entity is Entity.USER:
                fields.append(self.user_fields[k][users])
            elif entity is Entity.ITEM:
                fields.append(self.item_fields[k][items])
            else:
                fields.append(_draw(self.field_cdfs[k], rng, n))
        dense = []
        for j, entity in enumerate(DENSE_ENTITIES):
            if entity is Entity.USER:
                dense.append(self.user_dense[j][users])
            elif entity is Entity.ITEM:
                dense.append(self.item_dense[j][items])
            else:
                dense.append(self._dense_values(j, rng, n))
        logit = self.logit(users, items, fields, dense)
        planted: dict[str, np.ndarray] = {}
        if self.planted is not None:
            assert planted_rng is not None
            planted = self.planted.columns(users, items, fields, dense, planted_rng)
            logit = logit + self.planted.cross_logit(planted)
        return {"users": users, "items": items, "fields": fields, "dense": dense, "logit": logit, "planted": planted}

    def term_std(self, sample: dict[str, Any]) -> dict[str, float]:
        """Per base field, the standard deviation of its own logit term on ``sample`` (pairwise terms split
        evenly between the two fields): what decides informative vs weak."""
        n = len(sample["users"])
        terms = {name: np.zeros(n) for name in [*DENSE_NAMES, *SPARSE_NAMES]}
        for j, raw in enumerate(sample["dense"]):
            terms[DENSE_NAMES[j]] += self.dense_weights[j] * self.standardised(j, raw)
        fields = sample["fields"]
        for k, ids in enumerate(fields):
            head = ids < len(self.first_order[k])
            terms[SPARSE_NAMES[k]][head] += self.first_order[k][ids[head]]
        for f, g in INTERACTING_PAIRS:
            head = (fields[f] < len(self.pair_factors[f])) & (fields[g] < len(self.pair_factors[g]))
            pair = np.einsum("nd,nd->n", self.pair_factors[f][fields[f][head]], self.pair_factors[g][fields[g][head]])
            terms[SPARSE_NAMES[f]][head] += pair / 2
            terms[SPARSE_NAMES[g]][head] += pair / 2
        return {name: float(values.std()) for name, values in terms.items()}


@dataclass(frozen=True)
class PlantedField:
    name: str
    role: str  # noise | redundant | cross
    kind: str  # sparse | dense
    entity: Entity
    cardinality: int = 0  # sparse: raw ids 0..cardinality-1
    source: int = -1  # redundant: index of the source in SPARSE_NAMES or DENSE_NAMES; noise dense: shape index


def planted_specs(config: CtrConfig) -> list[PlantedField]:
    """The planted fields' names, roles, kinds and entities, in schema order (F1, F2, ...: roles shuffled)."""
    specs: list[PlantedField] = []
    # Noise is drawn per row (context): a noise attribute fixed per user with hundreds of values would name
    # the user almost uniquely, and carry the user's own click rate: a proxy of the user id, not noise.
    for j in range(config.noise_fields):
        if j % 3 == 2:
            specs.append(PlantedField("", "noise", "dense", Entity.CONTEXT, source=j % len(DENSE_NAMES)))
        else:
            specs.append(PlantedField("", "noise", "sparse", Entity.CONTEXT,
                                      cardinality=CARDINALITIES[(5 * j) % len(CARDINALITIES)]))
    for kind, index in REDUNDANT_SOURCES[: config.redundant_fields]:
        entity = SPARSE_ENTITIES[index] if kind == "sparse" else DENSE_ENTITIES[index]
        specs.append(PlantedField("", "redundant", kind, entity,
                                  cardinality=CARDINALITIES[index] if kind == "sparse" else 0, source=index))
    if config.planted_cross:
        specs += [PlantedField("", "cross", "sparse", Entity.USER, cardinality=CROSS_IDS),
                  PlantedField("", "cross", "sparse", Entity.ITEM, cardinality=CROSS_IDS)]
    order = np.random.default_rng([config.seed, 3]).permutation(len(specs))
    return [dataclasses.replace(specs[i], name=f"F{position + 1}") for position, i in enumerate(order)]


class PlantedFields:
    """The extra fields of ``CtrConfig.noise_fields``, ``redundant_fields`` and ``planted_cross`` (module docstring)."""

    def __init__(self, world: CtrWorld) -> None:
        config = world.config
        self.world = world
        self.fields = planted_specs(config)
        rng = np.random.default_rng([config.seed, 6])
        signs = np.array([1.0] * (CROSS_IDS // 2) + [-1.0] * (CROSS_IDS - CROSS_IDS // 2))
        self.cross_signs = (rng.permutation(signs), rng.permutation(signs))
        # Entity-level values (fixed per user or item), drawn once.
        self.per_entity: dict[str, np.ndarray] = {}
        self.corrupt: dict[str, np.ndarray] = {}
        sizes = {Entity.USER: config.n_users, Entity.ITEM: config.n_items}
        for field in self.fields:
            if field.entity is Entity.CONTEXT:
                continue
            n = sizes[field.entity]
            if field.role == "redundant":
                self.corrupt[field.name] = rng.random(n) >= REDUNDANT_KEEP
                self.per_entity[field.name] = self._fresh(field, rng, n)
            else:
                self.per_entity[field.name] = self._fresh(field, rng, n)

    def _fresh(self, field: PlantedField, rng: np.random.Generator, n: int) -> np.ndarray:
        """Values drawn independently of everything: what a noise field holds, and a corrupted copy's."""
        if field.role == "cross":
            return rng.integers(0, CROSS_IDS, n)
        if field.kind == "sparse":
            cdf = self.world.field_cdfs[field.source] if field.role == "redundant" else _zipf_sampler(field.cardinality, 1.1)
            return _draw(cdf, rng, n)
        if field.role == "redundant":
            return rng.normal(size=n)  # the noise added to the source's standardised value
        return self.world._dense_values(field.source, rng, n)

    def columns(self, users: np.ndarray, items: np.ndarray, fields: list[np.ndarray], dense: list[np.ndarray],
                rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = len(users)
        out: dict[str, np.ndarray] = {}
        for field in self.fields:
            if field.entity is Entity.CONTEXT:
                fresh = self._fresh(field, rng, n)
                corrupt = rng.random(n) >= REDUNDANT_KEEP
            else:
                rows = users if field.entity is Entity.USER else items
                fresh = self.per_entity[field.name][rows]
                corrupt = self.corrupt[field.name][rows] if field.role == "redundant" else np.zeros(n, bool)
            if field.role == "redundant" and field.kind == "sparse":
                out[field.name] = np.where(corrupt, fresh, fields[field.source])
            elif field.role == "redundant":
                j = field.source
                z = self.world.standardised(j, dense[j]) + 0.3 * fresh
                # Back to the raw count scale, so prepare's log1p-standardise recovers the noisy z.
                out[field.name] = np.floor(np.expm1(self.world.dense_mu[j] + self.world.dense_sigma[j] * z))
            else:
                out[field.name] = fresh
        return out

    def cross_logit(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        a, b = self.cross_names
        if a is None or b is None:
            return np.zeros(len(next(iter(columns.values()))) if columns else 0)
        return CROSS_WEIGHT * self.cross_signs[0][columns[a]] * self.cross_signs[1][columns[b]]

    @property
    def cross_names(self) -> tuple[str | None, str | None]:
        cross = [f for f in self.fields if f.role == "cross"]
        user = next((f.name for f in cross if f.entity is Entity.USER), None)
        item = next((f.name for f in cross if f.entity is Entity.ITEM), None)
        return user, item

    def truth(self, term_std: dict[str, float]) -> dict[str, Any]:
        """What ``stats.json["planted"]`` records."""
        strong = [name for name, std in term_std.items() if std >= INFORMATIVE_STD]
        weak = [name for name, std in term_std.items() if std < INFORMATIVE_STD]
        cross = [f.name for f in self.fields if f.role == "cross"]
        return {
            "informative": strong + cross,
            "weak": weak,
            "keys": ["user_id", "item_id", "item_category"],
            "redundant": {f.name: (SPARSE_NAMES if f.kind == "sparse" else DENSE_NAMES)[f.source]
                          for f in self.fields if f.role == "redundant"},
            "noise": [f.name for f in self.fields if f.role == "noise"],
            "cross": cross,
            "term_std": {name: round(std, 4) for name, std in term_std.items()},
            "cross_weight": CROSS_WEIGHT,
        }


def ctr_schema(config: CtrConfig) -> Schema:
    dim = config.embedding_dim
    # Raw ids go through a thresholded vocabulary like real logs: the long tail, which carries no
    # signal here, shares the OOV row instead of growing a 10^6-row table of noise.
    extra = planted_specs(config) if config.planted else []
    tables = [Table(name=n, embedding_dim=dim, min_count=config.min_count)
              for n in [*SPARSE_NAMES, "user_id", "item_id", "item_category"]]
    tables += [Table(name=f.name, embedding_dim=dim, min_count=config.min_count) for f in extra if f.kind == "sparse"]
    return Schema(
        task=Task.CTR,
        dense=[DenseFeature(name=n, entity=e) for n, e in zip(DENSE_NAMES, DENSE_ENTITIES)]
        + [DenseFeature(name=f.name, entity=f.entity) for f in extra if f.kind == "dense"],
        sparse=[SparseFeature(name=n, entity=e) for n, e in zip(SPARSE_NAMES, SPARSE_ENTITIES)]
        + [SparseFeature(name=f.name, entity=f.entity) for f in extra if f.kind == "sparse"]
        + [
            SparseFeature(name="user_id", entity=Entity.USER),
            SparseFeature(name="item_id", entity=Entity.ITEM),
            SparseFeature(name="item_category", entity=Entity.ITEM),
        ],
        sequences=[
            SequenceFeature(name="hist_item_id", table="item_id", max_length=config.max_history),
            SequenceFeature(name="hist_category", table="item_category", max_length=config.max_history),
        ],
        tables=tables,
        labels=[Label(name="label")],
        user_key=Column(name="user_key"),
        item_key=Column(name="item_key"),
        timestamp=Column(name="timestamp"),
        default_embedding_dim=dim,
    )


class CtrSource:
    """The ``ctr`` generator as a prepare Source: raw rows in fixed-size, separately seeded chunks."""

    def __init__(self, config: CtrConfig) -> None:
        self.config = config
        self.world = CtrWorld(config)
        self.schema = ctr_schema(config)

    def chunks(self) -> Iterator[dict[str, Any]]:
        for index, start in enumerate(range(0, self.config.rows, CHUNK_ROWS)):
            n = min(CHUNK_ROWS, self.config.rows - start)
            rng = np.random.default_rng([self.config.seed, 1, index])
            sample = self.world.sample_rows(rng, n, np.random.default_rng([self.config.seed, 4, index]))
            probability = 1 / (1 + np.exp(-sample["logit"]))
            sample["label"] = (rng.random(n) < probability).astype(np.float64)
            sample["probability"] = probability
            sample["timestamp"] = 1_700_000_000 + 10 * np.arange(start, start + n, dtype=np.int64)
            yield sample

    def parts(self) -> Iterator[RawPart]:
        world = self.world
        for sample in self.chunks():
            users, items = sample["users"], sample["items"]
            row_offsets, gather = world.history_rows(users)
            columns: dict[str, Any] = {
                "label": sample["label"],
                TRUE_PROBABILITY: sample["probability"],
                "user_key": pl.Series(users).cast(pl.String),
                "item_key": pl.Series(items).cast(pl.String),
                "timestamp": sample["timestamp"],
                "user_id": users,
                "item_id": items,
                "item_category": world.item_category[items],
                "hist_item_id": _lists(row_offsets, world.history[gather]),
                "hist_category": _lists(row_offsets, world.item_category[world.history[gather]]),
            }
            for name, values in zip(DENSE_NAMES, sample["dense"]):
                columns[name] = pl.Series(name, values).fill_nan(None)
            for name, values in zip(SPARSE_NAMES, sample["fields"]):
                columns[name] = values
            for name, values in sample["planted"].items():
                columns[name] = pl.Series(name, values).fill_nan(None) if values.dtype.kind == "f" else values
            frame = pl.DataFrame(columns)
            yield RawPart(rows=frame)


def _lists(row_offsets: np.ndarray, values: np.ndarray) -> pl.Series:
    """A list column: row r holds ``values[row_offsets[r]:row_offsets[r + 1]]``."""
    lists = pa.ListArray.from_arrays(pa.array(row_offsets, pa.int32()), pa.array(values, pa.int64()))
    return pl.Series(pl.from_arrow(lists))


def bayes_stats(data_dir: Path, schema: Schema) -> dict[str, Any]:
    """AUC and log loss of the true probabilities, overall and per split: what no model can beat."""
    out: dict[str, Any] = {"splits_bayes": {}}
    frames = []
    for split in layout.SPLITS:
        files = sorted((data_dir / split).glob("*.parquet"))
        if not files:
            continue
        frame = pl.read_parquet(files, columns=["label", TRUE_PROBABILITY])
        frames.append(frame)
        if frame["label"].n_unique() == 2:
            out["splits_bayes"][split] = {
                "auc": float(roc_auc_score(frame["label"], frame[TRUE_PROBABILITY])),
                "logloss": float(log_loss(frame["label"], frame[TRUE_PROBABILITY], labels=[0, 1])),
            }
    everything = pl.concat(frames)
    out["bayes_auc"] = float(roc_auc_score(everything["label"], everything[TRUE_PROBABILITY]))
    out["bayes_logloss"] = float(log_loss(everything["label"], everything[TRUE_PROBABILITY], labels=[0, 1]))
    return out


def synth_ctr(config: CtrConfig, out: Path, options: PrepareOptions) -> PrepareResult:
    source = CtrSource(config)

    def extra(data_dir: Path, schema: Schema) -> dict[str, Any]:
        raw_cardinalities = dict(zip(SPARSE_NAMES, CARDINALITIES)) | {
            "user_id": config.n_users, "item_id": config.n_items, "item_category": config.categories}
        planted = source.world.planted
        if planted is not None:
            raw_cardinalities |= {f.name: f.cardinality for f in planted.fields if f.kind == "sparse"}
        out = {"generator": {"kind": "ctr", **config.__dict__, "users": config.n_users, "items": config.n_items,
                             "raw_cardinalities": raw_cardinalities},
               **bayes_stats(data_dir, schema)}
        if planted is not None:
            pilot = source.world.sample_rows(np.random.default_rng([config.seed, 7]), 100_000,
                                             np.random.default_rng([config.seed, 8]))
            out["planted"] = planted.truth(source.world.term_std(pilot))
        return out

    return run(source, out, dataclasses.replace(options, passthrough=(TRUE_PROBABILITY,)), extra_stats=extra)


# ---- raw Criteo TSV, for exercising `prepare --format criteo` --------------------------------

def write_criteo_tsv(config: CtrConfig, out: Path, overwrite: bool) -> Path:
    """The ctr generator's label, I1..I13 and C1..C26 as a Criteo day file (hex-hashed categoricals)."""
    source = CtrSource(config)
    with layout.atomic_output_dir(out, overwrite=overwrite) as tmp:
        path = tmp / "day_0.tsv"
        with path.open("w") as handle:
            for sample in source.chunks():
                columns = [pl.Series(sample["label"]).cast(pl.Int64).cast(pl.String)]
                for values in sample["dense"]:
                    columns.append(pl.Series(values).fill_nan(None).cast(pl.Int64).cast(pl.String).fill_null(""))
                for k, values in enumerate(sample["fields"]):
                    # A bijection of the id per field (odd multiplier mod 2^32), so ids stay distinct.
                    mixed = (values.astype(np.uint64) ^ np.uint64(k << 24)) * np.uint64(0x9E3779B1) + np.uint64(0x7F4A7C15)
                    hashed = mixed & np.uint64(0xFFFFFFFF)
                    hex_text = hashed.astype(">u4").tobytes().hex().encode("ascii")
                    columns.append(pl.Series(np.frombuffer(hex_text, dtype="S8").astype(str)))
                frame = pl.DataFrame({f"f{i}": c for i, c in enumerate(columns)})
                handle.write(frame.select(pl.concat_str(pl.all(), separator="\t"))
                             .to_series().str.join("\n").item() + "\n")
    return out / "day_0.tsv"


# ---- implicit ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImplicitConfig:
    rows: int
    seed: int = 0
    users: int | None = None
    items: int | None = None
    communities: int = 8
    in_community: float = 0.85
    embedding_dim: int = 32

    def __post_init__(self) -> None:
        _check_embedding_dim(self.embedding_dim)

    @property
    def n_users(self) -> int:
        return self.users or max(100, self.rows // 30)

    @property
    def n_items(self) -> int:
        return self.items or max(100, self.rows // 60)


def implicit_schema(config: ImplicitConfig) -> Schema:
    dim = config.embedding_dim
    return Schema(
        task=Task.IMPLICIT,
        sparse=[
            SparseFeature(name="user_id", entity=Entity.USER),
            SparseFeature(name="item_id", entity=Entity.ITEM),
            SparseFeature(name="item_community", entity=Entity.ITEM),
        ],
        tables=[
            Table(name="user_id", encoding=Encoding.IDENTITY, cardinality=config.n_users, embedding_dim=dim),
            Table(name="item_id", encoding=Encoding.IDENTITY, cardinality=config.n_items, embedding_dim=dim),
            Table(name="item_community", encoding=Encoding.IDENTITY, cardinality=config.communities, embedding_dim=dim),
        ],
        user_key=Column(name="user_key"),
        item_key=Column(name="item_key"),
        timestamp=Column(name="timestamp"),
        default_embedding_dim=dim,
    )


class ImplicitSource:
    """Distinct (user, item) interactions with community structure, in one part."""

    def __init__(self, config: ImplicitConfig) -> None:
        if config.n_users * config.n_items < 2 * config.rows:
            raise RecsysError(f"--rows {config.rows} is too many for {config.n_users} users × {config.n_items} items")
        self.config = config
        self.schema = implicit_schema(config)
        rng = np.random.default_rng([config.seed, 0])
        self.user_community = rng.integers(0, config.communities, config.n_users)
        self.item_community = rng.integers(0, config.communities, config.n_items)

    def parts(self) -> Iterator[RawPart]:
        config = self.config
        rng = np.random.default_rng([config.seed, 1])
        user_cdf = _zipf_sampler(config.n_users, 0.8)
        members = [np.flatnonzero(self.item_community == c) for c in range(config.communities)]
        pairs = np.empty((0, 2), dtype=np.int64)
        while len(pairs) < config.rows:
            n = 2 * (config.rows - len(pairs)) + 1000
            users = _draw(user_cdf, rng, n)
            items = _draw(_zipf_sampler(config.n_items, 0.9), rng, n)
            own = rng.random(n) < config.in_community
            for community, pool in enumerate(members):
                rows = np.flatnonzero(own & (self.user_community[users] == community))
                if len(rows) and len(pool):
                    items[rows] = pool[_draw(_zipf_sampler(len(pool), 0.9), rng, len(rows))]
            batch = np.stack([users, items], axis=1)
            merged = np.concatenate([pairs, batch])
            _, first = np.unique(merged[:, 0] * config.n_items + merged[:, 1], return_index=True)
            pairs = merged[np.sort(first)]
        pairs = pairs[: config.rows]
        users, items = pairs[:, 0], pairs[:, 1]
        frame = pl.DataFrame({
            "user_key": pl.Series(users).cast(pl.String),
            "item_key": pl.Series(items).cast(pl.String),
            "timestamp": 1_700_000_000 + 10 * np.arange(len(users), dtype=np.int64),
            "user_id": users,
            "item_id": items,
            "item_community": self.item_community[items],
        })
        yield RawPart(rows=frame)


def synth_implicit(config: ImplicitConfig, out: Path, options: PrepareOptions) -> PrepareResult:
    source = ImplicitSource(config)

    def extra(data_dir: Path, schema: Schema) -> dict[str, Any]:
        frame = pl.read_parquet(sorted(data_dir.glob("*/*.parquet")), columns=["user_id", "item_id"])
        same = source.user_community[frame["user_id"].to_numpy()] == source.item_community[frame["item_id"].to_numpy()]
        return {"generator": {"kind": "implicit", **config.__dict__, "users": config.n_users, "items": config.n_items},
                "in_community_fraction": float(same.mean())}

    return run(source, out, options, extra_stats=extra)
