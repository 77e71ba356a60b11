"""Feature methods from benchmarks/results/features.json (benchmarks/bench_features.py): per data set, each
method's precision@k on the planted fields, its run time, the fields its own selection keeps and the test AUC
of DLRM retrained on them; its best-scored fields as bars; the redundancy heat map of the fields; test AUC
against the number of fields kept; and the features a generator (openfe) added.

Expected shape: ``datasets``: {name: {"skipped": reason} or {data, baseline {auc}, methods {name: {seconds,
fields_kept, fields_total, top [{field, score}], planted {precision_at_k, k, noise_dropped, noise_total},
retrained {auc, delta_auc}}}, redundancy {fields, matrix}, curve {method, points [{k, auc}]}, generated
{name: {features, cross_found, retrained}}}}. Every part may be missing: the section says what it could not
show, never fails. Shown only when the --bench folder holds such a file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.report import html, plots
from recsys.report.bench import files_for, is_number, machine_line
from recsys.report.context import ReportContext
from recsys.report.sections import Section, register_section

BARS = 20  # fields per ranking chart
PANELS_PER_ROW = 4


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | None:
    return float(value) if is_number(value) else None


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def _method_row(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one method's table row (None where absent)."""
    planted, retrained = _dict(raw.get("planted")), _dict(raw.get("retrained"))
    row = {"precision_at_k": _num(planted.get("precision_at_k")), "k": _num(planted.get("k")),
           "noise_dropped": _num(planted.get("noise_dropped")), "noise_total": _num(planted.get("noise_total")),
           "seconds": _num(raw.get("seconds")), "rows_total": _num(raw.get("rows_total")),
           "fields_kept": _num(raw.get("fields_kept")), "fields_total": _num(raw.get("fields_total")),
           "auc": _num(retrained.get("auc")), "auc_std": _num(retrained.get("auc_std")),
           "delta_auc": _num(retrained.get("delta_auc")), "load_s": _num(raw.get("load_s"))}
    if isinstance(raw.get("error"), str):
        row["error"] = raw["error"]
    elif isinstance(retrained.get("error"), str):
        row["error"] = f"retraining: {retrained['error']}"
    return {"method": name, **row}


def _auc(value: float | None, std: float | None) -> str:
    return html.fmt(value, 4) + (f" ± {std:.4f}" if value is not None and std is not None else "")


