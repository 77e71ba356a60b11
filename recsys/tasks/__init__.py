"""Tasks by name: what a model's logit means — its loss, its link to a score, and the metrics that judge it.

The trainer takes its loss from here, the evaluator its metrics, the ranking
service and the report their link (logit → score), the report and the logs the
metrics' names, labels and directions. A schema names its task (``schema.task``);
adding a task is one new file in this package that calls ``register_task``, and
none of those readers changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.errors import RecsysError
from recsys.schema import Schema
from recsys.types import Batch


@dataclass(frozen=True)
class Metric:
    """A metric a task reports: its key in metrics.json (after ``test.``/``valid.``), a short label for logs, a
    longer one for the report, and which way is better (+1 higher, -1 lower, 0 closest to 1)."""

    key: str
    label: str
    direction: int
    description: str = ""
    logged: bool = True  # in the log and summary lines; descriptive figures (a positive rate) are report-only

    @property
    def title(self) -> str:
        return self.description or self.label


class MetricState(ABC):
    """Running metrics over one split, gathered over every process at ``compute`` (torchmetrics states)."""

    @abstractmethod
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class EvalSplit:
    """A split to evaluate a model on: the prepared data directory, the split's name, the device the model is
    on, and ``rows()``: this process's share of the split's rows, batch by batch (a fresh reader)."""

    data_dir: Path
    split: str
    device: torch.device
    rows: Callable[[], Iterable[Batch]]


class TaskSpec(ABC):
    name: str
    primary: str  # the metric that early stopping and model selection follow
    score_description: str  # what a served score is, for the API's documentation

    @abstractmethod
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean training loss of a batch's logits."""

    @abstractmethod
    def link(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits → the scores a user sees (float32, same shape)."""

    @abstractmethod
    def link_numpy(self, logits: np.ndarray) -> np.ndarray:
        """The link in float64 numpy, for offline scoring of many rows."""

    @abstractmethod
    def metric_state(self, device: torch.device) -> MetricState: ...

    @abstractmethod
    def offline_metrics(self, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        """The metrics of scored rows (numpy), for the report's slices; undefined ones are None."""

    @property
    @abstractmethod
    def metrics(self) -> list[Metric]: ...

    def evaluate_model(self, model: nn.Module, split: EvalSplit) -> dict[str, float] | None:
        """The metrics of a whole model on a split, for a task judged on more than its rows one by one (full
        ranking over a catalogue); None (the default): the split's rows are scored batch by batch into
        ``metric_state``. Called on every process under ``torch.no_grad`` with the model in eval mode and
        unwrapped from its data-parallel wrapper: its sharded tables make every call a collective, so every
        process must make the same calls."""
        return None

    def direction(self, key: str) -> int | None:
        """+1, -1 or 0 for a metric key of this task (with or without a split prefix); None if unknown."""
        key = key.rsplit(".", 1)[-1]
        return next((m.direction for m in self.metrics if m.key == key), None)

    def improved(self, metric: str, new: float, old: float | None, min_delta: float = 0.0) -> bool:
        """Whether ``new`` beats ``old`` on ``metric`` by more than ``min_delta``, in the metric's direction."""
        if old is None:
            return True
        direction = self.direction(metric)
        if direction == 0:
            return abs(new - 1) < abs(old - 1) - min_delta
        return (new - old) * (direction or 1) > min_delta

    def summary(self, metrics: dict[str, Any], prefix: str = "") -> str:
        """'auc 0.7812 logloss 0.4401 …' of the metrics present (``prefix``: 'test.' for metrics.json keys)."""
        parts = []
        for metric in self.metrics:
            value = metrics.get(prefix + metric.key)
            if not metric.logged:
                continue
            if isinstance(value, int | float):
                parts.append(f"{metric.label} {value:.4f}")
        return ", ".join(parts)


_TASKS: dict[str, TaskSpec] = {}


def register_task(name: str) -> Callable[[type[TaskSpec]], type[TaskSpec]]:
    def add(cls: type[TaskSpec]) -> type[TaskSpec]:
        if name in _TASKS:
            raise ValueError(f"task '{name}' is registered twice")
        _TASKS[name] = cls()
        return cls
    return add


def task_names() -> list[str]:
    return sorted(_TASKS)


def task_named(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise RecsysError(f"schema: task '{name}' has no task definition yet; known: {', '.join(task_names())}")
    return _TASKS[name]


def task_spec(schema: Schema) -> TaskSpec:
    """The task of the schema's data (``schema.task``)."""
    return task_named(schema.task.value)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
