"""DisCo: fields ranked by their distance correlation with the label, kept when they beat a permutation null.

Distance correlation: Székely, Rizzo and Bakirov, "Measuring and testing dependence by correlation of
distances", Annals of Statistics 2007. Selection by distance correlation with the response, as in Berrendero,
Cuevas and Torrecilla, "Variable selection in functional data classification: a maxima-hunting proposal",
Statistica Sinica 2016 (dCor with the class label; we keep every field above a null instead of hunting maxima).

dCor sees any dependence, not only linear, and is zero exactly under independence. It is O(n²) in general;
for a univariate field and a 0/1 label it is exact in O(n log n): with the field sorted once, the distance sums
a_i. come from prefix sums, the label's distance matrix is 1 between classes and 0 within, so
sum_ij |x_i - x_j| |y_i - y_j| = 2·(distance mass between the classes), also a prefix sum. A shuffled label
is a random placement of the positives in the field's sorted order, so one set of ``permutations`` placements
(with their running counts) serves every field, and a field's whole null is one (2P, n) @ (n, 2) product.

Rows are split in two seeded halves: the first fits the sparse encodings, the second (at most ``max_rows``
of it) is scored. Sparse fields have no metric on their ids, so each is encoded by the smoothed label mean of
its id on the first half, (sum_y + m·prior) / (count + m) with m = ``smoothing``. Target encoding turns any
id-to-label association into a number dCor can see (a frequency rank would only see effects that follow
popularity). Fitting and scoring on disjoint halves makes a noise field's code exactly independent of the
scored labels, so the permutation null is valid: encoded in-sample, a 50,000-id noise field would carry each
rare id's own label and look predictive; even cross-fitting (each half encoded from the other) couples the
two halves' labels through shared ids (a 50,000-id noise field read z = 3.2 that way on the planted test
frame, 1.4 split). Dense fields enter as prepared (missing values: the field's mean).

Suggested fields: dCor above every one of the ``permutations`` shuffles of the label (p = 1/(permutations+1))
and at least ``z`` standard deviations above the shuffles' mean (guards against a lucky tail with few shuffles);
None when no field does.
Differs from the papers: a 0/1 label only (the O(n log n) path); labels with more values are an error.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recsys.errors import RecsysError
from recsys.features import register_feature_method
from recsys.features.base import FeatureData, FeatureMethod, Ranking
from recsys.features.outrank import discretise


class DisCoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_rows: int = Field(50_000, ge=100, description="rows scored (the other half of the sample fits encodings)")
    permutations: int = Field(99, ge=9, le=2_000, description="label shuffles of the null")
    z: float = Field(4.0, gt=0, description="suggested: dCor this many null standard deviations above its mean")
    smoothing: float = Field(20.0, ge=0, description="pseudo-rows of the prior in a sparse field's target encoding")


def binary_label(data: FeatureData, where: str) -> np.ndarray:
    """The label as 0/1 float64; other labels are one-line errors (``where`` names the method)."""
    y = data.labels()
    if len(y) < 4:
        raise RecsysError(f"{where}: {len(y)} sampled rows of {data.data_dir}; at least 4 are needed")
    if not np.isin(y, (0.0, 1.0)).all():
        raise RecsysError(f"{where}: label '{data.label}' must be 0/1 (found {np.unique(y)[:3].tolist()}...)")
    if y.min() == y.max():
        raise RecsysError(f"{where}: label '{data.label}' is constant in the sample ({len(y)} rows); "
                          "nothing to rank fields against")
    return y


def target_encode(fit_ids: np.ndarray, fit_y: np.ndarray, ids: np.ndarray, smoothing: float) -> np.ndarray:
    """The smoothed label mean of each of ``ids`` counted on the rows (``fit_ids``, ``fit_y``) only."""
    codes, levels = discretise(np.concatenate([fit_ids, ids]), "sparse")
    fit_codes, codes = codes[: len(fit_ids)], codes[len(fit_ids):]
    count = np.bincount(fit_codes, minlength=levels)
    total = np.bincount(fit_codes, weights=fit_y, minlength=levels)
    prior = float(fit_y.mean())
    return ((total + smoothing * prior) / np.maximum(count + smoothing, 1e-12))[codes]


def encoded_fields(data: FeatureData, y: np.ndarray, max_rows: int, smoothing: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(scored rows, every field on them as float64): the scoring half of the rows, at most ``max_rows``.

    The rows are split in two seeded halves: sparse fields are target-encoded with the first half's counts and
    everything is scored on the second, so a row's code never saw its own label nor any scored row's label."""
    order = rng.permutation(len(y))
    fit, score = order[: len(y) // 2], np.sort(order[len(y) // 2:][:max_rows])
    out = {}
    for name in data.fields:
        values = data.column(name)
        if data.kinds[name] == "sparse":
            out[name] = target_encode(values[fit], y[fit], values[score], smoothing)
        else:
            x = values[score].astype(np.float64)
            finite = np.isfinite(x)
            out[name] = np.where(finite, x, x[finite].mean() if finite.any() else 0.0)
    return score, out


class LabelShuffles:
    """``count`` seeded random placements of a 0/1 label's positives over n positions, with the running count
    of positives before each, shared by every field: a field sorted by value sees a shuffled label as a random
    placement in its sorted order, whatever the field. (2P, n): placements, then placement × positives before."""

    def __init__(self, y: np.ndarray, count: int, rng: np.random.Generator) -> None:
        placements = np.stack([rng.permutation(y) for _ in range(count)])
        self.matrix = np.vstack([placements, placements * (np.cumsum(placements, axis=1) - placements)])
        self.count = count


def _dcor(n: int, a_row: np.ndarray, xs: np.ndarray, ones: float, ones_a: np.ndarray, ones_x: np.ndarray,
          ones_x_rank: np.ndarray) -> np.ndarray:
    """dCor from a sorted, centred field ``xs`` (its distance sums ``a_row``) and, per labelling, the sums over
    positives of a_i., of x_i and of x_i · (positives before i)."""
    a_all = a_row.sum()
    a_sq = 2.0 * n * (xs ** 2).sum() - 2.0 * xs.sum() ** 2  # sum_ij (x_i - x_j)^2
    var_x = a_sq / n**2 + (a_all / n**2) ** 2 - 2.0 * (a_row ** 2).sum() / n**3
    zeros = n - ones
    within = 2.0 * (2.0 * ones_x_rank - (ones - 1) * ones_x)  # sum over positive pairs i, j of |x_i - x_j|
    between = ones_a - within  # sum over positive i, negative j of |x_i - x_j|
    b_all = 2.0 * ones * zeros
    cov = 2.0 * between / n**2 + a_all * b_all / n**4 - 2.0 * (zeros * ones_a + ones * (a_all - ones_a)) / n**3
    var_y = (b_all / n**2) ** 2
    if var_x <= 0 or var_y <= 0:
        return np.zeros_like(cov)
    return np.sqrt(np.clip(cov / np.sqrt(var_x * var_y), 0.0, None))


def _sorted(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, x sorted and centred, sum_j |x_i - x_j| in sorted order) by prefix sums."""
    n = len(x)
    order = np.argsort(x, kind="stable")
    xs = x[order] - x.mean()  # centring leaves distances alone and keeps the prefix sums small
    prefix = np.cumsum(xs)
    k = np.arange(n)
    return order, xs, xs * k - (prefix - xs) + (prefix[-1] - prefix) - xs * (n - 1 - k)


def distance_correlation(x: np.ndarray, y: np.ndarray,
                         shuffles: LabelShuffles | None = None) -> tuple[float, np.ndarray]:
    """(dCor(x, y), dCor of x against each of ``shuffles``) for a 0/1 label y; exact, O(n log n + P·n)."""
    n = len(x)
    order, xs, a_row = _sorted(x.astype(np.float64))
    ys = y[order].astype(np.float64)
    ones = float(ys.sum())
    rank = np.cumsum(ys) - ys
    observed = _dcor(n, a_row, xs, ones, np.array([ys @ a_row]), np.array([ys @ xs]), np.array([(ys * rank) @ xs]))
    if shuffles is None:
        return float(observed[0]), np.empty(0)
    sums = shuffles.matrix @ np.stack([a_row, xs], axis=1)  # (2P, 2): one pass over the shuffles
    p = shuffles.count
    return float(observed[0]), _dcor(n, a_row, xs, ones, sums[:p, 0], sums[:p, 1], sums[p:, 1])


@register_feature_method
class DisCo(FeatureMethod):
    """Distance correlation of each (target-encoded) field with the label, against a permutation null."""

    name = "disco"
    paper = ("Székely, Rizzo and Bakirov, Ann. Statist. 2007: Measuring and testing dependence by correlation "
             "of distances; selection as in Berrendero, Cuevas and Torrecilla, Statist. Sinica 2016")
    Options = DisCoOptions

    def rank(self, data: FeatureData) -> Ranking:
        options: DisCoOptions = self.options  # type: ignore[assignment]
        y = binary_label(data, "disco")
        rng = np.random.default_rng(data.seed)
        rows, encoded = encoded_fields(data, y, options.max_rows, options.smoothing, rng)
        y = y[rows]
        if y.min() == y.max():
            raise RecsysError(f"disco: label '{data.label}' is constant on the scored half of the sample")
        shuffles = LabelShuffles(y, options.permutations, rng)
        scores: dict[str, float] = {}
        fields: dict[str, dict[str, float]] = {}
        suggested: list[str] = []
        for name, x in encoded.items():
            dcor, null = distance_correlation(x, y, shuffles)
            mean, std = float(null.mean()), float(null.std(ddof=1))
            p = (1 + int((null >= dcor).sum())) / (len(null) + 1)
            scores[name] = dcor
            fields[name] = {"dcor": dcor, "null_mean": mean, "null_std": std, "p": p,
                            "z": (dcor - mean) / std if std > 0 else 0.0}
            if p <= 1 / (len(null) + 1) and dcor > mean + options.z * std:
                suggested.append(name)
        order = sorted(suggested, key=lambda f: (-scores[f], f))
        return Ranking(method=self.name, scores=scores, suggested=order or None,  # None: nothing beat the null
                       details={"rows": len(y), "permutations": options.permutations, "z": options.z,
                                "smoothing": options.smoothing,
                                "sparse_encoding": "smoothed label mean of the id, fit on the other half",
                                "fields": fields})
