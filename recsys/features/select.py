"""From a ranking to a pruned Schema: fewer fields (and, from interaction selectors, an interaction mask).

``--keep K`` keeps the K best candidate fields; ``--budget B`` keeps the best fields while their
embedding tables (rows × dim, a shared table counted once; a dense field counts 1) fit in B parameters;
neither keeps the fields the method itself suggests (else those above the largest gap in the scores).
Fields the ranking cannot judge stay: list-valued features, the user/item keys' columns, labels. A kept
generated feature keeps the inputs it is computed from. The pruned schema describes the same prepared
Parquet (the reader reads only its columns): ``recsys train --data DIR --schema schema.json``.
"""

from __future__ import annotations

import numpy as np

from recsys.errors import RecsysError
from recsys.features.base import FeatureData, Ranking
from recsys.schema import Schema


def field_parameters(schema: Schema, field: str) -> tuple[str | None, int]:
    """(table, parameters) a candidate field costs: its table's rows × dim, or (None, 1) for a dense field."""
    if any(f.name == field for f in schema.dense):
        return None, 1
    table = schema.feature_table(field)
    return table.name, int(table.cardinality or 1) * table.embedding_dim


def knee(order: list[str], scores: dict[str, float]) -> list[str]:
    """The fields above the largest drop between consecutive scores (at least one)."""
    values = np.array([scores[f] for f in order])
    if len(values) < 2:
        return list(order)
    gaps = values[:-1] - values[1:]
    return order[: int(np.argmax(gaps)) + 1]


def check_limits(data: FeatureData, keep: int | None, budget: int | None) -> None:
    """One-line errors for --keep and --budget that no ranking could satisfy, before any ranking is done."""
    count = len(data.fields)
    if keep is not None and budget is not None:
        raise RecsysError("give one of --keep K and --budget B, not both")
    if keep is not None:
        if keep < 1:
            raise RecsysError(f"--keep {keep}: keep at least 1 field")
        if keep > count:
            raise RecsysError(f"--keep {keep}: larger than the {count} candidate fields of {data.data_dir}")
    if budget is not None:
        if budget < 1:
            raise RecsysError(f"--budget {budget}: must be a positive number of parameters")
        total = total_parameters(data)
        if budget >= total:
            raise RecsysError(f"--budget {budget:,}: covers all {count} candidate fields ({total:,} parameters); "
                              "nothing to prune")
        cheapest = min(field_parameters(data.schema, f)[1] for f in data.fields)
        if budget < cheapest:
            raise RecsysError(f"--budget {budget:,}: too small for even the cheapest field ({cheapest:,} parameters)")


def total_parameters(data: FeatureData) -> int:
    """Parameters of every candidate field, a shared table counted once."""
    costs = {f: field_parameters(data.schema, f) for f in data.fields}
    return sum(dict((table or f, p) for f, (table, p) in costs.items()).values())


def choose_fields(data: FeatureData, ranking: Ranking, keep: int | None, budget: int | None) -> list[str]:
    check_limits(data, keep, budget)
    order = ranking.order()
    if keep is not None:
        return order[:keep]
    if budget is not None:
        kept, tables, used = [], set(), 0
        for field in order:
            table, cost = field_parameters(data.schema, field)
            extra = 0 if table is not None and table in tables else cost
            if used + extra <= budget:
                kept.append(field)
                used += extra
                if table is not None:
                    tables.add(table)
        return kept
    suggested = [f for f in order if f in set(ranking.suggested)] if ranking.suggested else knee(order, ranking.scores)
    return suggested or order[:1]


def pruned_schema(data: FeatureData, kept: list[str], interactions: list[tuple[str, str]] | None = None) -> Schema:
    """``data.schema`` with only the ``kept`` candidates (plus what cannot be ranked and generated inputs)."""
    schema = data.schema
    unknown = [f for f in kept if f not in data.kinds]
    if unknown:
        raise RecsysError(f"field '{unknown[0]}' is not a candidate field of {data.data_dir}")
    keep = set(kept) | set(data.kept_unranked)
    for feature in schema.derived_features:
        if feature.name in keep:
            keep |= set(feature.derived.inputs)  # type: ignore[union-attr]
    document = schema.model_dump(mode="json")
    document["dense"] = [f for f in document["dense"] if f["name"] in keep]
    document["sparse"] = [f for f in document["sparse"] if f["name"] in keep]
    used = {f.get("table") or f["name"] for f in document["sparse"]} | {f["table"] for f in document["sequences"]}
    document["tables"] = [t for t in document["tables"] if t["name"] in used]
    if interactions is not None:
        document["interactions"] = [list(p) for p in interactions if p[0] in keep and p[1] in keep]
    elif document.get("interactions") is not None:
        document["interactions"] = [p for p in document["interactions"] if p[0] in keep and p[1] in keep]
    return Schema.from_dict(document, where="selected schema")


def check_subset(data_schema: Schema, selected: Schema, where: str) -> None:
    """A schema given with ``--schema`` must describe the data set's own columns, as prepare encoded them."""
    data_features = {f.name: f for f in [*data_schema.dense, *data_schema.sparse, *data_schema.sequences]}
    for feature in [*selected.dense, *selected.sparse, *selected.sequences]:
        original = data_features.get(feature.name)
        if original is None:
            raise RecsysError(f"{where}: feature '{feature.name}' is not a column of the data set")
        if type(original) is not type(feature) or original.model_dump(exclude={"derived"}) != feature.model_dump(
                exclude={"derived"}) or original.model_dump().get("derived") != feature.model_dump().get("derived"):
            raise RecsysError(f"{where}: feature '{feature.name}' differs from the data set's (the schema must "
                              "describe the data as prepared; only fields may be dropped)")
    for table in selected.tables:
        try:
            original_table = data_schema.table(table.name)
        except RecsysError:
            raise RecsysError(f"{where}: table '{table.name}' is not a table of the data set") from None
        if (original_table.encoding, original_table.cardinality, original_table.vocab_file) != (
                table.encoding, table.cardinality, table.vocab_file):
            raise RecsysError(f"{where}: table '{table.name}' is encoded differently from the data set's")
    for section in ("labels", "user_key", "item_key", "timestamp", "task"):
        if getattr(selected, section) != getattr(data_schema, section):
            raise RecsysError(f"{where}: '{section}' differs from the data set's (only fields may be dropped)")
