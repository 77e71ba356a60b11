"""Metrics of scored rows, from scikit-learn (AUC, log loss) and the trainer's normalized entropy."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from recsys.train.evaluate import normalized_entropy

# Which way is better, for bolding the best artifact: +1 higher, -1 lower, 0 closest to 1.
DIRECTION = {"auc": 1, "average_precision": 1, "logloss": -1, "ne": -1, "brier": -1, "ece": -1, "calibration": 0}


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """{rows, positive_rate, auc (None with one class), logloss, ne, calibration} of (N,) labels and scores."""
    rows = len(labels)
    if rows == 0:
        return {"rows": 0}
    positive_rate = float(labels.mean())
    logloss = float(log_loss(labels, scores, labels=[0, 1]))
    return {
        "rows": rows,
        "positive_rate": positive_rate,
        "auc": float(roc_auc_score(labels, scores)) if 0 < positive_rate < 1 else None,
        "logloss": logloss,
        "ne": normalized_entropy(logloss, positive_rate) if 0 < positive_rate < 1 else None,
        "calibration": float(scores.mean()) / positive_rate if positive_rate > 0 else None,
    }


def best(values: dict[str, float | None], metric: str) -> str | None:
    """The label with the best value of ``metric`` (by ``DIRECTION``); None when fewer than two compare."""
    finite = {k: v for k, v in values.items() if isinstance(v, int | float) and np.isfinite(v)}
    direction = DIRECTION.get(metric.rsplit(".", 1)[-1])
    if len(finite) < 2 or direction is None:
        return None
    if direction == 0:
        return min(finite, key=lambda k: abs(finite[k] - 1))
    return max(finite, key=lambda k: direction * finite[k])
