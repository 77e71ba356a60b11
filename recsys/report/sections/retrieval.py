"""Retrievers: Recall@K and NDCG@K against K on the test split (full ranking), and the protocol behind them.

For each retrieval artifact with data, the test split is ranked again from the artifact's own model by
``recsys.eval.retrieval`` (the code the trainer evaluates with), so the numbers are those of what would be
served; metrics.json's (the trainer's) stand beside them. Without data only metrics.json's are shown.
"""

from __future__ import annotations

from typing import Any

from recsys.data.layout import split_protocol
from recsys.eval.retrieval import metric_keys
from recsys.report import html, plots
from recsys.report.bench import is_number
from recsys.report.context import ReportArtifact, ReportContext
from recsys.report.metrics import best
from recsys.report.sections import Section, register_section
from recsys.tasks.implicit import CUTOFFS

PROTOCOL = ("full ranking: every catalogue item scored for each test user, no sampled negatives; each user's "
            "train items (and valid items) removed from its ranking and from its relevant set; users with no "
            "relevant item left skipped; ties by catalogue position. Recall@K divides by all of a user's relevant "
            "items, NDCG@K's ideal DCG is over min(relevant, K) items (the LightGCN/BARS conventions); "
            "metrics are means over users")


def protocol(ctx: ReportContext, item: ReportArtifact) -> str:
    """Which split the numbers are on, in words, from the data's stats.json."""
    if item.data_dir is None:
        return "split unknown (no data)"
    stats = ctx.data_stats.get(item.data_dir)
    return split_protocol(stats) if stats is not None else "split unknown (no readable stats.json)"


@register_section("retrieval", title="Retrieval: Recall@K and NDCG@K (full ranking)", order=25)
def render(ctx: ReportContext) -> Section | None:
    retrievers = [(index, item) for index, item in enumerate(ctx.artifacts) if item.is_retriever]
    if not retrievers:
        return None  # ranking models only: the scored sections cover them
    keys = metric_keys(CUTOFFS)
    per: dict[str, dict[str, Any]] = {}
    fig, (recall_ax, ndcg_ax) = plots.figure(2, width=5.4, height=4.0)
    for index, item in retrievers:
        trained = {key: item.metrics.get(f"test.{key}") for key in [*keys, "users", "items"]}
        ranked = ctx.ranked(item)
        shown = ranked if ranked is not None else trained
        per[item.label] = {
            "protocol": protocol(ctx, item),
            "source": "rescored from the artifact" if ranked is not None else "metrics.json (no data to rescore)",
            "data_dir": str(item.data_dir) if item.data_dir else None,
            "similarity": item.artifact.manifest["retrieval"].get("similarity"),
            "metrics": {key: shown.get(key) for key in [*keys, "users", "items"]},
            "metrics_json": trained,
        }
        for ax, name in ((recall_ax, "recall"), (ndcg_ax, "ndcg")):
            points = [(k, shown.get(f"{name}@{k}")) for k in CUTOFFS if is_number(shown.get(f"{name}@{k}"))]
            if points:
                ax.plot(*zip(*points), color=plots.color(index), marker="o", linewidth=1.8, label=item.label)
    for ax, name in ((recall_ax, "Recall@K"), (ndcg_ax, "NDCG@K")):
        plots.style(ax, f"{name} on the test split (full ranking)", "K (cut-off)", name)
        ax.set_xticks(list(CUTOFFS))
        ax.set_ylim(bottom=0)

    labels = list(per)
    winners: dict[str, str] = {}
    rows = []
    for key in [*keys, "users", "items"]:
        values = {label: per[label]["metrics"].get(key) for label in labels}
        winner = best(values, key) if key not in ("users", "items") else None
        if winner is not None:
            winners[key] = winner
        cells = [html.fmt(v, 4) for v in values.values()]
        rows.append([html.esc(key if key in ("users", "items") else key.replace("recall", "Recall")
                              .replace("ndcg", "NDCG").replace("hr", "HR").replace("mrr", "MRR")),
                     *(f"<b>{c}</b>" if label == winner else c for label, c in zip(labels, cells, strict=True))])
    rows.append(["Recall@20 (metrics.json)", *(html.fmt(per[label]["metrics_json"].get("recall@20"), 4)
                                               for label in labels)])
    body = plots.img(fig, "Recall@K and NDCG@K against K") + html.table(["metric", *map(html.esc, labels)], rows)
    body += html.definitions((html.esc(label), html.esc(f"{v['protocol']}; {v['source']}; similarity "
                                                         f"{v['similarity']}")) for label, v in per.items())
    note = f"Protocol: {PROTOCOL}."
    if len(labels) > 1:
        note += " Best of the artifacts in bold."
    return Section(body, {"artifacts": per, "best": winners, "cutoffs": list(CUTOFFS), "protocol": PROTOCOL}, note)
