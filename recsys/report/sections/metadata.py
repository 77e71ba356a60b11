"""Run metadata: what each artifact is, where it came from, how long it trained, and its data."""

from __future__ import annotations

from typing import Any

import yaml

from recsys.data.layout import split_protocol
from recsys.report import html
from recsys.report.context import ReportContext
from recsys.report.sections import Section, register_section


@register_section("metadata", title="Run metadata", order=10)
def render(ctx: ReportContext) -> Section:
    per: dict[str, dict[str, Any]] = {}
    for item in ctx.artifacts:
        manifest, metrics = item.artifact.manifest, item.metrics
        per[item.label] = {
            "model": item.artifact.model_name,
            "version": item.artifact.version,
            "created_at": manifest.get("created_at"),
            "git_sha": manifest.get("git_sha"),
            "artifact": str(item.path.resolve()),
            "data_dir": str(item.data_dir) if item.data_dir else manifest.get("data_dir"),
            "seed": item.artifact.config.seed,
            "train.steps": metrics.get("train.steps"),
            "train.epochs": metrics.get("train.epochs"),
            "train.samples": metrics.get("train.samples"),
            "train.seconds": metrics.get("train.seconds"),
            "train.samples_per_s": metrics.get("train.samples_per_s"),
            "train.world_size": metrics.get("train.world_size"),
            **item.model_sizes,
            "config": yaml.safe_load(item.artifact.config.to_yaml()),
        }
    fields = [("model", "model"), ("version", "version"), ("created_at", "created at"), ("git_sha", "git sha"),
              ("artifact", "artifact"), ("data_dir", "data"), ("seed", "seed"), ("train.steps", "training steps"),
              ("train.epochs", "epochs"), ("train.samples", "training samples"),
              ("train.seconds", "training time (s)"), ("train.samples_per_s", "training samples/s"),
              ("train.world_size", "processes"), ("embedding_bytes", "embedding tables (MiB)"),
              ("dense_bytes", "dense parameters (MiB)")]

    def cell(key: str, value: Any) -> str:
        if key.endswith("_bytes") and isinstance(value, int):
            return html.fmt(value / 2**20, 2)
        if key == "train.seconds" and isinstance(value, float):
            return html.fmt(value, 1)
        if key == "train.samples_per_s" and isinstance(value, float):
            return f"{value:,.0f}"
        if key in ("artifact", "data_dir", "git_sha"):
            return f"<code>{html.esc(value)}</code>" if value else "–"
        return html.fmt(value)

    labels = list(per)
    body = html.table(["", *map(html.esc, labels)],
                      [[name, *(cell(key, per[label][key]) for label in labels)] for key, name in fields],
                      numeric_from=99)
    body += "".join(f"<details><summary>training config of {html.esc(label)}</summary>"
                    f"<pre>{html.esc(yaml.safe_dump(per[label]['config'], sort_keys=False))}</pre></details>"
                    for label in labels)

    data_stats: dict[str, Any] = {}
    protocols: dict[str, str] = {}  # how each data set was split
    for data_dir, stats in ctx.data_stats.items():
        splits = stats.get("splits") if isinstance(stats.get("splits"), dict) else {}
        bayes = stats.get("splits_bayes") if isinstance(stats.get("splits_bayes"), dict) else {}
        entry: dict[str, Any] = {}
        for split, info in splits.items():
            if isinstance(info, dict):
                entry[split] = {"rows": info.get("rows"), "positive_rate": info.get("positive_rate"),
                                "bayes_auc": (bayes.get(split) or {}).get("auc")}
        data_stats[str(data_dir)] = entry
        has_bayes = any(v["bayes_auc"] is not None for v in entry.values())
        headers = ["split", "rows", "positive rate", *(["Bayes-optimal AUC"] if has_bayes else [])]
        rows = [[split, html.fmt(v["rows"]), html.fmt(v["positive_rate"], 4),
                 *([html.fmt(v["bayes_auc"], 4)] if has_bayes else [])] for split, v in entry.items()]
        protocols[str(data_dir)] = split_protocol(stats)
        body += html.table(headers, rows, caption=f"Data: <code>{html.esc(data_dir)}</code> (stats.json); "
                                                  f"{html.esc(protocols[str(data_dir)])}")
    missing = [item for item in ctx.artifacts if item.data_dir is not None and item.data_dir not in ctx.data_stats]
    notes = [f"{item.label}: {item.data_dir} has no readable stats.json." for item in missing]
    if ctx.no_data_note():
        notes.append(ctx.no_data_note())
    return Section(body, {"artifacts": per, "data": data_stats, "split_protocols": protocols}, " ".join(notes))
