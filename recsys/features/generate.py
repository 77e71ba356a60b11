"""``features generate``: a prepared data set plus generated columns, itself a prepared data set like any other.

The recipes are fitted on the whole train split (``recipes.fit``), written into the new
schema (lookup tables under ``generated/``, digests in the schema), and every split's
Parquet parts are rewritten with the generated columns computed by ``recipes.derive``
from the lookups as read back from disk, exactly what the ranking service will read.
The output appears atomically: nothing is visible unless every part was written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.data import layout
from recsys.data.layout import load_schema, split_files
from recsys.errors import RecsysError
from recsys.features.base import GeneratedFeature
from recsys.features.recipes import GENERATED_DIR, Lookups, derive_frame, fit, sha256_bytes
from recsys.schema import DenseFeature, Schema, SparseFeature, Table

ROW_GROUP_ROWS = 1 << 16


def generated_schema(data_dir: Path, proposals: list[GeneratedFeature]) -> tuple[Schema, dict[str, pl.DataFrame]]:
    """The data set's schema with the proposals fitted on its train split, and their lookup rows by feature."""
    schema = load_schema(data_dir)
    taken = set(schema.columns)
    names = [p.name for p in proposals]
    for name in names:
        if name in taken or names.count(name) > 1:
            raise RecsysError(f"generated feature '{name}': the name is already a column of {data_dir}")
    inputs = sorted({n for p in proposals for n in p.recipe.inputs})
    train = pl.read_parquet(split_files(data_dir, "train"), columns=inputs) if inputs else pl.DataFrame()
    lookups = Lookups(None)
    dense: list[DenseFeature] = []
    sparse: list[SparseFeature] = []
    tables: list[Table] = []
    lookup_rows: dict[str, pl.DataFrame] = {}
    for proposal in proposals:
        feature, table, lookup = fit(proposal.name, proposal.recipe, train, schema, lookups)
        if isinstance(feature, DenseFeature):
            dense.append(feature)
        else:
            sparse.append(feature)
            assert table is not None
            tables.append(table)
        if lookup is not None:
            lookup_rows[proposal.name] = lookup
    data = schema.model_dump(mode="json")
    data["dense"] += [f.model_dump(mode="json") for f in dense]
    data["sparse"] += [f.model_dump(mode="json") for f in sparse]
    data["tables"] += [t.model_dump(mode="json") for t in tables]
    return Schema.from_dict(data, where="generated schema"), lookup_rows


def write_generated(data_dir: str | Path, out: str | Path, proposals: list[GeneratedFeature], *,
                    overwrite: bool = False, details: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Write ``out``: ``data_dir`` with the proposals' columns added to every split."""
    data_dir, out = Path(data_dir), Path(out)
    if data_dir.resolve() == out.resolve():
        raise RecsysError(f"--out {out}: must differ from --data (the input stays as it is)")
    schema, lookup_rows = generated_schema(data_dir, proposals)
    with layout.atomic_output_dir(out, overwrite=overwrite) as tmp:
        (tmp / GENERATED_DIR).mkdir()
        digests = {}
        for name, rows in lookup_rows.items():
            path = tmp / GENERATED_DIR / f"{name}.parquet"
            rows.write_parquet(path)
            digests[name] = sha256_bytes(path.read_bytes())
        data = schema.model_dump(mode="json")
        for feature in [*data["dense"], *data["sparse"]]:
            if feature.get("derived") and feature["name"] in digests:
                feature["derived"]["lookup_sha256"] = digests[feature["name"]]
        schema = Schema.from_dict(data, where="generated schema")
        lookups = Lookups(tmp)  # read back from disk, digests checked: what serving will read
        parts = [(split, f) for split in layout.SPLITS if (data_dir / split).is_dir() for f in split_files(data_dir, split)]
        for split, part in tqdm(parts, desc="generate", unit="part", disable=not progress):
            (tmp / split).mkdir(exist_ok=True)
            frame = derive_frame(schema, pl.read_parquet(part), lookups)
            pq.write_table(frame.to_arrow(), tmp / split / part.name, row_group_size=ROW_GROUP_ROWS,
                           write_page_checksum=True)
        for split in layout.SPLITS:
            (tmp / split).mkdir(exist_ok=True)
        for folder in (layout.VOCAB_DIR, "quarantine"):
            if (data_dir / folder).is_dir():
                shutil.copytree(data_dir / folder, tmp / folder)
        stats = layout.read_stats(data_dir) if (data_dir / layout.STATS_FILE).is_file() else {}
        stats["generated"] = {"from": str(data_dir), "features": [
            {"name": p.name, "kind": p.kind, "recipe": p.recipe.model_dump(mode="json", exclude_none=True),
             "gain": p.gain, **p.details} for p in proposals], **(details or {})}
        (tmp / layout.STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        schema.save(tmp)
    return out
