"""``macfe``: meta-feature-chosen transformations per field, then a Markov-blanket estimate of the label.

Paper: Ivan Reyes-Amezcua, Daniel Flores-Araiza, Gilberto Ochoa-Ruiz, Andres Mendez-Vazquez, Francisco
Lopez-Tiro, "MACFE: A Meta-learning and Causality Based Feature Engineering Framework", MICAI 2022. MACFE
describes each feature by meta-features, recommends transformations for it from meta-knowledge learnt on
other data sets, generates the transformed features and keeps those a causal-discovery step finds relevant
to the target.

Here, the feature-selection side as a ranking:
1. Meta-features per field, on the encode half of the sample: dense (distinct values, skewness, excess
   kurtosis, share of zeros); sparse (observed ids, normalised entropy, share of the top id, share of ids seen
   once, rows per id).
2. Transformations chosen from them by a fixed rule table (``_recommend``): few distinct values → the field
   as a category (target mean per value); continuous → rank-Gauss (monotone effects at full resolution) and
   the target mean of its quantile bin (non-monotone effects); zero-inflated → a non-zero indicator too;
   sparse → target mean per id (more smoothing when ids are seen rarely) and, for a long tail, the log
   frequency of the id. Encodings are fit on the encode half, applied to the other half.
3. Causal relevance: every transformed column is Gaussianised (rank → normal scores) and the label's Markov
   blanket is estimated by IAMB (grow by the strongest conditional association, then shrink) with Fisher-z
   partial-correlation tests at level ``alpha``. A noisy copy of a field in the blanket is conditionally
   independent of the label and stays out.
4. Score of a field: ``-log10 p`` of its best column's partial correlation with the label given the blanket
   (given the rest of the blanket for members), Bonferroni-corrected for the field's number of columns.
   Suggested: fields with a column in the blanket.

What is simplified, honestly: the paper's meta-learning (a Transformation Recommendation Matrix learnt by
evaluating transformations on a corpus of data sets, matched by meta-feature similarity) is replaced by the
hand-written rule table above, which uses the same kind of meta-features but learns nothing; no new features
are emitted (this is a ranking; ``openfe`` generates); the causal step is a linear-Gaussian (nonparanormal)
Markov-blanket search, not a full causal-graph discovery, so it assumes the transforms make the relations
roughly monotone.

Cost with the defaults: about 2 s of one core for 80 fields × 200k sampled rows (one correlation matrix,
then the blanket search on it).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import special, stats

from recsys.errors import RecsysError
from recsys.features import register_feature_method
from recsys.features.base import FeatureData, FeatureMethod, Ranking
from recsys.features.drcfs import (LN10, checked_labels, dense_values, quantile_bins, sparse_ids, split_rows,
                                   target_encode)


class MACFEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1e-3, gt=0, lt=1, description="level of each conditional-independence test")
    encode_share: float = Field(0.5, gt=0, lt=1, description="share of the sample fitting meta-features, encodings")
    test_rows: int = Field(100_000, ge=200, description="rows for the Markov-blanket search")
    max_blanket: int = Field(40, ge=1, description="largest Markov blanket (columns)")
    bins: int = Field(32, ge=2, le=1024, description="quantile bins of a continuous field's target-mean column")
    categorical_values: int = Field(32, ge=2, description="dense fields with at most this many values: categories")
    long_tail: float = Field(0.3, ge=0, le=1, description="share of once-seen ids that adds a frequency column")
    smoothing: float = Field(20.0, ge=0, description="target-mean pseudo-count; x3 for rarely seen ids")


def _meta_features(x: np.ndarray, kind: str) -> dict[str, float]:
    """Describe one field (encode rows) as MACFE's meta-features do."""
    if kind == "dense":
        std = float(x.std())
        return {"distinct": float(np.unique(x).size), "skew": float(stats.skew(x)) if std > 0 else 0.0,
                "kurtosis": float(stats.kurtosis(x)) if std > 0 else 0.0, "zero_share": float((x == 0).mean())}
    counts = np.bincount(x)
    counts = counts[counts > 0]
    share = counts / counts.sum()
    entropy = float(-(share * np.log(share)).sum() / math.log(counts.size)) if counts.size > 1 else 0.0
    return {"distinct": float(counts.size), "entropy": entropy, "top_share": float(share.max()),
            "once_share": float((counts == 1).mean()), "rows_per_id": float(counts.sum() / counts.size)}


