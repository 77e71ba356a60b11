"""Evaluation of a (sharded) model on a split: AUC, log loss, normalized entropy, calibration.

Metrics are torchmetrics objects whose states are gathered from every process at
``compute`` (the AUC over all rows, not rank 0's share). Every process must run
the same number of forward passes, since a sharded forward is a collective; a
process whose share runs out first repeats its last batch and discards the result.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC

from recsys.data.reader import ParquetReader
from recsys.errors import RecsysError


def normalized_entropy(logloss: float, positive_rate: float) -> float:
    """Log loss divided by the entropy of always predicting the base rate (He et al., 2014)."""
    p = min(max(positive_rate, 1e-12), 1 - 1e-12)
    return logloss / -(p * math.log(p) + (1 - p) * math.log(1 - p))


@torch.no_grad()  # not inference_mode: a DMP-wrapped forward fails under it
def evaluate(model: nn.Module, reader: ParquetReader, device: torch.device) -> dict[str, float]:
    """{auc, logloss, ne, calibration, rows, positive_rate} over the reader's split, across all processes."""
    was_training = model.training
    model.eval()
    auc = BinaryAUROC(thresholds=None).to(device)
    logloss, predicted, observed = MeanMetric().to(device), MeanMetric().to(device), MeanMetric().to(device)
    steps = torch.tensor([reader.num_batches], device=device)
    if dist.is_initialized():
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    batches = iter(reader)
    last = None
    for _ in range(int(steps.item())):
        batch = next(batches, None)
        if batch is None:
            if last is None:
                raise RecsysError(f"{reader.data_dir / reader.split}: {reader.total_rows} rows cannot be "
                                  f"evaluated by {reader.world_size} processes")
            model(last.to(device))  # keeps the collectives in step with the other processes
            continue
        last = batch = batch.to(device)
        logits = model(batch).float()  # (B,)
        labels = batch.labels.float()
        probabilities = torch.sigmoid(logits)
        auc.update(probabilities, labels.long())
        rows = labels.numel()
        logloss.update(F.binary_cross_entropy_with_logits(logits, labels, reduction="mean"), weight=rows)
        predicted.update(probabilities.mean(), weight=rows)
        observed.update(labels.mean(), weight=rows)
    model.train(was_training)
    positive_rate = float(observed.compute())
    mean_logloss = float(logloss.compute())
    rows = torch.tensor([float(reader.rows)], device=device)
    if dist.is_initialized():
        dist.all_reduce(rows)
    return {
        "auc": float(auc.compute()),
        "logloss": mean_logloss,
        "ne": normalized_entropy(mean_logloss, positive_rate),
        "calibration": float(predicted.compute()) / max(positive_rate, 1e-12),
        "positive_rate": positive_rate,
        "rows": int(rows.item()),
    }
