"""Training curves from the run's metrics.jsonl (RUN/metrics.jsonl beside RUN/artifact)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from recsys.report import html, plots
from recsys.report.context import METRICS_LOG, ReportContext
from recsys.report.sections import Section, register_section
from recsys.tasks import task_spec

MAX_POINTS = 400  # per curve in the plot and report.json


def read_log(text: str) -> tuple[list[dict[str, Any]], int]:
    """The JSON object lines of a metrics log, and how many lines were not such objects."""
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int | float):
            records.append(record)
        else:
            bad += 1
    return records, bad


def _series(records: list[dict[str, Any]], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in records if r.get("split") == split
              and isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = np.array(points, dtype=float).T
    return plots.thin(steps, values, MAX_POINTS)


@register_section("training", title="Training curves", order=70)
def render(ctx: ReportContext) -> Section:
    fig, (loss_ax, auc_ax, rate_ax) = plots.figure(3, width=4.6, height=3.9)
    per: dict[str, Any] = {}
    notes = []
    primaries: dict[str, str] = {}  # each artifact's task's primary metric (auc, recall@20): key → label
    for index, item in enumerate(ctx.artifacts):
        path = item.run_dir / METRICS_LOG
        try:
            records, bad = read_log(path.read_text())
        except (OSError, UnicodeDecodeError):
            notes.append(f"{item.label}: no {path}.")
            continue
        if bad:
            notes.append(f"{item.label}: skipped {bad} unreadable line(s) of {path}.")
        color = plots.color(index)
        task = task_spec(item.artifact.schema)
        primary = task.primary
        primaries[primary] = next((m.label for m in task.metrics if m.key == primary), primary)
        steps, loss = _series(records, "train", "loss")
        valid_steps, valid_auc = _series(records, "valid", primary)
        rate_steps, rate = _series(records, "train", "samples_per_s")
        loss_ax.plot(steps, loss, color=color, linewidth=1.5, label=item.label)
        auc_ax.plot(valid_steps, valid_auc, color=color, marker="o", linewidth=1.5, label=item.label)
        rate_ax.plot(rate_steps, rate, color=color, linewidth=1.5, label=item.label)
        test = [r for r in records if r.get("split") == "test" and isinstance(r.get(primary), int | float)]
        if test:
            auc_ax.plot([test[-1]["step"]], [test[-1][primary]], color=color, marker="*", markersize=11,
                        linestyle="none", label=f"{item.label} test")
        per[item.label] = {
            "log": str(path),
            "train_loss": {"step": steps, "loss": loss},
            "valid_primary": {"metric": primary, "step": valid_steps, "value": valid_auc},
            "samples_per_s": {"step": rate_steps, "samples_per_s": rate},
            "final_train_loss": float(loss[-1]) if len(loss) else None,
            "final_valid": float(valid_auc[-1]) if len(valid_auc) else None,
        }
    if not per:
        return Section(note=" ".join(notes) or "No training logs.")
    shown = " / ".join(primaries.values())
    plots.style(loss_ax, "Train loss (mean per log window)", "step", "loss")
    plots.style(auc_ax, f"Validation {shown} per epoch (★ test)", "step", shown)
    plots.style(rate_ax, "Training throughput", "step", "samples/s")
    auc_ax.set_xlim(loss_ax.get_xlim())
    rate_ax.set_ylim(bottom=0)
    plots.thousands(rate_ax)
    rows = [[html.esc(label), html.fmt(v["final_train_loss"], 4), html.fmt(v["final_valid"], 4),
             html.esc(primaries[v["valid_primary"]["metric"]]), html.fmt(len(v["train_loss"]["step"]))]
            for label, v in per.items()]
    body = plots.img(fig, "Training curves") + html.table(
        ["artifact", "last train loss", "last valid value", "of", "points logged"], rows, numeric_from=1)
    return Section(body, {"artifacts": per}, " ".join(notes))