def _recommend(kind: str, meta: dict[str, float], options: MACFEOptions) -> list[str]:
    """The rule table standing in for the paper's learnt recommendation: meta-features → transformations."""
    if kind == "dense":
        if meta["distinct"] <= options.categorical_values:
            return ["value_mean"]
        chosen = ["rank_gauss", "bin_mean"]
        if meta["zero_share"] >= 0.3:
            chosen.append("nonzero")
        return chosen
    chosen = ["id_mean" if meta["rows_per_id"] >= 20 else "id_mean_smooth"]
    if meta["once_share"] >= options.long_tail and meta["distinct"] > 1:
        chosen.append("log_frequency")
    return chosen


def _transform(name: str, x_fit: np.ndarray, y_fit: np.ndarray, x_apply: np.ndarray,
               options: MACFEOptions) -> np.ndarray:
    """One transformation fit on the encode rows, applied to the test rows."""
    if name == "rank_gauss":  # every column is rank-Gaussianised afterwards: this one is the value itself
        return x_apply
    if name == "nonzero":
        return (x_apply != 0).astype(np.float64)
    if name == "bin_mean":
        bins_fit, bins_apply = quantile_bins(x_fit, x_apply, options.bins)
        return target_encode(bins_fit, y_fit, bins_apply, options.smoothing)
    if name == "value_mean":
        _, codes = np.unique(np.concatenate([x_fit, x_apply]), return_inverse=True)
        return target_encode(codes[:x_fit.size], y_fit, codes[x_fit.size:], options.smoothing)
    if name in ("id_mean", "id_mean_smooth"):
        smoothing = options.smoothing * (3.0 if name == "id_mean_smooth" else 1.0)
        return target_encode(x_fit, y_fit, x_apply, smoothing)
    size = int(max(x_fit.max(initial=0), x_apply.max(initial=0))) + 1  # log_frequency
    return np.log1p(np.bincount(x_fit, minlength=size)[x_apply].astype(np.float64))


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """Rank → standard normal quantiles (ties share their mean rank): the nonparanormal transform."""
    ranks = stats.rankdata(x)
    return special.ndtri(ranks / (x.size + 1))


def _log_p(r: np.ndarray, n: int, conditioned: int) -> np.ndarray:
    """Two-sided Fisher-z log p-values of partial correlations ``r`` given ``conditioned`` variables."""
    z = np.arctanh(np.clip(np.abs(r), 0.0, 1 - 1e-12)) * math.sqrt(max(n - conditioned - 3, 1))
    return np.minimum(0.0, math.log(2.0) + stats.norm.logsf(z))


def _partial_with_label(corr: np.ndarray, given: list[int]) -> np.ndarray:
    """Partial correlation of every column with the label (last index) given the columns ``given``."""
    y = corr.shape[0] - 1
    if not given:
        return corr[:y, y].copy()
    s = np.array(given)
    inv = np.linalg.inv(corr[np.ix_(s, s)] + 1e-9 * np.eye(s.size))
    cross = corr[:y][:, s]  # (columns, |S|)
    var_t = 1.0 - np.einsum("ij,jk,ik->i", cross, inv, cross)
    var_y = 1.0 - corr[y, s] @ inv @ corr[s, y]
    cov = corr[:y, y] - cross @ inv @ corr[s, y]
    r = cov / np.sqrt(np.maximum(var_t, 1e-12) * max(var_y, 1e-12))
    r[s] = 0.0
    return r


