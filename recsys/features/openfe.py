"""OpenFE: generated features chosen by their incremental gain over a boosted base model.

Paper: Tianping Zhang, Zheyu Wang, Jian Zhao, Jian Li, Zhengyang Zhou, Yilin Li, Haoyu Zhou, Yizhe Ma,
Xiaocheng Zhang, Xiaodong Lin: "OpenFE: Automated Feature Generation with Expert-level Performance",
ICML 2023.

The method, as in the paper:
1. Candidate generation: every operator applied to the base fields (here the ops of ``DerivedOp``:
   abs, square and bin of a dense field, freq of a sparse one; add, sub, mul, div of two dense fields;
   cross of two sparse fields; group_mean of a dense field by a sparse one). A candidate's values are
   computed by ``recipes.fit`` and ``recipes.derive``, the very code that writes and serves it.
2. FeatureBoost: a LightGBM model on the base fields gives every row a margin (out of fold for the train
   rows, so a candidate is judged on what the base model could not predict). A candidate's gain is the
   validation log-loss reduction of a few boosting rounds on [candidate] alone, started from that margin
   (``init_score``).
3. Two-stage pruning. Coarse: successive halving over data blocks: all candidates are scored on the
   first ``1/blocks`` of the train rows, the better half is kept and the data doubled, until the whole
   sample scores the last ones. Fine: a dense survivor whose values rank-correlate above ``redundancy`` with
   a better one (or with a base dense field) is dropped as redundant; a LightGBM model on base fields +
   survivors (again from the base margin) ranks the rest by their importance in it, and a survivor the
   model does not need (importance within ``min_z`` standard errors of 0: noise, or another one carries
   its information) is dropped.

What differs from the paper:
- The operator set is the schema's (no log, sqrt, sigmoid, round, residual, group-by min/max/std/rank,
  combine-then-freq); only first-order candidates (no second-order expansion).
- Sparse fields and crosses enter LightGBM as categorical features: their ids are recoded by train
  frequency, the ``max_categories`` most frequent keep a code of their own and the rest (and ids unseen in
  train) share one "other" code. LightGBM's categorical split orders categories by their gradient
  statistics, i.e. the target is used only inside the boosting step, on train rows; the gain is measured on
  held-out rows, so a cross that only memorises rare pairs earns nothing. No target encoding is stored:
  the written features are the recipe's ids.
- A pre-filter caps the candidate count at ``max_candidates`` (the paper enumerates all): when there are
  more, each is scored by one cheap Newton step (one leaf per category, or per quantile bin of a dense
  value, fitted on a subsample of train rows' gradients at the base margin, log-loss gain on the valid
  rows), and the best ``max_candidates`` enter the halving. This keeps crosses of two fields without
  marginal effect (which a ranking by base importance would cut) while bounding the run time.
- The base model's margins come from ``folds``-fold cross-fitting (early stopping on the held-out fold); the
  valid rows get the mean margin of the fold models.
- Importance is permutation importance on the valid rows (log-loss increase when the column is shuffled),
  not the paper's split-gain importance: split gain is earned in-sample, and categorical splits on noise ids
  or on memorised rare pairs earn plenty of it. The same score ranks the base fields in ``rank``.
- Statistics (lookups, bin edges, mean/std) are fitted on the sample; ``features generate`` refits the
  chosen recipes on the whole train split. A bin's ids enter LightGBM as numbers (they are ordered).

Run time is reported per stage in ``OpenFE.report`` (and in ``rank``'s details). Measured on one core
(OMP_NUM_THREADS=1, a shared 2-core machine): the synthetic ctr set with 4 noise, 2 redundant fields and the
planted cross (200k sampled train rows, 25k valid rows, 15 dense + 35 sparse fields, 1,725 candidates, 500
after the pre-filter), default options: 70 s (base model 11 s, fit 7 s, pre-filter 6 s, halving 36 s, fine
stage 11 s); the planted cross is the first generated feature.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recsys.errors import RecsysError
from recsys.features import register_feature_method
from recsys.features.base import FeatureData, FeatureGenerator, FieldKind, GeneratedFeature, Ranking
from recsys.features.quality import ranks
from recsys.features.recipes import GeneratedSpec, Lookups, derive, fit
from recsys.schema import DENSE_OPS, Derivation, DerivedOp, SparseFeature

UNARY_DENSE = (DerivedOp.ABS, DerivedOp.SQUARE, DerivedOp.BIN)
BINARY_DENSE = (DerivedOp.ADD, DerivedOp.SUB, DerivedOp.MUL, DerivedOp.DIV)
SCREEN_BINS = 32  # quantile bins of a dense candidate in the pre-filter's one-step score
SCREEN_ROWS = 20_000  # train rows the pre-filter fits its step on, and valid rows it scores it on
SCREEN_EDGE_ROWS = 4_000  # rows whose quantiles cut a dense candidate into bins
SCREEN_L2 = 10.0  # Newton step regularisation: leaf = -G / (H + l2)
REDUNDANCY_ROWS = 20_000  # rows on which rank correlations between candidates are measured
PERMUTATION_ROWS = 10_000  # valid rows on which the base fields' permutation importance is measured
SUGGEST_SHARE = 0.01  # a base field with at least this share of the summed positive importance is suggested


class OpenFEOptions(BaseModel):
    """Settings of ``--method openfe``."""

    model_config = ConfigDict(extra="forbid")

    top_n: int = Field(8, ge=1, le=1000, description="generated features returned, best first")
    max_candidates: int = Field(500, ge=1, le=1_000_000, description="candidates entering the halving")
    ops: list[DerivedOp] = Field(default_factory=lambda: list(DerivedOp), min_length=1)
    rounds: int = Field(10, ge=1, le=1000, description="FeatureBoost boosting rounds per candidate")
    learning_rate: float = Field(0.2, gt=0, le=1)
    num_leaves: int = Field(16, ge=2, le=1024)
    blocks: int = Field(8, ge=1, le=1024, description="successive halving starts on 1/blocks of the train rows")
    fine_candidates: int = Field(40, ge=1, le=10_000, description="halving survivors entering the fine stage")
    base_rounds: int = Field(300, ge=1, le=10_000)
    folds: int = Field(2, ge=2, le=20, description="cross-fitting folds of the base margin")
    valid_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share of the sample without valid rows")
    max_categories: int = Field(1000, ge=2, le=1_000_000)
    min_z: float = Field(2.0, ge=0, le=100, description="fine stage keeps a candidate whose permutation "
                         "importance exceeds this many standard errors")
    redundancy: float = Field(0.95, gt=0, le=1, description="|Spearman| above which a candidate is redundant")
    seed: int | None = Field(None, ge=0, description="seed of the search; None: the data's (--seed)")
    threads: int = Field(1, ge=1, le=256)

    @field_validator("blocks")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two, got {value}")
        return value


@dataclass
class _Candidate:
    """A recipe under evaluation: its fitted schema entry, its own lookups, its gains per halving level."""

    name: str
    recipe: Derivation
    kind: FieldKind
    spec: GeneratedSpec
    lookups: Lookups
    index: int  # enumeration order: the tie-break
    gains: list[float] = field(default_factory=list)
    screen: float | None = None
    importance: float = 0.0
    importance_se: float = 0.0

    def values(self, frame: pl.DataFrame) -> np.ndarray:
        return derive(self.spec, {n: frame[n].to_numpy() for n in self.recipe.inputs}, self.lookups)


@dataclass
class _Split:
    """Train and valid rows with labels and base margins (out of fold on train)."""

    train: pl.DataFrame
    valid: pl.DataFrame
    y_train: np.ndarray
    y_valid: np.ndarray
    m_train: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m_valid: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _row_losses(y: np.ndarray, margin: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, margin) - y * margin


def _logloss(y: np.ndarray, margin: np.ndarray) -> float:
    return float(np.mean(_row_losses(y, margin)))


def _codes(train_ids: np.ndarray, other_ids: list[np.ndarray], cap: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ids as LightGBM category codes: by train frequency (ties by id), the ``cap - 1`` most frequent get
    0..cap-2, the rest and ids unseen in train share code cap-1 (or the next free code)."""
    uniq, inverse, counts = np.unique(train_ids, return_inverse=True, return_counts=True)
    order = np.lexsort((uniq, -counts))
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    other = min(cap - 1, len(uniq))
    code_of = np.minimum(rank, other).astype(np.float64)
    mapped = []
    for ids in other_ids:
        if len(uniq) == 0:
            mapped.append(np.full(len(ids), float(other)))
            continue
        pos = np.minimum(np.searchsorted(uniq, ids), len(uniq) - 1)
        mapped.append(np.where(uniq[pos] == ids, code_of[pos], float(other)))
    return code_of[inverse], mapped


