"""AUC vs embedding bytes from benchmarks/results/embeddings.json (benchmarks/bench_embeddings.py): every
embedding scheme at every ratio against full tables, the Pareto front of test AUC over measured table bytes per
dataset and model, training speed beside full tables, the qr-vs-hash claim of Shi et al. (KDD 2020) and, when
measured, int8/int4 serving.

Expected shape (a file without a usable ``summary`` is skipped with a note): ``summary``: a list of rows with
``dataset``, ``model``, ``label``, ``ratio`` and ``{mean, std}`` cells ``auc``, ``embedding_bytes``,
``train_samples_per_s``; optional ``seeds``, ``claims.verdicts`` (with ``statement``), ``serving.runs``,
``serving.note``, ``failed``, ``skipped_schemes``, ``budget``, ``command``, ``quick``. The Pareto front is
recomputed here from the means. Files this section shows are claimed, so the generic comparison section does
not mix their datasets into one plot.
"""

from __future__ import annotations

from typing import Any

from matplotlib.ticker import FuncFormatter

from recsys.report import html, plots
from recsys.report.bench import files_for, is_number, machine_line
from recsys.report.context import ReportContext
from recsys.report.sections import Section, register_section
from recsys.report.sections.comparison import pareto

FULL = "full"


def _stat(value: Any) -> dict[str, float | None] | None:
    if not isinstance(value, dict) or not is_number(value.get("mean")):
        return None
    return {"mean": float(value["mean"]), "std": float(value["std"]) if is_number(value.get("std")) else None}


def _rows(raw: Any) -> list[dict[str, Any]]:
    """The summary rows that have an AUC and bytes, with the Pareto front and the full-table reference marked."""
    if not isinstance(raw, list):
        return []
    rows = []
    for row in raw:
        if not isinstance(row, dict) or not is_number(row.get("ratio")):
            continue
        auc, size = _stat(row.get("auc")), _stat(row.get("embedding_bytes"))
        if auc is None or size is None:
            continue
        seeds = row.get("seeds")
        rows.append({"dataset": str(row.get("dataset", "")), "model": str(row.get("model", "")),
                     "label": str(row.get("label", "")), "ratio": float(row["ratio"]), "auc": auc,
                     "embedding_bytes": size, "samples_per_s": _stat(row.get("train_samples_per_s")),
                     "seeds": len(seeds) if isinstance(seeds, list) else None})
    for key in dict.fromkeys((r["dataset"], r["model"]) for r in rows):
        mine = [r for r in rows if (r["dataset"], r["model"]) == key]
        points = [{"auc": r["auc"]["mean"], "embedding_bytes": r["embedding_bytes"]["mean"], "row": r} for r in mine]
        front = {id(p["row"]) for p in pareto(points)}
        full = next((r for r in mine if r["label"] == FULL), None)
        for r in mine:
            r["pareto"] = id(r) in front
            r["auc_vs_full"] = r["auc"]["mean"] - full["auc"]["mean"] if full else None
            r["smaller"] = full["embedding_bytes"]["mean"] / r["embedding_bytes"]["mean"] if full else None
            r["speed_vs_full"] = (r["samples_per_s"]["mean"] / full["samples_per_s"]["mean"]
                                  if full and r["samples_per_s"] and full["samples_per_s"] else None)
    return rows


def _pm(stat: dict[str, float | None] | None, digits: int) -> str:
    if stat is None:
        return "–"
    number = (lambda v: f"{v:,.0f}") if digits == 0 else (lambda v: html.fmt(v, digits))
    return number(stat["mean"]) + (f" ± {number(stat['std'])}" if stat["std"] is not None else "")


