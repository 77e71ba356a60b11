"""The files ``features rank`` writes (ranking.json + ranking.md) and the planted-truth scoring they carry.

On data with planted fields (``data synth --noise-fields ...``), the ranking is scored against the
truth in stats.json: precision@k with k = the number of informative fields, over the pool of candidate
fields that are informative or noise (weak base fields, the id keys and redundant copies are left out
of the pool: a copy is as informative as its source, and redundancy is reported on its own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys.data.layout import STATS_FILE
from recsys.features.base import FeatureData, Ranking
from recsys.features.quality import Finding, redundant_pairs

RANKING_JSON = "ranking.json"
RANKING_MD = "ranking.md"


def planted_truth(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / STATS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("planted")


def planted_scores(order: list[str], truth: dict[str, Any]) -> dict[str, Any]:
    """precision@k of a best-first field order against the planted truth (module docstring)."""
    informative = set(truth["informative"])
    noise = set(truth["noise"])
    pool = [f for f in order if f in informative or f in noise]
    k = len([f for f in pool if f in informative])
    top = pool[:k]
    hits = sum(f in informative for f in top)
    return {"k": k, "precision_at_k": hits / k if k else None,
            "noise_in_top_k": sorted(f for f in top if f in noise),
            "cross_found": all(f in top for f in truth.get("cross", [])) if truth.get("cross") else None}


def ranking_document(data: FeatureData, ranking: Ranking, paper: str, redundancy: dict[tuple[str, str], float],
                     findings: list[Finding]) -> dict[str, Any]:
    order = ranking.order()
    entity = {f.name: f.entity.value for f in [*data.schema.dense, *data.schema.sparse]}
    document: dict[str, Any] = {
        "method": ranking.method,
        "paper": paper,
        "data": str(data.data_dir),
        "rows_sampled": data.frame.height,
        "rows_total": data.rows_total,
        "seconds": round(ranking.seconds, 3),
        "fields": [{"rank": i + 1, "field": f, "kind": data.kinds[f], "entity": entity.get(f),
                    "cardinality": data.cardinality.get(f), "score": ranking.scores[f]}
                   for i, f in enumerate(order)],
        "suggested": ranking.suggested,
        "interactions": [list(p) for p in ranking.interactions] if ranking.interactions is not None else None,
        "kept_unranked": data.kept_unranked,
        "redundant_pairs": [{"a": a, "b": b, "redundancy": round(v, 4)} for a, b, v in redundant_pairs(redundancy)],
        "redundancy": {"fields": data.fields,
                       "matrix": [[1.0 if a == b else round(redundancy.get((a, b), redundancy.get((b, a), 0.0)), 4)
                                   for b in data.fields] for a in data.fields]},
        "findings": [f.as_dict() for f in findings],
        "details": ranking.details,
    }
    truth = planted_truth(data.data_dir)
    if truth is not None:
        document["planted"] = planted_scores(order, truth)
    return document


def write_ranking(out: Path, document: dict[str, Any]) -> tuple[Path, Path]:
    """``out`` is a directory (ranking.json, ranking.md inside) or a file name ending in .json (.md beside it)."""
    if out.suffix == ".json":
        json_path, md_path = out, out.with_suffix(".md")
    else:
        json_path, md_path = out / RANKING_JSON, out / RANKING_MD
    json_path.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((json_path, json.dumps(document, indent=2) + "\n"), (md_path, markdown(document))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return json_path, md_path


def markdown(document: dict[str, Any]) -> str:
    lines = [f"# Feature ranking: {document['method']}", "",
             f"{document['paper']}", "",
             f"Data `{document['data']}`: {document['rows_sampled']:,} of {document['rows_total']:,} train rows "
             f"sampled; ranked in {document['seconds']:.2f} s.", ""]
    suggested = set(document["suggested"] or [])
    lines += ["| rank | field | kind | entity | cardinality | score | kept by the method |",
              "|---:|---|---|---|---:|---:|:---:|"]
    for row in document["fields"]:
        cardinality = f"{row['cardinality']:,}" if row["cardinality"] else ""
        lines.append(f"| {row['rank']} | {row['field']} | {row['kind']} | {row['entity']} | {cardinality} | "
                     f"{row['score']:.6g} | {'✓' if row['field'] in suggested else ''} |")
    if document["kept_unranked"]:
        lines += ["", f"Not ranked (list-valued), always kept: {', '.join(document['kept_unranked'])}."]
    if document.get("interactions") is not None:
        lines += ["", f"Interactions kept ({len(document['interactions'])}): "
                  + ", ".join(f"{a}×{b}" for a, b in document["interactions"])]
    lines += ["", "## Redundant pairs", ""]
    pairs = document["redundant_pairs"]
    lines += [f"- {p['a']} ~ {p['b']}: {p['redundancy']:.3f}" for p in pairs] or ["None at 0.8 or more."]
    lines += ["", "## Data quality", ""]
    lines += [f"- {f['field']} ({f['kind']}): {f['message']}" for f in document["findings"]] or ["No finding."]
    if "planted" in document:
        p = document["planted"]
        lines += ["", "## Against the planted truth", "",
                  f"precision@{p['k']}: {p['precision_at_k']:.3f}; noise fields in the top {p['k']}: "
                  f"{', '.join(p['noise_in_top_k']) or 'none'}"]
    return "\n".join(lines) + "\n"
