"""The trainer's metrics of every artifact side by side (from metrics.json), the best in bold."""

from __future__ import annotations

from typing import Any

from recsys.report import html
from recsys.report.bench import is_number
from recsys.report.context import ReportContext
from recsys.report.metrics import best
from recsys.report.sections import Section, register_section

ROWS = [("test.auc", "test AUC"), ("test.logloss", "test log loss"), ("test.ne", "test normalized entropy"),
        ("test.calibration", "test calibration (mean p / positive rate)"),
        ("valid.auc", "valid AUC"), ("valid.logloss", "valid log loss"), ("valid.ne", "valid normalized entropy"),
        ("valid.calibration", "valid calibration"), ("test.positive_rate", "test positive rate"),
        ("test.rows", "test rows"), ("test.bayes_auc", "Bayes-optimal test AUC (synthetic data)")]


@register_section("metrics", title="Metrics", order=20)
def render(ctx: ReportContext) -> Section:
    per: dict[str, dict[str, Any]] = {}
    for item in ctx.artifacts:
        per[item.label] = {key: item.metrics[key] for key, _ in ROWS if key in item.metrics}
        auc, bayes = item.metrics.get("test.auc"), item.metrics.get("test.bayes_auc")
        if is_number(auc) and is_number(bayes):  # metrics.json writes an undefined AUC as null
            per[item.label]["test.bayes_gap"] = bayes - auc
    rows_shown = [*ROWS, ("test.bayes_gap", "gap to Bayes-optimal AUC")]
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
    note = ("From each artifact's metrics.json, as the trainer computed them on all rows of the split "
            "(torchmetrics AUC; log loss; NE = log loss / entropy of the positive rate; "
            "calibration = mean predicted / observed positive rate).")
    if len(per) > 1:
        note += " Best of the artifacts in bold (calibration: closest to 1)."
    return Section(body, {"artifacts": per, "best": winners}, note)
