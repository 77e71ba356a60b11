"""Training curves from the run's metrics.jsonl (RUN/metrics.jsonl beside RUN/artifact)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from recsys.report import html, plots
from recsys.report.context import METRICS_LOG, ReportContext
from recsys.report.sections import Section, register_section

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
        steps, loss = _series(records, "train", "loss")
        valid_steps, valid_auc = _series(records, "valid", "auc")
        rate_steps, rate = _series(records, "train", "samples_per_s")
        loss_ax.plot(steps, loss, color=color, linewidth=1.5, label=item.label)
        auc_ax.plot(valid_steps, valid_auc, color=color, marker="o", linewidth=1.5, label=item.label)
        rate_ax.plot(rate_steps, rate, color=color, linewidth=1.5, label=item.label)
        test = [r for r in records if r.get("split") == "test" and isinstance(r.get("auc"), int | float)]
        if test:
            auc_ax.plot([test[-1]["step"]], [test[-1]["auc"]], color=color, marker="*", markersize=11,
                        linestyle="none", label=f"{item.label} test")
        per[item.label] = {
            "log": str(path),
            "train_loss": {"step": steps, "loss": loss},
            "valid_auc": {"step": valid_steps, "auc": valid_auc},
            "samples_per_s": {"step": rate_steps, "samples_per_s": rate},
            "final_train_loss": float(loss[-1]) if len(loss) else None,
            "final_valid_auc": float(valid_auc[-1]) if len(valid_auc) else None,
        }
    if not per:
        return Section(note=" ".join(notes) or "No training logs.")
    plots.style(loss_ax, "Train loss (mean per log window)", "step", "log loss")
    plots.style(auc_ax, "Validation AUC per epoch (★ test)", "step", "AUC")
    plots.style(rate_ax, "Training throughput", "step", "samples/s")
    auc_ax.set_xlim(loss_ax.get_xlim())
    rate_ax.set_ylim(bottom=0)
    plots.thousands(rate_ax)
    rows = [[html.esc(label), html.fmt(v["final_train_loss"], 4), html.fmt(v["final_valid_auc"], 4),
             html.fmt(len(v["train_loss"]["step"]))] for label, v in per.items()]
    body = plots.img(fig, "Training curves") + html.table(
        ["artifact", "last train loss", "last valid AUC", "points logged"], rows)
    return Section(body, {"artifacts": per}, " ".join(notes))
