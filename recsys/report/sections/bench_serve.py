"""Serving latency from benchmarks/results/serve.json: percentiles, throughput and time per request stage.

Expected shape (anything else is skipped with a note): ``runs``: a list of
``{service, precision, candidates, concurrency, p50_ms, p95_ms, p99_ms, throughput_rps, stages_ms: {stage: ms}}``
(service: ``recsys`` or the ``naive`` baseline), plus optional ``floor`` and ``goals`` blocks of numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.report import html, plots
from recsys.report.bench import files_for, is_number, key_values, machine_line
from recsys.report.context import ReportContext
from recsys.report.sections import Section, register_section

SETTINGS = ("service", "precision", "candidates", "concurrency", "batch_size", "model")
LATENCY = ("p50_ms", "p95_ms", "p99_ms")
COLUMNS = (*LATENCY, "mean_ms", "throughput_rps")
BLOCKS = ("floor", "goals")
SHOWN = {"runs", "machine", "benchmark", *BLOCKS}


def _label(run: dict[str, Any]) -> str:
    parts = []
    for key in SETTINGS:
        if key in run and not isinstance(run[key], dict | list):
            value = run[key]
            parts.append(f"{value} cand." if key == "candidates" else f"×{value}" if key == "concurrency"
                         else str(value))
    return " · ".join(parts) or "run"


@register_section("bench_serve", title="Serving latency (benchmark)", order=90)
def render(ctx: ReportContext) -> Section | None:
    if ctx.bench_dir is None:
        return None
    files = files_for(ctx, "serve")
    if not files:
        return Section(note=f"No serving results yet: {ctx.bench_dir} has no serve.json (the serving "
                                     "benchmark writes it; this section then shows latency per stage).")
    body, data, notes = "", {}, []
    for file in files:
        raw = file.data.get("runs")
        runs = [r for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []
        runs = [r for r in runs if any(is_number(r.get(k)) for k in COLUMNS) or isinstance(r.get("stages_ms"), dict)]
        if not runs:
            notes.append(f"{file.name}: no runs with latencies; not shown.")
            continue
        ctx.claimed.add(file.name)
        columns = [c for c in COLUMNS if any(is_number(r.get(c)) for r in runs)]
        extra = sorted({k for r in runs for k in r} - {*SETTINGS, *COLUMNS, "stages_ms", "label"})
        if extra:
            notes.append(f"{file.name}: run fields not shown: {', '.join(extra)}.")
        labels = [str(r.get("label") or _label(r)) for r in runs]
        entry: dict[str, Any] = {"runs": []}
        rows = []
        for label, run in zip(labels, runs, strict=True):
            stages = {k: float(v) for k, v in (run.get("stages_ms") or {}).items() if is_number(v)}
            entry["runs"].append({"label": label, **{k: run[k] for k in SETTINGS if k in run},
                                  **{c: run.get(c) for c in columns}, "stages_ms": stages})
            rows.append([html.esc(label), *(html.fmt(run.get(c), 0 if c == "throughput_rps" else 2)
                                             for c in columns)])
        body += f"<h3>{html.esc(file.name)}</h3><p class=\"meta\">{machine_line(file.data)}</p>"
        body += _plot(entry["runs"], columns)
        body += html.table(["run", *(c.replace("_ms", " (ms)").replace("_rps", " (req/s)") for c in columns)], rows)
        for block in BLOCKS:
            if isinstance(file.data.get(block), dict):
                flat = _flatten(file.data[block])
                entry[block] = {k: v for k, v in flat.items() if is_number(v)}
                body += key_values(flat, html.esc(block))
        rest = sorted(k for k in file.data if k not in SHOWN)
        if rest:
            notes.append(f"{file.name}: not shown: {', '.join(rest)}.")
        data[file.name] = entry
    return Section(body, data, " ".join(notes))


def _flatten(block: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in block.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plot(runs: list[dict[str, Any]], columns: list[str]) -> str:
    # Stages stack up to the request's time; a "total" stage is their sum, not another part.
    stages = list(dict.fromkeys(s for r in runs for s in r["stages_ms"] if s != "total"))
    latency = [c for c in LATENCY if c in columns]
    panels = int(bool(latency)) + int(bool(stages))
    fig, axes = plots.figure(max(panels, 1), width=6.0, height=0.45 * len(runs) + 2.0)
    y = np.arange(len(runs))[::-1]
    names = [r["label"] for r in runs]
    ax_iter = iter(axes)
    if latency:
        ax = next(ax_iter)
        for i, column in enumerate(latency):
            values = [r.get(column) if is_number(r.get(column)) else np.nan for r in runs]
            ax.plot(values, y, "o", color=plots.color(i), label=column.removesuffix("_ms"))
        ax.set_yticks(y, names, fontsize=8)
        ax.set_xlim(left=0)
        plots.style(ax, "Request latency percentiles", "ms", "")
    if stages:
        ax = next(ax_iter)
        left = np.zeros(len(runs))
        for stage, stage_color in zip(stages, plots.palette(len(stages)), strict=True):
            widths = np.array([r["stages_ms"].get(stage, 0.0) for r in runs])
            ax.barh(y, widths, left=left, height=0.6, color=stage_color, label=stage)
            left += widths
        ax.set_yticks(y, names, fontsize=8)
        plots.style(ax, "Time per request stage", "ms per request", "")
    return plots.img(fig, "Serving latency per run and stage")
