"""Evaluation of a (sharded) model on a split, by its task's metrics (``recsys.tasks``).

``evaluate_split`` asks the task first: a task judged on whole models (the
implicit task's full ranking over the catalogue) evaluates the unwrapped model
itself (``TaskSpec.evaluate_model``); otherwise the split's rows are scored batch
by batch (``evaluate``).

Metrics are torchmetrics objects whose states are gathered from every process at
``compute`` (the AUC over all rows, not rank 0's share). Every process must run
the same number of forward passes, since a sharded forward is a collective; a
process whose share runs out first repeats its last batch and discards the result.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from recsys.data.reader import ParquetReader
from recsys.distributed.sharding import unwrapped
from recsys.errors import RecsysError
from recsys.tasks import EvalSplit, TaskSpec


@torch.no_grad()  # not inference_mode: a DMP-wrapped forward fails under it
def evaluate_split(model: nn.Module, split: EvalSplit, task: TaskSpec) -> dict[str, float]:
    """The task's metrics of the model on the split, across all processes (every process calls it)."""
    was_training = model.training
    model.eval()
    try:
        metrics = task.evaluate_model(unwrapped(model), split)
    finally:
        model.train(was_training)
    if metrics is not None:
        return metrics
    reader = split.rows()
    assert isinstance(reader, ParquetReader)
    return evaluate(model, reader, split.device, task)


@torch.no_grad()  # not inference_mode: a DMP-wrapped forward fails under it
def evaluate(model: nn.Module, reader: ParquetReader, device: torch.device, task: TaskSpec) -> dict[str, float]:
    """The task's metrics and ``rows`` over the reader's split, across all processes."""
    was_training = model.training
    model.eval()
    state = task.metric_state(device)
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
        state.update(model(batch), batch.labels)
    model.train(was_training)
    metrics = state.compute()
    rows = torch.tensor([float(reader.rows)], device=device)
    if dist.is_initialized():
        dist.all_reduce(rows)
    return {**metrics, "rows": int(rows.item())}
