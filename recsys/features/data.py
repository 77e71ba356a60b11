"""Reading a prepared data set for feature methods: a seeded sample of train (and valid) rows, streamed."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from recsys.data.layout import load_schema, split_files
from recsys.errors import RecsysError
from recsys.features.base import FeatureData, FieldKind
from recsys.schema import Schema, Task

DEFAULT_SAMPLE = 200_000


def candidate_fields(schema: Schema) -> tuple[list[str], dict[str, FieldKind], list[str]]:
    """(fields, kinds, kept_unranked): single-valued features (generated ones too) are candidates, list-valued
    ones are not."""
    fields: list[str] = []
    kinds: dict[str, FieldKind] = {}
    for feature in schema.dense:
        fields.append(feature.name)
        kinds[feature.name] = "dense"
    for feature in schema.sparse:
        if feature.separator is None:
            fields.append(feature.name)
            kinds[feature.name] = "sparse"
    unranked = [f.name for f in schema.sparse if f.separator is not None] + [f.name for f in schema.sequences]
    return fields, kinds, unranked


def _rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def sample_split(files: list[Path], columns: list[str], sample: int | None, seed: int) -> pl.DataFrame:
    """About ``sample`` rows of ``files`` chosen by a seeded hash of the row number (all when None or more),
    read lazily so only the sample is ever held in memory."""
    total = _rows(files)
    frame = pl.scan_parquet(files).select(columns)
    if sample is not None and sample < total:
        threshold = int(sample / total * (1 << 32)) + 1
        frame = (frame.with_row_index("__row")
                 .filter((pl.col("__row").hash(seed) % (1 << 32)) < threshold)
                 .drop("__row").head(sample))
    return frame.collect()


def load_feature_data(data_dir: str | Path, sample: int | None = DEFAULT_SAMPLE, seed: int = 0,
                      valid_sample: int | None = None, only: list[str] | None = None) -> FeatureData:
    """The candidate fields and label of ``data_dir``'s train rows (a seeded sample of at most ``sample``);
    ``only``: rank just these fields (the other candidates are kept by a selection, unjudged)."""
    data_dir = Path(data_dir)
    schema = load_schema(data_dir)
    if schema.task is not Task.CTR or not schema.labels:
        raise RecsysError(f"--data {data_dir}: a '{schema.task}' data set has no label; feature methods rank "
                          "fields by how well they predict a label (use a ctr data set)")
    label = schema.labels[0].name
    fields, kinds, unranked = candidate_fields(schema)
    if only is not None:
        columns = set(schema.columns)
        for name in only:
            if name not in kinds:
                what = "is not a single-valued feature" if name in columns else "is not a column"
                raise RecsysError(f"--fields: '{name}' {what} of {data_dir} (candidates: {', '.join(fields)})")
        unranked += [f for f in fields if f not in only]
        fields = [f for f in fields if f in only]
        kinds = {f: kinds[f] for f in fields}
    if not fields:
        raise RecsysError(f"--data {data_dir}: no single-valued dense or sparse feature to rank")
    files = split_files(data_dir, "train")
    if not files:
        raise RecsysError(f"{data_dir / 'train'}: no Parquet files")
    columns = [*fields, label]
    frame = sample_split(files, columns, sample, seed)
    valid = None
    valid_files = split_files(data_dir, "valid") if (data_dir / "valid").is_dir() else []
    if valid_files:
        valid = sample_split(valid_files, columns, valid_sample or (sample // 4 if sample else None), seed + 1)
    cardinality = {f: int(schema.feature_table(f).cardinality or 1) for f in fields if kinds[f] == "sparse"}
    return FeatureData(data_dir=data_dir, schema=schema, frame=frame, label=label, fields=fields, kinds=kinds,
                       cardinality=cardinality, rows_total=_rows(files), seed=seed, valid=valid,
                       kept_unranked=unranked)
