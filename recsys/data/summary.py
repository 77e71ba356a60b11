"""A person-readable summary of a prepared data set (rich tables on stdout)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from recsys.data import layout
from recsys.errors import RecsysError
from recsys.schema import SCHEMA_FILE

console = Console()


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_summary(data_dir: str | Path, brief: bool = False) -> None:
    data_dir = Path(data_dir)
    if not (data_dir / SCHEMA_FILE).is_file():
        raise RecsysError(f"{data_dir}: not a prepared data directory (no {SCHEMA_FILE})")
    schema = layout.load_schema(data_dir)
    stats = layout.read_stats(data_dir)

    splits = RichTable(title=f"{data_dir}  ({schema.task.value})", title_justify="left")
    splits.add_column("split")
    splits.add_column("rows", justify="right")
    splits.add_column("positive rate", justify="right")
    bayes = stats.get("splits_bayes", {})
    if bayes:
        splits.add_column("Bayes AUC", justify="right")
    for name in layout.SPLITS:
        split = stats["splits"][name]
        row = [name, f"{split['rows']:,}", _fmt(split["positive_rate"])]
        if bayes:
            row.append(_fmt(bayes.get(name, {}).get("auc")))
        splits.add_row(*row)
    console.print(splits)
    line = (f"rows read {stats['rows_read']:,} · written {stats['rows_written']:,} · bad {stats['bad_rows']:,}"
            f" ({100 * stats['bad_fraction']:.3f}%) · {stats['seconds']:.1f}s")
    if "bayes_auc" in stats:
        line += f" · Bayes-optimal AUC {stats['bayes_auc']:.4f}"
    console.print(line)
    console.print(f"split: {layout.split_protocol(stats)}")
    if stats["bad_rows"]:
        console.print(f"bad rows quarantined in {data_dir / layout.QUARANTINE_FILE}")
    n_params = sum((t.cardinality or 0) * t.embedding_dim for t in schema.tables)
    console.print(f"{len(schema.dense)} dense, {len(schema.sparse)} sparse, {len(schema.sequences)} sequence features; "
                  f"{len(schema.tables)} tables, {n_params:,} embedding parameters")
    if brief:
        return

    features = RichTable(title="features", title_justify="left")
    for column in ("name", "kind", "entity", "table", "encoding", "rows", "dim", "detail"):
        features.add_column(column, justify="right" if column in ("rows", "dim") else "left")
    for f in schema.dense:
        features.add_row(f.name, "dense", f.entity.value, "", "", "", "", f"{f.transform.value} μ={_fmt(f.mean, 2)} σ={_fmt(f.std, 2)}")
    for f in schema.sparse:
        t = schema.table(f.table_name)
        detail = f"multi-valued ({f.pooling.value})" if f.separator else ""
        features.add_row(f.name, "sparse", f.entity.value, t.name, t.encoding.value, f"{t.cardinality:,}", str(t.embedding_dim), detail)
    for f in schema.sequences:
        t = schema.table(f.table)
        features.add_row(f.name, "sequence", f.entity.value, t.name, t.encoding.value, f"{t.cardinality:,}", str(t.embedding_dim), f"max_length={f.max_length} ({f.pooling.value})")
    console.print(features)
    keys = [f"{role}={c.name}" for role, c in (("user", schema.user_key), ("item", schema.item_key), ("time", schema.timestamp)) if c]
    console.print(f"labels: {', '.join(schema.label_names) or '–'}; keys: {', '.join(keys) or '–'}")