@register_section("bench_embeddings", title="AUC vs embedding bytes (embedding schemes benchmark)", order=86)
def render(ctx: ReportContext) -> Section | None:
    files = files_for(ctx, "embeddings") if ctx.bench_dir is not None else []
    if not files:
        return None
    body, data, notes = "", {}, []
    for file in files:
        rows = _rows(file.data.get("summary"))
        if not rows:
            notes.append(f"{file.name}: no summary rows with an AUC and embedding bytes; not shown.")
            continue
        ctx.claimed.add(file.name)
        entry: dict[str, Any] = {"points": [{k: v for k, v in r.items()} for r in rows]}
        body += f"<h3>{html.esc(file.name)}</h3><p class=\"meta\">{machine_line(file.data)}</p>"
        if file.data.get("quick"):
            body += html.note("A smoke run (--quick): tiny data and a few steps; these are not results.")
        if isinstance(file.data.get("budget"), str):
            body += f"<p>Budget: {html.esc(file.data['budget'])}.</p>"
        if isinstance(file.data.get("command"), str):
            body += f"<p class=\"meta\">Command: <code>{html.esc(file.data['command'])}</code></p>"
        body += _plot(rows)
        for dataset, model in dict.fromkeys((r["dataset"], r["model"]) for r in rows):
            mine = sorted((r for r in rows if (r["dataset"], r["model"]) == (dataset, model)),
                          key=lambda r: (-r["embedding_bytes"]["mean"], r["label"]))
            cells = [[html.esc(r["label"]), "1" if r["label"] == FULL else f"1/{r['ratio']:g}", html.fmt(r["seeds"]),
                      html.fmt(r["embedding_bytes"]["mean"] / 2**20, 3),
                      "–" if r["smaller"] is None else f"{r['smaller']:.1f}", _pm(r["auc"], 4),
                      "–" if r["auc_vs_full"] is None else f"{r['auc_vs_full']:+.4f}", _pm(r["samples_per_s"], 0),
                      "–" if r["speed_vs_full"] is None else f"{r['speed_vs_full']:.2f}×",
                      "yes" if r["pareto"] else ""] for r in mine]
            body += html.table(["scheme", "ratio", "seeds", "embedding MiB (measured)", "× smaller", "test AUC",
                                "Δ AUC vs full", "train samples/s", "vs full", "Pareto"], cells, numeric_from=1,
                               caption=f"{html.esc(dataset)}, {html.esc(model)}: mean ± std over seeds")
        claims = file.data.get("claims")
        verdicts = claims.get("verdicts") if isinstance(claims, dict) else None
        statements = [str(v["statement"]) for v in verdicts or [] if isinstance(v, dict) and v.get("statement")]
        if statements:
            entry["claims"] = statements
            title = claims.get("claim") if isinstance(claims.get("claim"), str) else "the claim"
            body += f"<h4>Claim: {html.esc(title)}</h4>"
            if isinstance(claims.get("rule"), str):
                body += f"<p>{html.esc(claims['rule'])}.</p>"
            body += "<ul>" + "".join(f"<li>{html.esc(s)}</li>" for s in statements) + "</ul>"
        body += _serving(file.data.get("serving"), entry)
        skipped = file.data.get("skipped_schemes")
        if isinstance(skipped, dict) and skipped:
            entry["skipped_schemes"] = {str(k): str(v) for k, v in skipped.items()}
            body += html.note(html.esc("Skipped schemes: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())))
        failed = file.data.get("failed")
        if isinstance(failed, list) and failed:
            lines = [f"{f.get('model')} {f.get('label')} 1/{f.get('ratio')} on {f.get('dataset')} seed "
                     f"{f.get('seed')}: {f.get('error')}" for f in failed if isinstance(f, dict)]
            entry["failed"] = lines
            body += html.note(html.esc("Failed runs: " + "; ".join(lines)))
        data[file.name] = entry
    if not data:
        return Section(note=" ".join(notes))
    return Section(body, data, " ".join(notes))


def _serving(raw: Any, entry: dict[str, Any]) -> str:
    """The int8/int4 table: AUC loss against fp32 and lookup speed, per full-table run."""
    if not isinstance(raw, dict):
        return ""
    out = "<h4>Serving precision</h4>" + (f"<p>{html.esc(raw['note'])}</p>" if isinstance(raw.get("note"), str)
                                          else "")
    cells, kept = [], []
    for run in raw.get("runs") or []:
        if not isinstance(run, dict) or not isinstance(run.get("precisions"), dict):
            continue
        for precision, r in run["precisions"].items():
            if not isinstance(r, dict) or not is_number(r.get("auc")):
                continue
            kept.append({"dataset": run.get("dataset"), "model": run.get("model"), "seed": run.get("seed"),
                         "precision": precision, **{k: v for k, v in r.items() if is_number(v)}})
            cells.append([html.esc(run.get("dataset")), html.esc(run.get("model")), html.fmt(run.get("seed")),
                          html.esc(precision), html.fmt(r["auc"], 4),
                          f"{r['auc_loss']:+.4f}" if is_number(r.get("auc_loss")) else "–",
                          html.fmt(r["table_bytes"] / 2**20, 3) if is_number(r.get("table_bytes")) else "–",
                          html.fmt(r.get("lookup_ms_per_1000"), 3),
                          f"{r['lookup_speedup']:.2f}×" if is_number(r.get("lookup_speedup")) else "–"])
    if cells:
        entry["serving"] = kept
        out += html.table(["dataset", "model", "seed", "precision", "test AUC", "AUC loss vs fp32", "table MiB",
                           "lookup ms / 1,000", "lookup speed-up"], cells, numeric_from=4)
    return out


def _plot(rows: list[dict[str, Any]]) -> str:
    """Test AUC against measured table MiB (log), one line per scheme across ratios, one panel per dataset and
    model; full tables a star, the Pareto front dashed."""
    panels = list(dict.fromkeys((r["dataset"], r["model"]) for r in rows))
    fig, axes = plots.figure(len(panels), width=6.0, height=4.4)
    labels = sorted({r["label"] for r in rows if r["label"] != FULL})
    for ax, (dataset, model) in zip(axes, panels, strict=True):
        mine = [r for r in rows if (r["dataset"], r["model"]) == (dataset, model)]
        for i, label in enumerate(labels):
            line = sorted((r for r in mine if r["label"] == label), key=lambda r: r["embedding_bytes"]["mean"])
            if line:
                ax.errorbar([r["embedding_bytes"]["mean"] / 2**20 for r in line], [r["auc"]["mean"] for r in line],
                            yerr=[r["auc"]["std"] or 0.0 for r in line], fmt="o-", color=plots.color(i), capsize=3,
                            label=label, markersize=5)
        for r in (r for r in mine if r["label"] == FULL):
            ax.errorbar([r["embedding_bytes"]["mean"] / 2**20], [r["auc"]["mean"]], yerr=[r["auc"]["std"] or 0.0],
                        fmt="*", color="black", markersize=12, capsize=3, label="full tables")
        front = sorted((r for r in mine if r["pareto"]), key=lambda r: r["embedding_bytes"]["mean"])
        ax.step([r["embedding_bytes"]["mean"] / 2**20 for r in front], [r["auc"]["mean"] for r in front],
                where="post", color="#444444", linestyle="--", linewidth=1, label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.5, not 5×10⁻¹
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
        plots.style(ax, f"{dataset}, {model}", "embedding tables (MiB, measured, log scale)", "test AUC")
    return plots.img(fig, "Test AUC against embedding table bytes per scheme and ratio, with the Pareto front")