def _markov_blanket(corr: np.ndarray, n: int, options: MACFEOptions) -> tuple[list[int], list[int]]:
    """(blanket, columns in the order the grow phase added them): IAMB with Fisher-z tests."""
    threshold = math.log(options.alpha)
    blanket: list[int] = []
    while len(blanket) < options.max_blanket:
        log_p = _log_p(_partial_with_label(corr, blanket), n, len(blanket))
        log_p[blanket] = 0.0
        best = int(np.argmin(log_p))
        if log_p[best] >= threshold:
            break
        blanket.append(best)
    grown = list(blanket)
    while blanket:
        worst, worst_log_p = -1, threshold
        for t in blanket:
            rest = [u for u in blanket if u != t]
            log_p = float(_log_p(_partial_with_label(corr, rest), n, len(rest))[t])
            if log_p >= worst_log_p:
                worst, worst_log_p = t, log_p
        if worst < 0:
            break
        blanket.remove(worst)
    return blanket, grown


@register_feature_method
class MACFE(FeatureMethod):
    """Meta-feature-chosen transforms, then a Markov blanket of the label; suggested = the blanket's fields."""

    name = "macfe"
    paper = ("Reyes-Amezcua, Flores-Araiza, Ochoa-Ruiz, Mendez-Vazquez, Lopez-Tiro, MICAI 2022: MACFE: A "
             "Meta-learning and Causality Based Feature Engineering Framework")
    Options = MACFEOptions

    def rank(self, data: FeatureData) -> Ranking:
        options: MACFEOptions = self.options  # type: ignore[assignment]
        y_all = checked_labels(data, "macfe")
        enc, test = split_rows(len(y_all), options.encode_share, options.test_rows, data.seed)
        if len(test) < 20 or len(enc) < 2:
            raise RecsysError(f"macfe: {len(y_all)} sampled rows are too few (need encode and test rows)")
        y = y_all[test]
        columns: list[np.ndarray] = []
        owner: list[tuple[str, str]] = []  # (field, transformation) per column
        meta: dict[str, dict[str, float]] = {}
        for field in data.fields:
            kind = data.kinds[field]
            raw = data.column(field)
            x = sparse_ids(raw, field) if kind == "sparse" else dense_values(raw)
            meta[field] = _meta_features(x[enc], kind)
            for name in _recommend(kind, meta[field], options):
                columns.append(_normal_scores(_transform(name, x[enc], y_all[enc], x[test], options)))
                owner.append((field, name))
        Z = np.stack([*columns, y], axis=1)  # (rows, columns + label)
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant column correlates with nothing
            corr = np.nan_to_num(np.corrcoef(Z, rowvar=False))
        np.fill_diagonal(corr, 1.0)
        n = len(y)
        blanket, grown = _markov_blanket(corr, n, options)
        log_p = _log_p(_partial_with_label(corr, blanket), n, len(blanket))
        for t in blanket:
            rest = [u for u in blanket if u != t]
            log_p[t] = _log_p(_partial_with_label(corr, rest), n, len(rest))[t]
        column_scores = -log_p / LN10
        # a field's p is its best column's, Bonferroni-corrected for how many columns it was given
        per_field_columns = {f: sum(1 for g, _ in owner if g == f) for f in data.fields}
        best = {f: 0.0 for f in data.fields}
        per_field: dict[str, dict] = {f: {"meta": meta[f], "transforms": {}} for f in data.fields}
        for t, (field, name) in enumerate(owner):
            best[field] = max(best[field], float(column_scores[t]))
            per_field[field]["transforms"][name] = {"score": float(column_scores[t]), "in_blanket": t in blanket,
                                                   "label_corr": float(corr[t, -1])}
        scores = {f: max(0.0, best[f] - math.log10(per_field_columns[f])) for f in data.fields}
        in_blanket = {owner[t][0] for t in blanket}
        suggested = sorted(in_blanket, key=lambda f: (-scores[f], f))
        details = {"alpha": options.alpha, "encode_rows": int(len(enc)), "test_rows": int(n),
                   "blanket": [f"{owner[t][0]}:{owner[t][1]}" for t in blanket],
                   "grown": [f"{owner[t][0]}:{owner[t][1]}" for t in grown], "fields": per_field}
        return Ranking(method=self.name, scores=scores, suggested=suggested, details=details)
