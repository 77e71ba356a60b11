"""One optimisation step, shared by the trainer and the benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer

from recsys.distributed.sharding import loss_scale
from recsys.types import Batch


def train_step(model: nn.Module, optimizer: CombinedOptimizer, batch: Batch, world_size: int) -> torch.Tensor:
    """Forward, backward (the fused sparse update happens inside it), dense update; returns the local mean loss.

    ``zero_grad`` comes first because it also pushes the current learning rate into
    the fused embedding kernels, which update during this step's backward.
    """
    optimizer.zero_grad()
    logits = model(batch)  # (B,)
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
    (loss * loss_scale(world_size)).backward()
    optimizer.step()
    return loss.detach()
