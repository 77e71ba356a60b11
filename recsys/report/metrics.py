"""Which way each metric is better, for bolding the best artifact: the tasks' metrics, and the report's own."""

from __future__ import annotations

import numpy as np

from recsys.tasks import task_named, task_names

# +1 higher, -1 lower, 0 closest to 1
DIRECTION = {metric.key: metric.direction for name in task_names() for metric in task_named(name).metrics}
DIRECTION |= {"average_precision": 1, "brier": -1, "ece": -1}


def best(values: dict[str, float | None], metric: str) -> str | None:
    """The label with the best value of ``metric`` (by ``DIRECTION``); None when fewer than two compare."""
    finite = {k: v for k, v in values.items() if isinstance(v, int | float) and np.isfinite(v)}
    direction = DIRECTION.get(metric.rsplit(".", 1)[-1])
    if len(finite) < 2 or direction is None:
        return None
    if direction == 0:
        return min(finite, key=lambda k: abs(finite[k] - 1))
    return max(finite, key=lambda k: direction * finite[k])
