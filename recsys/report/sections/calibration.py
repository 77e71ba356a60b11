"""Reliability diagram: observed positive rate against mean predicted probability, in quantile bins."""

from __future__ import annotations

import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss
from torchmetrics.functional.classification import binary_calibration_error

from recsys.report import html, plots
from recsys.report.context import ReportContext
from recsys.report.metrics import best
from recsys.report.sections import Section, register_section

BINS = 20


@register_section("calibration", title="Calibration", order=40)
def render(ctx: ReportContext) -> Section | None:
    if ctx.only_retrievers:  # ranked, not scored row by row: the Retrieval section shows them
        return None
    fig, (ax,) = plots.figure(1, width=7.0, height=5.4)
    per = {}
    top = 0.0
    for index, item, scored in ctx.with_scores():
        y, p = scored.labels, scored.scores
        # Quantile bins: every point averages the same number of rows, however skewed the scores are.
        observed, predicted = calibration_curve(y, p, n_bins=BINS, strategy="quantile")
        ece = float(binary_calibration_error(torch.from_numpy(p), torch.from_numpy(y).long(), n_bins=15, norm="l1"))
        per[item.label] = {
            "rows": scored.rows, "bins": len(predicted), "mean_predicted": predicted, "observed_rate": observed,
            "calibration": float(p.mean() / y.mean()) if y.mean() > 0 else None,
            "ece": ece, "brier": float(brier_score_loss(y, p)),
        }
        ax.plot(predicted, observed, marker="o", markersize=4, linewidth=1.6, color=plots.color(index),
                label=f"{item.label} (ECE {ece:.4f})")
        top = max(top, float(predicted.max()), float(observed.max()))
    if not per:
        return Section(note=f"No calibration plot: no test rows scored. {ctx.no_data_note()}")
    limit = min(1.0, top * 1.05 + 0.01)
    ax.plot([0, limit], [0, limit], color="#888888", linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.set_xlim(0, limit)
    ax.set_ylim(0, limit)
    ax.set_aspect("equal")
    plots.style(ax, f"Reliability diagram (test split, {BINS} quantile bins)", "mean predicted probability",
                "observed positive rate")
    winners = {m: best({k: v[m] for k, v in per.items()}, m) for m in ("calibration", "ece", "brier")}

    def cell(label: str, metric: str, digits: int) -> str:
        text = html.fmt(per[label][metric], digits)
        return f"<b>{text}</b>" if winners[metric] == label else text

    rows = [[html.esc(label), cell(label, "calibration", 3), cell(label, "ece", 4), cell(label, "brier", 4)]
            for label in per]
    body = plots.img(fig, "Reliability diagram") + html.table(
        ["artifact", "calibration (mean p / rate)", "expected calibration error (15 bins)", "Brier score"], rows)
    note = " ".join(filter(None, [ctx.scoring_note(), ctx.no_data_note()]))
    return Section(body, {"artifacts": per, "best": winners}, note)
