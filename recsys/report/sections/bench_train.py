"""Training throughput from benchmarks/results/train.json (benchmarks/bench_train.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.report import html, plots
from recsys.report.bench import files_for, is_number, key_values, machine_line
from recsys.report.context import ReportContext
from recsys.report.sections import Section, register_section

SHOWN = {"runs", "profile", "headline", "machine", "benchmark"}


def _runs(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    runs = data.get("runs")
    items = runs.items() if isinstance(runs, dict) else enumerate(runs) if isinstance(runs, list) else []
    return [(str(rec.get("label", key)), rec) for key, rec in items
            if isinstance(rec, dict) and is_number(rec.get("samples_per_s"))]


@register_section("bench_train", title="Training throughput (benchmark)", order=80)
def render(ctx: ReportContext) -> Section | None:
    if ctx.bench_dir is None:
        return None
    files = files_for(ctx, "train")
    if not files:
        return Section(note=f"No training benchmark results in {ctx.bench_dir} "
                                     "(benchmarks/bench_train.py writes train.json).")
    body, data, notes = "", {}, []
    for file in files:
        runs = _runs(file.data)
        if not runs:
            notes.append(f"{file.name}: no runs with samples_per_s; not shown.")
            continue
        ctx.claimed.add(file.name)
        entry: dict[str, Any] = {"runs": {}}
        rows = []
        for label, rec in runs:
            fields = {k: rec.get(k) for k in ("samples_per_s", "vs_plain", "gflops", "fraction_of_peak", "step_ms")}
            entry["runs"][label] = fields
            rows.append([html.esc(label), f"{fields['samples_per_s']:,.0f}", html.fmt(fields["vs_plain"], 2),
                         html.fmt(fields["gflops"], 1), html.fmt(fields["fraction_of_peak"], 2),
                         html.fmt(fields["step_ms"], 1)])
        fig, (ax,) = plots.figure(1, width=10.0, height=0.3 * len(runs) + 1.2)
        y = np.arange(len(runs))[::-1]
        rates = [rec["samples_per_s"] for _, rec in runs]
        ax.barh(y, rates, color=plots.color(0), height=0.6)
        for yi, rate in zip(y, rates, strict=True):
            ax.text(rate, yi, f" {rate:,.0f}", va="center", fontsize=8)
        ax.set_yticks(y, [label for label, _ in runs], fontsize=8)
        ax.set_xlim(0, max(rates) * 1.15)
        plots.thousands(ax, "x")
        plots.style(ax, f"Training throughput ({file.name})", "samples/s", "", legend=False)
        body += f"<h3>{html.esc(file.name)}</h3><p class=\"meta\">{machine_line(file.data)}</p>"
        body += plots.img(fig, "Training throughput per benchmark run") + html.table(
            ["run", "samples/s", "× plain", "GFLOP/s", "share of GEMM peak", "step (ms)"], rows)
        if isinstance(file.data.get("headline"), dict):
            body += key_values(file.data["headline"], "headline")
            entry["headline"] = {k: v for k, v in file.data["headline"].items() if is_number(v)}
        profile = _profile(file.data.get("profile"))
        if profile:
            body += _profile_plot(profile)
            entry["profile_ms_per_step"] = profile
        rest = sorted(k for k in file.data if k not in SHOWN)
        if rest:
            notes.append(f"{file.name}: not shown: {', '.join(rest)}.")
        data[file.name] = entry
    return Section(body, data, " ".join(notes))


def _profile(profile: Any) -> dict[str, dict[str, float]]:
    """{configuration: {stage: ms per step}} from a ``profile`` block, when it has that shape."""
    if not isinstance(profile, dict):
        return {}
    out = {}
    for name, rec in profile.items():
        stages = rec.get("ms_per_step") if isinstance(rec, dict) else None
        if isinstance(stages, dict):
            numbers = {k: float(v) for k, v in stages.items() if is_number(v)}
            if numbers:
                out[str(name)] = numbers
    return out


def _profile_plot(profile: dict[str, dict[str, float]]) -> str:
    stages = list(dict.fromkeys(s for stages in profile.values() for s in stages))
    names = list(profile)
    fig, (ax,) = plots.figure(1, width=10.0, height=0.55 * len(names) + 2.2)
    y = np.arange(len(names))[::-1]
    left = np.zeros(len(names))
    for stage, stage_color in zip(stages, plots.palette(len(stages)), strict=True):
        widths = np.array([profile[n].get(stage, 0.0) for n in names])
        ax.barh(y, widths, left=left, color=stage_color, height=0.6, label=stage)
        left += widths
    ax.set_yticks(y, names, fontsize=9)
    plots.style(ax, "Training step profile (torch.profiler)", "ms per step", "", legend=False)
    ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
    return plots.img(fig, "Training step profile by stage")