def _count(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _methods_table(dataset: str, rows: list[dict[str, Any]], baseline: tuple[float | None, float | None]) -> str:
    planted = any(r["precision_at_k"] is not None for r in rows)
    headers = ["method", *(["precision@k", "noise dropped"] if planted else []), "seconds", "train rows",
               "fields kept", "test AUC", "Δ AUC vs all fields"]
    cells = []
    for r in rows:
        cell = [html.esc(r["method"])]
        if planted:
            k = f" (k={r['k']:.0f})" if r["k"] is not None else ""
            cell += [html.fmt(r["precision_at_k"], 3) + k,
                     f"{_count(r['noise_dropped'])} / {_count(r['noise_total'])}" if r["noise_total"] else "–"]
        kept = f"{_count(r['fields_kept'])} / {_count(r['fields_total'])}" if r["fields_kept"] is not None else "–"
        cell += [html.fmt(r["seconds"], 2), _count(r["rows_total"]), kept,
                 _auc(r["auc"], r["auc_std"]) if "error" not in r else f"failed: {html.esc(r['error'])}",
                 _signed(r["delta_auc"])]
        cells.append(cell)
    base = f"; DLRM on every field: test AUC {_auc(*baseline)}" if baseline[0] is not None else ""
    loads = {r["load_s"] for r in rows if r["load_s"] is not None}
    load = f"; loading the sample: {html.fmt(loads.pop(), 2)} s" if len(loads) == 1 else ""
    caption = (f"{html.esc(dataset)}: each method's own selection, DLRM retrained on it (seconds: the method's "
               f"ranking{load}){base}; test AUC: mean ± std over seeds")
    return html.table(headers, cells, caption=caption)


def _tops(methods: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for name, raw in methods.items():
        top = _dict(raw).get("top")
        pairs = [(str(t["field"]), float(t["score"])) for t in top or [] if isinstance(t, dict)
                 and "field" in t and is_number(t.get("score"))] if isinstance(top, list) else []
        if pairs:
            out[name] = pairs[:BARS]
    return out


def _bars(dataset: str, tops: dict[str, list[tuple[str, float]]], planted: dict[str, Any]) -> str:
    """One horizontal bar chart per method: its best fields, coloured by their planted role where known."""
    roles = {f: role for role in ("informative", "noise", "weak", "keys") for f in planted.get(role) or []}
    roles |= dict.fromkeys(_dict(planted.get("redundant")), "redundant")
    colors = {"informative": plots.color(2), "noise": plots.color(1), "redundant": plots.color(3),
              "weak": plots.color(7), "keys": plots.color(0), None: plots.color(4)}
    ncols = min(len(tops), PANELS_PER_ROW)
    nrows = -(-len(tops) // ncols)
    fig, axes = plots.figure(ncols, nrows, width=3.6, height=0.2 * BARS + 1.2)
    for ax, (name, pairs) in zip(axes, tops.items()):
        y = np.arange(len(pairs))[::-1]
        ax.barh(y, [s for _, s in pairs], color=[colors[roles.get(f)] for f, _ in pairs])
        ax.set_yticks(y, [f for f, _ in pairs], fontsize=8)
        plots.style(ax, name, "score", "", legend=False)
    for ax in axes[len(tops):]:
        ax.set_visible(False)
    if roles:
        from matplotlib.patches import Patch
        shown = ("informative", "redundant", "weak", "keys", "noise")
        fig.legend(handles=[Patch(color=colors[r], label=r) for r in shown], loc="outside lower center",
                   ncols=len(shown), frameon=False, fontsize=9)
    return plots.img(fig, f"{dataset}: the best-scored fields of each method")


def _heatmap(dataset: str, redundancy: dict[str, Any]) -> str | None:
    fields, matrix = redundancy.get("fields"), redundancy.get("matrix")
    if not isinstance(fields, list) or not isinstance(matrix, list) or not fields:
        return None
    try:
        values = np.array(matrix, dtype=float)
    except (TypeError, ValueError):
        return None
    if values.shape != (len(fields), len(fields)):
        return None
    side = min(max(4.0, 0.13 * len(fields) + 2.5), 13.0)
    fig, axes = plots.figure(width=side + 1.2, height=side)
    plots.heatmap(axes[0], np.nan_to_num(values), [str(f) for f in fields], label="redundancy")
    plots.style(axes[0], f"{dataset}: redundancy between fields", "", "", legend=False)
    return plots.img(fig, f"{dataset}: redundancy heat map")


def _curve_points(curve: dict[str, Any]) -> list[dict[str, Any]]:
    points = []
    for p in curve.get("points") or []:
        if isinstance(p, dict) and is_number(p.get("k")) and is_number(p.get("auc")):
            points.append({"k": float(p["k"]), "auc": float(p["auc"]), "auc_std": _num(p.get("auc_std")),
                           "all": bool(p.get("all"))})
    return sorted(points, key=lambda p: p["k"])


def _curve(dataset: str, method: str, points: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """Test AUC against fields kept: the reference method's best k, and each method's own selection as a dot."""
    fig, axes = plots.figure(width=6.4, height=4.4)
    ax = axes[0]
    ax.errorbar([p["k"] for p in points], [p["auc"] for p in points], yerr=[p["auc_std"] or 0.0 for p in points],
                fmt="o-", color=plots.color(0), capsize=3, label=f"{method}: best k fields")
    own = [r for r in rows if r["fields_kept"] is not None and r["auc"] is not None]
    for i, r in enumerate(own):
        ax.plot([r["fields_kept"]], [r["auc"]], "s", color=plots.color(i + 1), label=f"{r['method']} (own cut)")
    plots.style(ax, dataset, "fields kept", "test AUC (DLRM)")
    return plots.img(fig, f"{dataset}: test AUC against the number of fields kept")


def _generated(generated: dict[str, Any], notes: list[str], where: str) -> tuple[str, dict[str, Any]]:
    cells, out = [], {}
    for name, raw in generated.items():
        raw = _dict(raw)
        if isinstance(raw.get("error"), str):
            notes.append(f"{where}: {name} generated nothing: {raw['error']}.")
            continue
        features = [f for f in raw.get("features") or [] if isinstance(f, dict)]
        recipes = ", ".join(f"{f.get('name')} = {_dict(f.get('recipe')).get('op')}"
                            f"({', '.join(map(str, _dict(f.get('recipe')).get('inputs') or []))})" for f in features)
        retrained = _dict(raw.get("retrained"))
        found = raw.get("cross_found")
        out[name] = {"features": len(features), "cross_found": found if isinstance(found, bool) else None,
                     "auc": _num(retrained.get("auc")), "delta_auc": _num(retrained.get("delta_auc")),
                     "seconds": _num(raw.get("seconds"))}
        cells.append([html.esc(name), html.esc(recipes) or "–", html.fmt(out[name]["seconds"], 2),
                      {True: "yes", False: "no", None: "–"}[out[name]["cross_found"]],
                      html.fmt(out[name]["auc"], 4), _signed(out[name]["delta_auc"])])
    if not cells:
        return "", out
    return html.table(["method", "generated features", "seconds", "planted cross found", "test AUC with them",
                       "Δ AUC vs without"], cells, numeric_from=2, caption="Generated features"), out


def _dataset(dataset: str, raw: dict[str, Any], notes: list[str], where: str) -> tuple[str, dict[str, Any]]:
    body, entry = f"<h4>{html.esc(dataset)}</h4>", {}
    data = _dict(raw.get("data"))
    if isinstance(data.get("command"), str):
        body += f"<p class=\"meta\">Data: <code>{html.esc(data['command'])}</code></p>"
    if isinstance(raw.get("note"), str):
        body += html.note(html.esc(raw["note"]) + ".")
    methods = {str(k): _dict(v) for k, v in _dict(raw.get("methods")).items()}
    rows = [_method_row(name, m) for name, m in methods.items()]
    baseline = _num(_dict(raw.get("baseline")).get("auc")), _num(_dict(raw.get("baseline")).get("auc_std"))
    entry["baseline_auc"] = baseline[0]
    if rows:
        entry["methods"] = {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}
        body += _methods_table(dataset, rows, baseline)
    else:
        notes.append(f"{where}: no methods.")
    tops = _tops(methods)
    if tops:
        entry["top"] = {name: [f for f, _ in pairs] for name, pairs in tops.items()}
        body += _bars(dataset, tops, _dict(raw.get("planted")))
    elif rows:
        notes.append(f"{where}: no method scores (top) to chart.")
    redundancy = _dict(raw.get("redundancy"))
    heat = _heatmap(dataset, redundancy)
    if heat is not None:
        body += heat
        entry["redundancy_fields"] = len(redundancy["fields"])
    else:
        notes.append(f"{where}: no redundancy matrix.")
    flagged = [p for p in redundancy.get("flagged") or [] if isinstance(p, dict)]
    vs = _dict(redundancy.get("vs_truth"))
    if flagged or vs:
        text = "Flagged redundant pairs: " + (", ".join(f"{p.get('a')}~{p.get('b')}" for p in flagged) or "none")
        if is_number(vs.get("found")) and is_number(vs.get("planted")):
            text += f"; {vs['found']} of {vs['planted']} planted copies flagged"
            entry["copies_flagged"] = {"found": vs["found"], "planted": vs["planted"]}
        body += f"<p>{html.esc(text)}.</p>"
    curve = _dict(raw.get("curve"))
    points = _curve_points(curve)
    if points:
        method = str(curve.get("method", "reference"))
        entry["curve"] = {"method": method, "points": points}
        body += _curve(dataset, method, points, rows)
    else:
        notes.append(f"{where}: no AUC-vs-fields curve.")
    table, generated = _generated(_dict(raw.get("generated")), notes, where)
    if generated:
        entry["generated"] = generated
    return body + table, entry


@register_section("bench_features", title="Feature methods (benchmark)", order=87)
def render(ctx: ReportContext) -> Section | None:
    files = files_for(ctx, "features") if ctx.bench_dir is not None else []
    if not files:
        return None
    body, data, notes = "", {}, []
    for file in files:
        datasets = _dict(file.data.get("datasets"))
        if not datasets:
            notes.append(f"{file.name}: no datasets; not shown.")
            continue
        ctx.claimed.add(file.name)
        entry: dict[str, Any] = {}
        body += f"<h3>{html.esc(file.name)}</h3><p class=\"meta\">{machine_line(file.data)}</p>"
        if file.data.get("quick"):
            body += html.note("A smoke run (--quick): small data and a few steps; these are not results.")
        if file.data.get("finished") is False:
            body += html.note("An unfinished run: only the data sets done so far.")
        if isinstance(file.data.get("budget"), str):
            body += f"<p>Budget: {html.esc(file.data['budget'])}.</p>"
        if isinstance(file.data.get("command"), str):
            body += f"<p class=\"meta\">Command: <code>{html.esc(file.data['command'])}</code></p>"
        for name, raw in datasets.items():
            where = f"{file.name}, {name}"
            if not isinstance(raw, dict):
                notes.append(f"{where}: not an object; not shown.")
                continue
            if "skipped" in raw or "error" in raw:
                key = "skipped" if "skipped" in raw else "error"
                body += html.note(html.esc(f"{name}: {'skipped' if key == 'skipped' else 'failed'}: {raw[key]}"))
                entry[str(name)] = {key: str(raw[key])}
                continue
            try:
                part, entry[str(name)] = _dataset(str(name), raw, notes, where)
            except Exception as exc:  # noqa: BLE001 — an odd file is a note, never a failed report
                notes.append(f"{where}: not shown ({type(exc).__name__}: {exc}).")
                continue
            body += part
        data[file.name] = entry
    if not data:
        return Section(note=" ".join(notes))
    return Section(body, data, " ".join(notes))
