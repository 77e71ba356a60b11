"""Score distributions of positives and negatives on the test split, one panel per artifact."""

from __future__ import annotations

import math

import numpy as np

from recsys.report import html, plots
from recsys.report.context import ReportContext
from recsys.report.sections import Section, register_section

BINS = 50
PER_ROW = 3


@register_section("scores", title="Score distributions", order=50)
def render(ctx: ReportContext) -> Section | None:
    if ctx.only_retrievers:  # ranked, not scored row by row: the Retrieval section shows them
        return None
    scored_items = list(ctx.with_scores())
    if not scored_items:
        return Section(note=f"No score distributions: no test rows scored. {ctx.no_data_note()}")
    ncols = min(len(scored_items), PER_ROW)
    fig, axes = plots.figure(ncols, math.ceil(len(scored_items) / ncols), width=5.2 if ncols > 1 else 7.0,
                             height=4.0)
    edges = np.linspace(0.0, 1.0, BINS + 1)
    per = {}
    for ax, (_, item, scored) in zip(axes, scored_items, strict=False):
        y, p = scored.labels, scored.scores
        positives, negatives = p[y > 0.5], p[y <= 0.5]
        pos_counts, _ = np.histogram(positives, edges)
        neg_counts, _ = np.histogram(negatives, edges)
        # Densities: the classes are far from balanced, and the shapes are what matters.
        ax.hist(edges[:-1], edges, weights=pos_counts / max(len(positives), 1), histtype="stepfilled", alpha=0.35,
                color=plots.POSITIVE, edgecolor=plots.POSITIVE, linewidth=1.4, label=f"positives ({len(positives):,})")
        ax.hist(edges[:-1], edges, weights=neg_counts / max(len(negatives), 1), histtype="stepfilled", alpha=0.35,
                color=plots.NEGATIVE, edgecolor=plots.NEGATIVE, linewidth=1.4, label=f"negatives ({len(negatives):,})")
        plots.style(ax, f"{item.label}", "predicted probability", "share of the class's rows")
        per[item.label] = {
            "rows": scored.rows, "bin_edges": edges.round(4), "positive_counts": pos_counts,
            "negative_counts": neg_counts,
            "mean_positive": float(positives.mean()) if len(positives) else None,
            "mean_negative": float(negatives.mean()) if len(negatives) else None,
            "median_positive": float(np.median(positives)) if len(positives) else None,
            "median_negative": float(np.median(negatives)) if len(negatives) else None,
        }
    for ax in axes[len(scored_items):]:
        ax.set_visible(False)
    fig.suptitle("Predicted probability by true label (test split)", fontsize=13)
    rows = [[html.esc(label), html.fmt(v["mean_positive"], 4), html.fmt(v["mean_negative"], 4),
             html.fmt(v["median_positive"], 4), html.fmt(v["median_negative"], 4)] for label, v in per.items()]
    body = plots.img(fig, "Score distributions of positives and negatives") + html.table(
        ["artifact", "mean score, positives", "mean score, negatives", "median, positives", "median, negatives"], rows)
    note = " ".join(filter(None, [ctx.scoring_note(), ctx.no_data_note()]))
    return Section(body, {"artifacts": per}, note)
