"""Metrics by segment of the test split: user activity, item popularity, new vs returning users.

A row's user activity is its user's number of train rows (its item's, for popularity); buckets are
quartiles of that count over the test rows of seen users or items, so each holds about a quarter of
them. Keys are the schema's ``user_key``/``item_key`` string columns; train counts come from a lazy
polars scan of DIR/train.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.layout import load_schema
from recsys.report import html, plots
from recsys.report.context import ReportArtifact, ReportContext, Scored
from recsys.report.metrics import best
from recsys.report.sections import Section, register_section
from recsys.tasks import task_spec

QUANTILES = 4
NEW_VS_RETURNING = "new vs returning users"


@dataclass
class _Segment:
    group: str
    name: str
    mask: np.ndarray  # (split rows,) bool


def quantile_buckets(counts: np.ndarray, parts: int = QUANTILES) -> list[tuple[int, int]]:
    """(lo, hi] bounds of up to ``parts`` buckets of positive counts with about equal rows each."""
    seen = counts[counts > 0]
    if not len(seen):
        return []
    cuts = np.quantile(seen, np.linspace(0, 1, parts + 1)[1:-1], method="lower").astype(np.int64)
    bounds = np.unique(np.concatenate([[0], cuts, [seen.max()]]))
    return [(int(lo), int(hi)) for lo, hi in pairwise(bounds)]


def _bucket_name(lo: int, hi: int) -> str:
    return f"{hi:,}" if hi == lo + 1 else f"{lo + 1:,}–{hi:,}"


def _segments(ctx: ReportContext, data_dir: Path) -> tuple[list[_Segment], list[str]]:
    schema = load_schema(data_dir)
    segments: list[_Segment] = []
    missing = []
    if schema.user_key is not None:
        users = ctx.train_counts(data_dir, schema.user_key.name)
        group = "user activity (train rows of the user)"
        segments += [_Segment(group, _bucket_name(lo, hi), (users > lo) & (users <= hi))
                     for lo, hi in quantile_buckets(users)]
        segments += [_Segment(NEW_VS_RETURNING, "new (not in train)", users == 0),
                     _Segment(NEW_VS_RETURNING, "returning (in train)", users > 0)]
    else:
        missing.append("user_key")
    if schema.item_key is not None:
        items = ctx.train_counts(data_dir, schema.item_key.name)
        group = "item popularity (train rows of the item)"
        segments += [_Segment(group, "0 (not in train)", items == 0)]
        segments += [_Segment(group, _bucket_name(lo, hi), (items > lo) & (items <= hi))
                     for lo, hi in quantile_buckets(items)]
    else:
        missing.append("item_key")
    return segments, missing


@register_section("segments", title="Metrics by segment", order=60)
def render(ctx: ReportContext) -> Section | None:
    if ctx.only_retrievers:  # ranked, not scored row by row: the Retrieval section shows them
        return None
    groups: dict[Path, list[tuple[int, ReportArtifact, Scored]]] = {}
    for index, item, scored in ctx.with_scores():
        assert item.data_dir is not None
        groups.setdefault(item.data_dir, []).append((index, item, scored))
    if not groups:
        return Section(note=f"No segments: no test rows scored. {ctx.no_data_note()}")
    body, data, notes = "", {}, []
    for data_dir, members in groups.items():
        segments, missing = _segments(ctx, data_dir)
        if missing:
            notes.append(f"{data_dir}: the schema has no {' or '.join(missing)}, so no segments by it.")
        if not segments:
            continue
        first = members[0][2]
        rows: list[dict[str, Any]] = []
        for segment in segments:
            entry: dict[str, Any] = {"group": segment.group, "segment": segment.name, "artifacts": {}}
            for _, item, scored in members:
                mask = segment.mask[scored.row_ids]
                metrics = task_spec(item.artifact.schema).offline_metrics(scored.labels[mask], scored.scores[mask])
                entry["artifacts"][item.label] = metrics
                if scored is first:
                    entry["rows"], entry["positive_rate"] = metrics["rows"], metrics.get("positive_rate")
            rows.append(entry)
        data[str(data_dir)] = rows
        body += _table(data_dir, rows, [item.label for _, item, _ in members]) + _plot(rows, members)
    note = ("AUC where a segment has both classes; log loss on all its rows. Buckets are quartiles of "
            "the train count over the test rows of users/items seen in train. " + ctx.scoring_note())
    return Section(body, data, " ".join([note, *notes, ctx.no_data_note()]).strip())


def _table(data_dir: Path, rows: list[dict[str, Any]], labels: list[str]) -> str:
    headers = ["segment", "rows", "positive rate"]
    for label in labels:
        suffix = f" ({html.esc(label)})" if len(labels) > 1 else ""
        headers += [f"AUC{suffix}", f"log loss{suffix}"]
    table_rows, group = [], None
    for entry in rows:
        if entry["group"] != group:
            group = entry["group"]
            table_rows.append([f"<b>{html.esc(group)}</b>", *([""] * (len(headers) - 1))])
        per = entry["artifacts"]
        winners = {m: best({label: per[label].get(m) for label in labels}, m) for m in ("auc", "logloss")}
        cells = [f"&nbsp;&nbsp;{html.esc(entry['segment'])}", html.fmt(entry["rows"]),
                 html.fmt(entry.get("positive_rate"), 4)]
        for label in labels:
            for metric in ("auc", "logloss"):
                text = html.fmt_metric(metric, per[label].get(metric))
                cells.append(f"<b>{text}</b>" if winners[metric] == label else text)
        table_rows.append(cells)
    return html.table(headers, table_rows, caption=f"Test split of <code>{html.esc(data_dir)}</code>")


def _plot(rows: list[dict[str, Any]], members: list[tuple[int, ReportArtifact, Scored]]) -> str:
    groups = list(dict.fromkeys(entry["group"] for entry in rows))
    fig, axes = plots.figure(len(groups), width=5.2, height=4.0)
    for ax, group in zip(axes, groups, strict=True):
        entries = [e for e in rows if e["group"] == group and e["rows"]]
        x = np.arange(len(entries))
        for index, item, _ in members:
            auc = [e["artifacts"][item.label].get("auc") for e in entries]
            y = np.array([np.nan if v is None else v for v in auc], dtype=float)
            # Buckets are ordered (a line reads as a trend); new/returning are categories (points only).
            ax.plot(x, y, marker="o", markersize=6, linewidth=0 if group == NEW_VS_RETURNING else 1.4,
                    color=plots.color(index), label=item.label)
        ax.set_xticks(x, [f"{e['segment']}\n{e['rows']:,} rows" for e in entries], fontsize=9)
        ax.margins(x=0.15, y=0.15)
        plots.style(ax, group[0].upper() + group[1:], "", "test AUC", legend=len(members) > 1)
    return plots.img(fig, "AUC by segment")
