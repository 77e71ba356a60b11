"""The model zoo from benchmarks/results/models.json (benchmarks/bench_models.py): every model's test AUC,
gAUC, log loss, size, training and inference speed per dataset as mean ± std over seeds, the published
anchors beside ours, and the ordering check.

Expected shape (a file without ``summary`` is skipped with a note): ``summary``: {dataset: {model:
{metric: {mean, std, n}, seeds: [...]}}}; optional ``anchors`` (rows with dataset, model, auc, ours,
ours_auc), ``ordering.statements`` (sentences), ``budget.description``, ``failed``, ``quick``.
Shown only when the --bench folder holds such a file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.report import html, plots
from recsys.report.bench import files_for, is_number, machine_line
from recsys.report.context import ReportContext
from recsys.report.sections import Section, register_section

# (key in the summary, column header, decimals)
COLUMNS = (("auc", "test AUC", 4), ("gauc", "gAUC", 4), ("logloss", "log loss", 4), ("params", "parameters", 0),
           ("train_samples_per_s", "train samples/s", 0), ("inference_ms_per_1000", "inference ms / 1,000", 2))
SHOWN = {"benchmark", "machine", "summary", "anchors", "anchors_source", "ordering", "budget", "failed", "quick",
         "command", "git_sha", "runs", "datasets", "models", "seeds", "inference", "seconds"}


def _stat(value: Any) -> dict[str, float | None] | None:
    """{mean, std} of a summary cell when it holds a number."""
    if not isinstance(value, dict) or not is_number(value.get("mean")):
        return None
    return {"mean": float(value["mean"]), "std": float(value["std"]) if is_number(value.get("std")) else None}


def _pm(stat: dict[str, float | None] | None, digits: int) -> str:
    if stat is None:
        return "–"
    std = f" ± {html.fmt(stat['std'], digits) if digits else format(stat['std'], ',.0f')}" \
        if stat["std"] is not None else ""
    mean = html.fmt(stat["mean"], digits) if digits else f"{stat['mean']:,.0f}"
    return mean + std


def _cell(stat: dict[str, float | None] | None, key: str, digits: int) -> str:
    if key == "params" and stat is not None:  # the same for every seed: no spread to show
        return f"{stat['mean']:,.0f}"
    return _pm(stat, digits)


def _summary(data: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{dataset: {model: {metric: {mean, std}, "seeds": n}}} of the cells that hold numbers."""
    raw = data.get("summary")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if not isinstance(raw, dict):
        return out
    for dataset, models in raw.items():
        if not isinstance(models, dict):
            continue
        for model, stats in models.items():
            if not isinstance(stats, dict):
                continue
            cells = {key: stat for key, _, _ in COLUMNS if (stat := _stat(stats.get(key))) is not None}
            if cells:
                seeds = stats.get("seeds")
                out.setdefault(str(dataset), {})[str(model)] = {
                    **cells, "seeds": len(seeds) if isinstance(seeds, list) else None}
    return out


