"""Model comparison: AUC against embedding bytes, with the Pareto front, from any results file that has it.

A results file adds points with records (under ``runs``, ``models`` or ``results``, or at the top level)
that carry an AUC (``auc``, ``test_auc`` or ``test.auc``) and ``embedding_bytes``, named by ``label``,
``model``, ``name`` or ``scheme``. The report's own artifacts are points too. A file an earlier section
claimed (embeddings.json, whose runs span datasets) is left to that section.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter

from recsys.report import html, plots
from recsys.report.bench import is_number
from recsys.report.context import ReportContext
from recsys.report.sections import Section, register_section

AUC_KEYS = ("auc", "test_auc", "test.auc")
NAME_KEYS = ("label", "model", "name", "scheme")
LISTS = ("runs", "models", "results")


def _records(data: Any) -> list[dict[str, Any]]:
    candidates: list[Any] = []
    if isinstance(data, list):
        candidates = data
    elif isinstance(data, dict):
        for key in LISTS:
            value = data.get(key)
            candidates += value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else []
    out = []
    for rec in candidates:
        if not isinstance(rec, dict):
            continue
        auc = next((rec[k] for k in AUC_KEYS if is_number(rec.get(k))), None)
        if auc is not None and is_number(rec.get("embedding_bytes")):
            name = next((str(rec[k]) for k in NAME_KEYS if rec.get(k)), "run")
            out.append({"name": name, "auc": float(auc), "embedding_bytes": float(rec["embedding_bytes"])})
    return out


def pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both fewer bytes and higher AUC, by increasing bytes."""
    front, best_auc = [], -np.inf
    for point in sorted(points, key=lambda p: (p["embedding_bytes"], -p["auc"])):
        if point["auc"] > best_auc:
            front.append(point)
            best_auc = point["auc"]
    return front


@register_section("comparison", title="Model comparison: AUC vs embedding bytes", order=100)
def render(ctx: ReportContext) -> Section:
    points: list[dict[str, Any]] = []
    for file in ctx.bench.values():
        if file.name in ctx.claimed:  # a dedicated section (bench_embeddings) shows it, per dataset
            continue
        found = _records(file.data)
        if found:
            ctx.claimed.add(file.name)
            points += [{**p, "source": file.name} for p in found]
    from_results = len(points)
    for item in ctx.artifacts:
        if is_number(item.metrics.get("test.auc")):
            points.append({"name": item.label, "auc": float(item.metrics["test.auc"]),
                           "embedding_bytes": float(item.model_sizes["embedding_bytes"]), "source": "this report"})
    if not from_results and len(points) < 2:
        where = f" in {ctx.bench_dir}" if ctx.bench_dir else " (no --bench given)"
        return Section(note=f"No comparison results yet{where}: a results file whose runs carry an AUC and "
                       "embedding_bytes (e.g. an embedding-compression benchmark) adds a table and the Pareto plot "
                       "here; so does giving two or more --artifact.")
    front = pareto(points)
    on_front = {id(p) for p in front}
    fig, (ax,) = plots.figure(1, width=8.0, height=5.0)
    sources = list(dict.fromkeys(p["source"] for p in points))
    for i, source in enumerate(sources):
        mine = [p for p in points if p["source"] == source]
        ax.scatter([p["embedding_bytes"] / 2**20 for p in mine], [p["auc"] for p in mine], s=36,
                   color=plots.color(i), label=source, zorder=3)
        for p in mine:
            ax.annotate(p["name"], (p["embedding_bytes"] / 2**20, p["auc"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ax.step([p["embedding_bytes"] / 2**20 for p in front], [p["auc"] for p in front], where="post",
            color="#444444", linestyle="--", linewidth=1, label="Pareto front")
    ax.set_xscale("log")
    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):  # 6, not 6×10⁰
        axis(FuncFormatter(lambda value, _: f"{value:g}"))
    plots.style(ax, "Test AUC against embedding table size", "embedding tables (MiB, log scale)", "test AUC")
    rows = [[html.esc(p["name"]), html.esc(p["source"]), html.fmt(p["embedding_bytes"] / 2**20, 2),
             html.fmt(p["auc"], 4), "yes" if id(p) in on_front else ""]
            for p in sorted(points, key=lambda p: -p["auc"])]
    body = plots.img(fig, "AUC against embedding bytes") + html.table(
        ["model", "source", "embedding MiB", "test AUC", "Pareto"], rows, numeric_from=2)
    for p in points:
        p["pareto"] = id(p) in on_front
    note = "" if from_results else ("No benchmark results with AUC and embedding bytes yet; the points are this "
                                    "report's artifacts.")
    return Section(body, {"points": points}, note)
