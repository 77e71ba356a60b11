"""ROC and precision-recall curves of the rescored test split (scikit-learn), one line per artifact."""

from __future__ import annotations

from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from recsys.report import html, plots
from recsys.report.context import ReportContext
from recsys.report.metrics import best
from recsys.report.sections import Section, register_section

CURVE_POINTS = 300  # per curve, for the plot and report.json; the metrics use every row


@register_section("curves", title="ROC and precision-recall curves", order=30)
def render(ctx: ReportContext) -> Section | None:
    if ctx.only_retrievers:  # ranked, not scored row by row: the Retrieval section shows them
        return None
    fig, (roc_ax, pr_ax) = plots.figure(2)
    per = {}
    for index, item, scored in ctx.with_scores():
        y, p = scored.labels, scored.scores
        if not 0 < y.mean() < 1:
            per[item.label] = {"rows": scored.rows, "auc": None, "note": "one class only"}
            continue
        fpr, tpr, _ = roc_curve(y, p)
        precision, recall, _ = precision_recall_curve(y, p)
        auc, ap = float(roc_auc_score(y, p)), float(average_precision_score(y, p))
        fpr, tpr = plots.thin(fpr, tpr, CURVE_POINTS)
        recall, precision = plots.thin(recall[::-1], precision[::-1], CURVE_POINTS)
        color = plots.color(index)
        roc_ax.plot(fpr, tpr, color=color, linewidth=1.8, label=f"{item.label} (AUC {auc:.4f})")
        pr_ax.plot(recall, precision, color=color, linewidth=1.8, label=f"{item.label} (AP {ap:.4f})")
        pr_ax.axhline(float(y.mean()), color=color, linestyle=":", linewidth=1)
        per[item.label] = {
            "rows": scored.rows, "auc": auc, "average_precision": ap, "positive_rate": float(y.mean()),
            "metrics_json_auc": item.metrics.get("test.auc"),
            "roc": {"fpr": fpr.round(5), "tpr": tpr.round(5)},
            "pr": {"recall": recall.round(5), "precision": precision.round(5)},
        }
    if not per:
        return Section(note=f"No curves: no test rows scored. {ctx.no_data_note()}")
    roc_ax.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1, label="chance")
    plots.style(roc_ax, "ROC curve (test split)", "false positive rate", "true positive rate")
    pr_ax.set_ylim(0, 1.02)
    plots.style(pr_ax, "Precision-recall curve (test split; dotted: positive rate)", "recall", "precision")
    for ax in (roc_ax, pr_ax):
        ax.set_xlim(0, 1)
    winners = {m: best({k: v.get(m) for k, v in per.items()}, m) for m in ("auc", "average_precision")}

    def cell(label: str, metric: str) -> str:
        text = html.fmt_metric(metric, per[label].get(metric))
        return f"<b>{text}</b>" if winners[metric] == label else text

    rows = [[html.esc(label), html.fmt(v["rows"]), cell(label, "auc"),
             html.fmt_metric("auc", v.get("metrics_json_auc")), cell(label, "average_precision")]
            for label, v in per.items()]
    body = plots.img(fig, "ROC and precision-recall curves") + html.table(
        ["artifact", "rows scored", "AUC (rescored)", "AUC (metrics.json)", "average precision"], rows)
    note = " ".join(filter(None, [ctx.scoring_note(), ctx.no_data_note()]))
    return Section(body, {"artifacts": per, "best": winners}, note)
