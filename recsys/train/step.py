"""One optimisation step, shared by the trainer and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.keyed import CombinedOptimizer

from recsys.distributed.sharding import loss_scale
from recsys.precision import Resolved, autocast, to_fp32
from recsys.tasks import TaskSpec
from recsys.types import Batch


def scaled_loss(model: nn.Module, batch: Batch, world_size: int, task: TaskSpec,
                precision: Resolved = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to differentiate, local mean loss to report): the forward both step paths share. Under bf16 the
    forward is autocast and the loss computed on fp32 logits (``recsys.precision``)."""
    with autocast(precision, batch.labels.device):
        logits = model(batch)
    loss = task.loss(to_fp32(logits), batch.labels)
    return loss * loss_scale(world_size), loss.detach()


def train_step(model: nn.Module, optimizer: CombinedOptimizer, batch: Batch, world_size: int,
               task: TaskSpec, precision: Resolved = "fp32") -> torch.Tensor:
    """Forward, backward (the fused sparse update happens inside it), dense update; returns the local mean loss.

    ``zero_grad`` comes first because it also pushes the current learning rate into
    the fused embedding kernels, which update during this step's backward.
    """
    optimizer.zero_grad()
    scaled, loss = scaled_loss(model, batch, world_size, task, precision)
    scaled.backward()
    optimizer.step()
    return loss


def pipelined_steps(model: nn.Module, optimizer: CombinedOptimizer, batches: Iterator[Batch], world_size: int,
                    device: torch.device, task: TaskSpec, precision: Resolved = "fp32") -> Iterator[torch.Tensor]:
    """The same steps through torchrec's ``TrainPipelineSparseDist``: while batch i computes, batch i+1 is
    copied to the device and its ids are sent to the processes that own their tables. Yields each local
    mean loss; detaches the pipeline (restoring the model's forward) when done or closed."""
    pipeline = TrainPipelineSparseDist(model, optimizer, device,
                                       custom_model_fwd=partial(scaled_loss, model, world_size=world_size, task=task,
                                                                precision=precision))
    try:
        while True:
            try:
                yield pipeline.progress(batches)
            except StopIteration:
                return
    finally:
        pipeline.detach()
