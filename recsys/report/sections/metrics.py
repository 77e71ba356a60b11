"""The trainer's metrics of every artifact side by side (from metrics.json), the best in bold."""

from __future__ import annotations

from typing import Any

from recsys.report import html
from recsys.report.bench import is_number
from recsys.report.context import ReportContext
from recsys.report.metrics import best
from recsys.report.sections import Section, register_section
from recsys.tasks import task_spec

EXTRA_ROWS = [("test.rows", "test rows"), ("test.users", "test users ranked (retrievers)"),
              ("test.items", "catalogue items (retrievers)"),
              ("test.bayes_auc", "Bayes-optimal test AUC (synthetic data)"),
              ("train.best_epoch", "epoch of the exported weights (best valid)")]


def metric_rows(ctx: ReportContext) -> list[tuple[str, str]]:
    """(metrics.json key, label) of every metric the artifacts' tasks define, test then valid, then the extras."""
    rows: list[tuple[str, str]] = []
    for split in ("test", "valid"):
        for task in dict.fromkeys(task_spec(item.artifact.schema) for item in ctx.artifacts):
            rows += [(f"{split}.{m.key}", f"{split} {m.title}") for m in task.metrics
                     if (f"{split}.{m.key}", f"{split} {m.title}") not in rows]
    return rows + EXTRA_ROWS


@register_section("metrics", title="Metrics", order=20)
def render(ctx: ReportContext) -> Section:
    per: dict[str, dict[str, Any]] = {}
    rows = metric_rows(ctx)
    for item in ctx.artifacts:
        per[item.label] = {key: item.metrics[key] for key, _ in rows if key in item.metrics}
        auc, bayes = item.metrics.get("test.auc"), item.metrics.get("test.bayes_auc")
        if is_number(auc) and is_number(bayes):  # metrics.json writes an undefined AUC as null
            per[item.label]["test.bayes_gap"] = bayes - auc
    rows_shown = [*rows, ("test.bayes_gap", "gap to Bayes-optimal AUC")]
    winners: dict[str, str] = {}
    table_rows = []
    for key, name in rows_shown:
        values = {label: per[label].get(key) for label in per}
        if all(v is None for v in values.values()):
            continue
        winner = best(values, key)
        if winner is not None:
            winners[key] = winner
        cells = [html.fmt_metric(key, v) for v in values.values()]
        cells = [f"<b>{c}</b>" if label == winner else c for label, c in zip(values, cells, strict=True)]
        table_rows.append([name, *cells])
    body = html.table(["metric", *map(html.esc, per)], table_rows)
    tasks = {task_spec(item.artifact.schema).name for item in ctx.artifacts}
    note = "From each artifact's metrics.json, as the trainer computed them on all rows of the split"
    if "ctr" in tasks:
        note += (" (torchmetrics AUC; log loss; NE = log loss / entropy of the positive rate; "
                 "calibration = mean predicted / observed positive rate)")
    if "implicit" in tasks:
        note += ("; retrievers: Recall@K, NDCG@K, HR@K and MRR of a full ranking of the catalogue, training "
                 "items excluded (section Retrieval has the protocol)")
    note += "."
    if len(per) > 1:
        note += " Best of the artifacts in bold (calibration: closest to 1)."
    return Section(body, {"artifacts": per, "best": winners}, note)
