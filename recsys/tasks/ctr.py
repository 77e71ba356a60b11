"""Binary CTR: labelled impressions, a logit per row, binary cross-entropy, the sigmoid as link.

Metrics: AUC (torchmetrics' exact ``BinaryAUROC``), log loss, normalized entropy
(He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", 2014:
log loss over the entropy of always predicting the base rate) and calibration
(mean predicted probability over the positive rate).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit

from recsys.tasks import Metric, MetricState, TaskSpec, register_task

METRICS = [Metric("auc", "AUC", 1), Metric("logloss", "log loss", -1), Metric("ne", "NE", -1, "normalized entropy"),
           Metric("calibration", "calibration", 0, "calibration (mean p / positive rate)"),
           Metric("positive_rate", "positive rate", 0, logged=False)]


def normalized_entropy(logloss: float, positive_rate: float) -> float:
    """Log loss divided by the entropy of always predicting the base rate."""
    p = min(max(positive_rate, 1e-12), 1 - 1e-12)
    return logloss / -(p * math.log(p) + (1 - p) * math.log(1 - p))


class BinaryMetricState(MetricState):
    def __init__(self, device: torch.device) -> None:
        # Imported here: `import torchmetrics` loads every domain it covers (scipy.signal, matplotlib: 2.3 s of a
        # process's start). Training and evaluation need it; the ranking service, which imports the tasks, does not.
        from torchmetrics import MeanMetric
        from torchmetrics.classification import BinaryAUROC

        self.auc = BinaryAUROC(thresholds=None).to(device)
        self.logloss, self.predicted, self.observed = (MeanMetric().to(device) for _ in range(3))

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits.float(), labels.float()
        probabilities = torch.sigmoid(logits)
        self.auc.update(probabilities, labels.long())
        rows = labels.numel()
        self.logloss.update(F.binary_cross_entropy_with_logits(logits, labels, reduction="mean"), weight=rows)
        self.predicted.update(probabilities.mean(), weight=rows)
        self.observed.update(labels.mean(), weight=rows)

    def compute(self) -> dict[str, float]:
        positive_rate = float(self.observed.compute())
        logloss = float(self.logloss.compute())
        return {"auc": float(self.auc.compute()), "logloss": logloss,
                "ne": normalized_entropy(logloss, positive_rate),
                "calibration": float(self.predicted.compute()) / max(positive_rate, 1e-12),
                "positive_rate": positive_rate}


@register_task("ctr")
class BinaryCTR(TaskSpec):
    name = "ctr"
    primary = "auc"
    score_description = "predicted click probability: the sigmoid of the model's logit"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels)

    def link(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def link_numpy(self, logits: np.ndarray) -> np.ndarray:
        return expit(logits.astype(np.float64))  # float64: exactly 0 or 1 only past |logit| ≈ 37

    def metric_state(self, device: torch.device) -> MetricState:
        return BinaryMetricState(device)

    @property
    def metrics(self) -> list[Metric]:
        return METRICS

    def offline_metrics(self, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        """{rows, positive_rate, auc (None with one class), logloss, ne, calibration} of (N,) labels and scores."""
        from sklearn.metrics import log_loss, roc_auc_score  # here: ~1.5 s of import no training process needs

        rows = len(labels)
        if rows == 0:
            return {"rows": 0}
        positive_rate = float(labels.mean())
        logloss = float(log_loss(labels, scores, labels=[0, 1]))
        defined = 0 < positive_rate < 1
        return {"rows": rows, "positive_rate": positive_rate,
                "auc": float(roc_auc_score(labels, scores)) if defined else None,
                "logloss": logloss, "ne": normalized_entropy(logloss, positive_rate) if defined else None,
                "calibration": float(scores.mean()) / positive_rate if positive_rate > 0 else None}
