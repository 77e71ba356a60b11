"""What the models that can explain themselves used on the test set: the most frequent top contributions.

For each artifact whose model has ``explain`` (``recsys.models.Contribution``: AutoInt's attention between
fields, ARM-Net's selected crosses, DIN's attention over the history), the first ``ROWS`` test rows are
explained and each row's ``TOP`` contributions counted: how often a feature, interaction or history
position is among a prediction's top ones, and its mean weight there.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch

from recsys.data.reader import ParquetReader
from recsys.models import explains
from recsys.report import html
from recsys.report.context import ReportContext
from recsys.report.sections import Section, register_section

ROWS, TOP, SHOWN = 4096, 3, 15


@register_section("explanations", title="What the models used", order=35)
def render(ctx: ReportContext) -> Section | None:
    candidates = [item for item in ctx.artifacts if explains(item.artifact.model)]
    if not candidates:
        return None  # no model here can say: the section would only repeat that
    body, data, notes = "", {}, []
    for item in candidates:
        if item.data_dir is None:
            notes.append(f"{item.label}: no test data to explain. {item.data_note}")
            continue
        reader = ParquetReader(item.data_dir, "test", min(ROWS, ctx.batch_size), schema=item.artifact.schema)
        counts: Counter[str] = Counter()
        weights: dict[str, float] = defaultdict(float)
        rows = 0
        with torch.inference_mode():
            for batch in reader:
                for contributions in item.artifact.model.explain(batch, TOP):
                    for contribution in contributions:
                        counts[contribution.name] += 1
                        weights[contribution.name] += contribution.weight
                rows += batch.batch_size
                if rows >= ROWS:
                    break
        top = [{"name": name, "share": count / max(rows, 1), "mean_weight": weights[name] / count}
               for name, count in counts.most_common(SHOWN)]
        data[item.label] = {"rows": rows, "top": top}
        body += html.table(["used", "share of predictions", "mean weight"],
                           [[html.esc(t["name"]), html.fmt(t["share"], 3), html.fmt(t["mean_weight"], 4)]
                            for t in top],
                           caption=f"{html.esc(item.label)}: the {SHOWN} most frequent of each prediction's top "
                                   f"{TOP}, over {rows:,} test rows")
    return Section(body=body, data=data, note=" ".join(notes))