def _lgb_params(options: OpenFEOptions, seed: int, **extra: Any) -> dict[str, Any]:
    return {"objective": "binary", "verbose": -1, "num_threads": options.threads, "seed": seed,
            "deterministic": True, "force_col_wise": True, "max_bin": 63, "min_data_in_leaf": 50,
            "min_data_per_group": 50, "cat_smooth": 10.0, "max_cat_threshold": 64, **extra}


@register_feature_method
class OpenFE(FeatureGenerator):
    """OpenFE (Zhang et al., ICML 2023): FeatureBoost gains and two-stage pruning over operator candidates."""

    name = "openfe"
    paper = ("Zhang, Wang, Zhao, Li, Zhou, Li, Zhou, Ma, Zhang, Lin, ICML 2023: OpenFE: Automated Feature "
             "Generation with Expert-level Performance")
    Options = OpenFEOptions
    # A small, fast run (the contract suite, smoke checks): fewer ops, candidates, rounds and halving levels.
    quick: ClassVar[dict[str, Any]] = {"ops": ["cross", "mul", "div", "freq"], "max_candidates": 150, "rounds": 6,
                                       "base_rounds": 100, "blocks": 4, "fine_candidates": 20}

    def __init__(self, options: BaseModel) -> None:
        super().__init__(options)
        self.opts: OpenFEOptions = options  # type: ignore[assignment]
        self.report: dict[str, Any] = {}  # counts and seconds per stage of the last run (JSON-able)
        self.seed = 0  # of the current run: the option, else the data's

    # ---- public ---------------------------------------------------------------------------------------------
    def generate(self, data: FeatureData) -> list[GeneratedFeature]:
        """At most ``top_n`` candidates, best first by fine-stage importance: each has a positive FeatureBoost
        gain on the whole sample and an importance ``min_z`` standard errors above 0 (possibly none)."""
        generated, _ = self._run(data)
        return generated

    def rank(self, data: FeatureData) -> Ranking:
        """Base fields by their permutation importance in the base LightGBM model (valid log-loss increase when
        the field's valid values are shuffled); the generated features in details."""
        start = time.perf_counter()
        generated, importance = self._run(data)
        total = sum(v for v in importance.values() if v > 0) or 1.0
        scores = {f: importance.get(f, 0.0) for f in data.fields}
        suggested = [f for f in data.fields if scores[f] >= SUGGEST_SHARE * total]
        details = {**self.report, "generated": [
            {"name": g.name, "kind": g.kind, "gain": g.gain,
             "recipe": g.recipe.model_dump(mode="json", exclude_none=True), **g.details} for g in generated]}
        return Ranking(method=self.name, scores=scores, seconds=time.perf_counter() - start,
                       suggested=suggested, details=details)

    # ---- the search -----------------------------------------------------------------------------------------
    def _run(self, data: FeatureData) -> tuple[list[GeneratedFeature], dict[str, float]]:
        seconds: dict[str, float] = {}
        clock = time.perf_counter()
        self.seed = data.seed if self.opts.seed is None else self.opts.seed

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[stage] = round(now - clock, 3)
            clock = now

        split = self._split(data)
        importance = self._base_model(data, split)
        lap("base_model")
        recipes = self._enumerate(data)
        candidates = self._fit_all(data, recipes)
        enumerated = len(candidates)
        lap("fit")
        if len(candidates) > self.opts.max_candidates:
            candidates = self._screen(candidates, split)
        screened = len(candidates)
        lap("screen")
        survivors = self._halving(candidates, split)
        lap("halving")
        survivors = self._drop_redundant(data, survivors, split)
        chosen = self._fine(data, survivors, split)
        lap("fine")
        generated = [GeneratedFeature(
            name=c.name, recipe=c.recipe, kind=c.kind, gain=c.gains[-1],
            details={"importance": c.importance, "importance_se": c.importance_se, "halving_gains": [round(g, 6) for g in c.gains],
                     **({"screen_gain": c.screen} if c.screen is not None else {})}) for c in chosen]
        seconds["total"] = round(sum(seconds.values()), 3)
        self.report = {"method": self.name, "rows_train": split.train.height, "rows_valid": split.valid.height,
                       "candidates": enumerated, "after_prefilter": screened, "fine_stage": len(survivors),
                       "generated": len(generated), "base_valid_logloss": _logloss(split.y_valid, split.m_valid),
                       "seconds": seconds}
        return generated, importance

    def _split(self, data: FeatureData) -> _Split:
        if data.label not in data.frame.columns or data.frame.height == 0:
            raise RecsysError(f"openfe: the sample of {data.data_dir} has no rows with label '{data.label}'")
        train, valid = data.frame, data.valid
        if valid is None or valid.height == 0:
            rng = np.random.default_rng(self.seed)
            held = rng.random(train.height) < self.opts.valid_fraction
            train, valid = data.frame.filter(pl.Series(~held)), data.frame.filter(pl.Series(held))
        y_train, y_valid = data.labels(train), data.labels(valid)
        for y, part in ((y_train, "train"), (y_valid, "valid")):
            if len(y) < 2 * self.opts.folds or not np.isin(y, (0.0, 1.0)).all():
                raise RecsysError(f"openfe: label '{data.label}' of {data.data_dir} ({part} sample): needs 0/1 "
                                  f"values in at least {2 * self.opts.folds} rows")
        if len(np.unique(y_train)) < 2:
            raise RecsysError(f"openfe: label '{data.label}' of {data.data_dir} is constant in the sample")
        return _Split(train, valid, y_train, y_valid)

    def _base_matrix(self, data: FeatureData, split: _Split) -> tuple[np.ndarray, np.ndarray, list[int]]:
        columns_train, columns_valid, categorical = [], [], []
        for j, name in enumerate(data.fields):
            a, b = split.train[name].to_numpy(), split.valid[name].to_numpy()
            if data.kinds[name] == "sparse":
                a, (b,) = _codes(a.astype(np.int64), [b.astype(np.int64)], self.opts.max_categories)
                categorical.append(j)
            columns_train.append(a.astype(np.float64))
            columns_valid.append(b.astype(np.float64))
        return np.column_stack(columns_train), np.column_stack(columns_valid), categorical

    def _base_model(self, data: FeatureData, split: _Split) -> dict[str, float]:
        """Cross-fitted margins of a LightGBM model on the base fields; each field's permutation importance on
        valid rows (split-gain importance is not used: categorical splits on noise ids earn in-sample gain)."""
        x_train, x_valid, categorical = self._base_matrix(data, split)
        folds = np.random.default_rng(self.seed + 1).permutation(len(x_train)) % self.opts.folds
        split.m_train = np.zeros(len(x_train))
        split.m_valid = np.zeros(len(x_valid))
        importance = np.zeros(len(data.fields))
        params = _lgb_params(self.opts, self.seed, learning_rate=0.1, num_leaves=31)
        for k in range(self.opts.folds):
            fit_rows, held = folds != k, folds == k
            train_set = lgb.Dataset(x_train[fit_rows], label=split.y_train[fit_rows],
                                    categorical_feature=categorical, free_raw_data=True)
            held_set = lgb.Dataset(x_train[held], label=split.y_train[held], reference=train_set)
            booster = lgb.train(params, train_set, num_boost_round=self.opts.base_rounds, valid_sets=[held_set],
                                callbacks=[lgb.early_stopping(20, verbose=False)])
            split.m_train[held] = booster.predict(x_train[held], raw_score=True)
            split.m_valid += booster.predict(x_valid, raw_score=True) / self.opts.folds
            importance += self._permutation_importance(booster, x_valid, split.y_valid, None,
                                                        range(len(data.fields)))[0] / self.opts.folds
        return {f: float(v) for f, v in zip(data.fields, importance)}

    def _enumerate(self, data: FeatureData) -> list[Derivation]:
        """Every first-order candidate of the chosen ops, in a fixed order (fields in schema order)."""
        ops = set(self.opts.ops)
        dense, sparse = data.dense_fields, data.sparse_fields
        out: list[Derivation] = []
        for op in UNARY_DENSE:
            if op in ops:
                out += [Derivation(op=op, inputs=[a]) for a in dense]
        if DerivedOp.FREQ in ops:
            out += [Derivation(op=DerivedOp.FREQ, inputs=[s]) for s in sparse]
        for a, b in combinations(dense, 2):
            for op in BINARY_DENSE:
                if op in ops:
                    out.append(Derivation(op=op, inputs=[a, b]))
            if DerivedOp.DIV in ops:
                out.append(Derivation(op=DerivedOp.DIV, inputs=[b, a]))
        if DerivedOp.CROSS in ops:
            out += [Derivation(op=DerivedOp.CROSS, inputs=[a, b]) for a, b in combinations(sparse, 2)]
        if DerivedOp.GROUP_MEAN in ops:
            out += [Derivation(op=DerivedOp.GROUP_MEAN, inputs=[d, s]) for d in dense for s in sparse]
        if not out:
            raise RecsysError(f"openfe: ops {', '.join(o.value for o in self.opts.ops)} make no candidate from "
                              f"the {len(dense)} dense and {len(sparse)} sparse fields of {data.data_dir}")
        return out

    def _fit_all(self, data: FeatureData, recipes: list[Derivation]) -> list[_Candidate]:
        taken = set(data.schema.columns)
        fit_frame = data.frame.select(sorted({n for r in recipes for n in r.inputs}))
        candidates = []
        for index, recipe in enumerate(recipes):
            name = _name(recipe, taken)
            taken.add(name)
            lookups = Lookups(None)
            spec, _, _ = fit(name, recipe, fit_frame, data.schema, lookups)
            kind: FieldKind = "sparse" if isinstance(spec, SparseFeature) else "dense"
            candidates.append(_Candidate(name, recipe, kind, spec, lookups, index))
        return candidates

    def _matrices(self, candidate: _Candidate, train: pl.DataFrame, valid: pl.DataFrame
                  ) -> tuple[np.ndarray, np.ndarray]:
        a, b = candidate.values(train), candidate.values(valid)
        if candidate.kind == "sparse" and candidate.recipe.op is DerivedOp.CROSS:
            a, (b,) = _codes(a, [b], self.opts.max_categories)
        return a.astype(np.float64), b.astype(np.float64)

    def _screen(self, candidates: list[_Candidate], split: _Split) -> list[_Candidate]:
        """The pre-filter: one regularised Newton step per category / quantile bin, scored on the valid rows."""
        rng = np.random.default_rng(self.seed + 2)
        rows = np.sort(rng.permutation(split.train.height)[:SCREEN_ROWS])
        held = np.sort(rng.permutation(split.valid.height)[:SCREEN_ROWS])
        inputs = sorted({n for c in candidates for n in c.recipe.inputs})
        train, valid = split.train.select(inputs)[rows], split.valid.select(inputs)[held]
        p = 1.0 / (1.0 + np.exp(-split.m_train[rows]))
        grad, hess = p - split.y_train[rows], p * (1.0 - p)
        y_valid, m_valid = split.y_valid[held], split.m_valid[held]
        base = _logloss(y_valid, m_valid)
        for c in candidates:
            a, b = c.values(train), c.values(valid)
            if c.kind == "sparse":
                bins_a, (bins_b,) = _codes(a.astype(np.int64), [b.astype(np.int64)], self.opts.max_categories)
            else:
                # edges from the first rows (a random subset): quantiles of all rows cost more than the step
                edges = np.unique(np.quantile(a[:SCREEN_EDGE_ROWS], np.linspace(0, 1, SCREEN_BINS + 1)[1:-1]))
                bins_a, bins_b = np.searchsorted(edges, a, side="right"), np.searchsorted(edges, b, side="right")
            bins_a, bins_b = bins_a.astype(np.int64), bins_b.astype(np.int64)
            size = int(max(bins_a.max(initial=0), bins_b.max(initial=0))) + 1
            step = -np.bincount(bins_a, grad, size) / (np.bincount(bins_a, hess, size) + SCREEN_L2)
            c.screen = base - _logloss(y_valid, m_valid + step[bins_b])
        ordered = sorted(candidates, key=lambda c: (-(c.screen or 0.0), c.index))
        return sorted(ordered[: self.opts.max_candidates], key=lambda c: c.index)

    def _boost_gain(self, candidate: _Candidate, split: _Split, rows: np.ndarray, train: pl.DataFrame) -> float:
        """FeatureBoost: valid log-loss reduction of ``rounds`` rounds on [candidate] from the base margin;
        ``train`` holds the train rows ``rows``."""
        a, b = self._matrices(candidate, train, split.valid)
        categorical = [0] if candidate.kind == "sparse" and candidate.recipe.op is DerivedOp.CROSS else []
        params = _lgb_params(self.opts, self.seed, learning_rate=self.opts.learning_rate,
                             num_leaves=self.opts.num_leaves)
        dataset = lgb.Dataset(a.reshape(-1, 1), label=split.y_train[rows], init_score=split.m_train[rows],
                              categorical_feature=categorical, free_raw_data=True)
        booster = lgb.train(params, dataset, num_boost_round=self.opts.rounds)
        step = booster.predict(b.reshape(-1, 1), raw_score=True)
        return _logloss(split.y_valid, split.m_valid) - _logloss(split.y_valid, split.m_valid + step)

    def _halving(self, candidates: list[_Candidate], split: _Split) -> list[_Candidate]:
        """Coarse stage: successive halving over data blocks (1/blocks, 2/blocks, ... of the train rows)."""
        order = np.random.default_rng(self.seed + 3).permutation(split.train.height)
        alive = candidates
        share = 1
        while True:
            rows = np.sort(order[: max(split.train.height * share // self.opts.blocks, 1)])
            inputs = sorted({n for c in alive for n in c.recipe.inputs})
            block = split.train.select(inputs)[rows]
            for c in alive:
                c.gains.append(self._boost_gain(c, split, rows, block))
            alive = sorted(alive, key=lambda c: (-c.gains[-1], c.index))
            if share >= self.opts.blocks:
                break
            alive = alive[: max(len(alive) // 2, self.opts.fine_candidates)]
            share *= 2
        return [c for c in alive[: self.opts.fine_candidates] if c.gains[-1] > 0]

    def _fine(self, data: FeatureData, survivors: list[_Candidate], split: _Split) -> list[_Candidate]:
        """Fine stage: a LightGBM model on base fields + survivors from the base margin (early stopped on the
        valid rows); survivors ranked by their permutation importance in it, those without a significant one
        dropped."""
        if not survivors:
            return []
        x_train, x_valid, categorical = self._base_matrix(data, split)
        extra_train, extra_valid = [], []
        for j, c in enumerate(survivors):
            a, b = self._matrices(c, split.train, split.valid)
            extra_train.append(a)
            extra_valid.append(b)
            if c.kind == "sparse" and c.recipe.op is DerivedOp.CROSS:
                categorical.append(len(data.fields) + j)
        x_train = np.column_stack([x_train, *extra_train])
        x_valid = np.column_stack([x_valid, *extra_valid])
        params = _lgb_params(self.opts, self.seed, learning_rate=0.1, num_leaves=31)
        train_set = lgb.Dataset(x_train, label=split.y_train, init_score=split.m_train,
                                categorical_feature=categorical, free_raw_data=True)
        valid_set = lgb.Dataset(x_valid, label=split.y_valid, init_score=split.m_valid, reference=train_set)
        booster = lgb.train(params, train_set, num_boost_round=self.opts.base_rounds, valid_sets=[valid_set],
                            callbacks=[lgb.early_stopping(20, verbose=False)])
        first = len(data.fields)
        importance, error = self._permutation_importance(booster, x_valid, split.y_valid, split.m_valid,
                                                         range(first, first + len(survivors)))
        for c, value, se in zip(survivors, importance, error):
            c.importance, c.importance_se = float(value), float(se)
        needed = [c for c in survivors if c.importance > max(self.opts.min_z * c.importance_se, 0.0)]
        return sorted(needed, key=lambda c: (-c.importance, c.index))[: self.opts.top_n]

    def _permutation_importance(self, booster: lgb.Booster, x: np.ndarray, y: np.ndarray,
                                margin: np.ndarray | None, columns: range) -> tuple[np.ndarray, np.ndarray]:
        """(mean, standard error) of the valid log-loss increase when one column's values are shuffled
        (seeded), on at most ``PERMUTATION_ROWS`` rows: what the model loses without that column's
        information, measured on rows it was not fitted on, so ids that only memorise noise score about 0."""
        rng = np.random.default_rng(self.seed + 4)
        probe = np.sort(rng.permutation(len(x))[:PERMUTATION_ROWS])
        x_probe, y_probe = x[probe], y[probe]
        offset = margin[probe] if margin is not None else 0.0
        loss = _row_losses(y_probe, offset + booster.predict(x_probe, raw_score=True))
        mean, error = np.zeros(len(columns)), np.zeros(len(columns))
        for k, j in enumerate(columns):
            permuted = x_probe.copy()
            permuted[:, j] = x_probe[rng.permutation(len(probe)), j]
            increase = _row_losses(y_probe, offset + booster.predict(permuted, raw_score=True)) - loss
            mean[k], error[k] = increase.mean(), increase.std() / np.sqrt(max(len(increase), 1))
        return mean, error

    def _drop_redundant(self, data: FeatureData, ranked: list[_Candidate], split: _Split) -> list[_Candidate]:
        """Greedy in halving order: a dense candidate whose ranks correlate above ``redundancy`` with a base
        dense field or a kept dense candidate is dropped (e.g. square and abs of one field order rows alike)."""
        rows = split.train[: REDUNDANCY_ROWS]
        kept_ranks = [ranks(rows[f].to_numpy()) for f in data.dense_fields]
        kept: list[_Candidate] = []
        for c in ranked:
            if c.kind == "dense" and c.recipe.op in DENSE_OPS:
                r = ranks(c.values(rows))
                if any(abs(_corr(r, k)) > self.opts.redundancy for k in kept_ranks):
                    continue
                kept_ranks.append(r)
            kept.append(c)
        return kept


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return 0.0
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


def _name(recipe: Derivation, taken: set[str]) -> str:
    """``op__a__b``, shortened to the schema's 128 characters and made unique against ``taken``."""
    base = "__".join([recipe.op.value, *recipe.inputs])[:120]
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name