@register_section("bench_models", title="Model zoo (benchmark)", order=85)
def render(ctx: ReportContext) -> Section | None:
    files = files_for(ctx, "models") if ctx.bench_dir is not None else []
    if not files:
        return None
    body, data, notes = "", {}, []
    for file in files:
        summary = _summary(file.data)
        if not summary:
            notes.append(f"{file.name}: no summary with numbers; not shown.")
            continue
        ctx.claimed.add(file.name)
        entry: dict[str, Any] = {"summary": summary}
        body += f"<h3>{html.esc(file.name)}</h3><p class=\"meta\">{machine_line(file.data)}</p>"
        if file.data.get("quick"):
            body += html.note("A smoke run (--quick): tiny data and a few steps; these are not results.")
        budget = file.data.get("budget")
        if isinstance(budget, dict) and isinstance(budget.get("description"), str):
            body += f"<p>Budget: {html.esc(budget['description'])}.</p>"
        if isinstance(file.data.get("command"), str):
            body += f"<p class=\"meta\">Command: <code>{html.esc(file.data['command'])}</code></p>"
        body += _plot(summary)
        for dataset, models in summary.items():
            order = sorted(models, key=lambda m: -(models[m].get("auc") or {"mean": -1.0})["mean"])
            rows = [[html.esc(model), html.fmt(models[model]["seeds"]),
                     *(_cell(models[model].get(key), key, digits) for key, _, digits in COLUMNS)] for model in order]
            body += html.table(["model", "seeds", *(header for _, header, _ in COLUMNS)], rows,
                               caption=f"{html.esc(dataset)}: mean ± std over seeds")
        failed = file.data.get("failed")
        if isinstance(failed, list) and failed:
            lines = [f"{f.get('model')} on {f.get('dataset')} seed {f.get('seed')}: {f.get('error')}"
                     for f in failed if isinstance(f, dict)]
            entry["failed"] = lines
            body += html.note(html.esc("Failed runs: " + "; ".join(lines)))
        anchors = _anchors(file.data.get("anchors"), list(summary))
        if anchors:
            entry["anchors"] = anchors
            datasets = list(summary)
            rows = [[html.esc(a["dataset"]), html.esc(a["model"]),
                     html.esc(a["ours"] + (" (its config is the other variant)" if a["variant_matches"] is False
                                           else "")),
                     html.fmt(a["auc"], 4), *(_pm(a["ours_auc"].get(d), 4) for d in datasets)] for a in anchors]
            source = file.data.get("anchors_source")
            body += html.table(["published on", "model", "ours", "published AUC",
                                *(f"our AUC ({html.esc(d)})" for d in datasets)], rows, numeric_from=3,
                               caption=html.esc(source) if isinstance(source, str) else "published anchors")
        ordering = file.data.get("ordering")
        statements = ordering.get("statements") if isinstance(ordering, dict) else None
        if isinstance(statements, list) and statements:
            entry["ordering"] = [str(s) for s in statements]
            rule = ordering.get("rule")
            body += "<h4>Ordering check</h4>" + (f"<p>{html.esc(rule)}.</p>" if isinstance(rule, str) else "")
            body += "<ul>" + "".join(f"<li>{html.esc(s)}</li>" for s in entry["ordering"]) + "</ul>"
        rest = sorted(k for k in file.data if k not in SHOWN)
        if rest:
            notes.append(f"{file.name}: not shown: {', '.join(rest)}.")
        data[file.name] = entry
    if not data:
        return Section(note=" ".join(notes))
    return Section(body, data, " ".join(notes))


def _anchors(raw: Any, datasets: list[str]) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        return []
    out = []
    for row in raw:
        if not isinstance(row, dict) or not is_number(row.get("auc")):
            continue
        ours = row.get("ours_auc") if isinstance(row.get("ours_auc"), dict) else {}
        out.append({"dataset": str(row.get("dataset", "")), "model": str(row.get("model", "")),
                    "auc": float(row["auc"]), "ours": str(row.get("ours", "")),
                    "variant_matches": row.get("ours_variant_matches") if isinstance(
                        row.get("ours_variant_matches"), bool) else None,
                    "ours_auc": {d: stat for d in datasets if (stat := _stat(ours.get(d))) is not None}})
    return out


def _plot(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Test AUC per model with ±1 std bars, one panel per dataset."""
    panels = [(d, m) for d, m in summary.items() if any("auc" in s for s in m.values())]
    if not panels:
        return ""
    rows = max(len(models) for _, models in panels)
    fig, axes = plots.figure(len(panels), width=5.5, height=0.35 * rows + 1.4)
    for ax, (dataset, models) in zip(axes, panels, strict=True):
        names = sorted((m for m in models if "auc" in models[m]), key=lambda m: models[m]["auc"]["mean"])
        means = np.array([models[m]["auc"]["mean"] for m in names])
        stds = np.array([models[m]["auc"]["std"] or 0.0 for m in names])
        y = np.arange(len(names))
        ax.errorbar(means, y, xerr=stds, fmt="o", color=plots.color(0), capsize=3)
        ax.set_yticks(y, names, fontsize=9)
        span = max(float((means + stds).max() - (means - stds).min()), 0.002)
        ax.set_xlim(float((means - stds).min()) - 0.15 * span, float((means + stds).max()) + 0.15 * span)
        plots.style(ax, dataset, "test AUC (mean ± std over seeds)", "", legend=False)
    return plots.img(fig, "Test AUC per model and dataset, mean and standard deviation over seeds")
