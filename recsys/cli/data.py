"""``recsys data``: synthesise, prepare and summarise data sets (public interface, keep flags stable)."""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path

import typer

from recsys.data.pipeline import MAX_FIELD_BYTES, PrepareOptions
from recsys.errors import RecsysError
from recsys.schema import Task

log = logging.getLogger(__name__)

app = typer.Typer(
    help="Synthesise, prepare and summarise data sets (Parquet splits + schema.json + stats.json).",
    no_args_is_help=True,
)


class SynthFormat(StrEnum):
    PREPARED = "prepared"
    CRITEO_TSV = "criteo-tsv"


class InputFormat(StrEnum):
    CRITEO = "criteo"
    MOVIELENS = "movielens"
    CSV = "csv"
    PARQUET = "parquet"
    INTERACTIONS = "interactions"


class Engine(StrEnum):
    POLARS = "polars"
    RAY = "ray"


class SplitMode(StrEnum):
    RANDOM = "random"
    TIME = "time"
    LOO = "loo"
    GIVEN = "given"


_SPLIT_HELP = ("random (default): by seeded hash of the row; time: by timestamp (file order when there is none); "
               "loo: leave one out, per user the newest interaction to test and the next to valid (users with "
               "fewer than 3 stay in train; --valid/--test-fraction unused); given: the input's own train/test "
               "split, valid = --valid-fraction of its train rows (the default for --format interactions).")


@app.command()
def synth(
    kind: Task = typer.Option(..., "--kind", help="ctr: Criteo-shaped CTR logs with a known ground truth; implicit: user×item interactions with communities."),
    rows: int = typer.Option(..., "--rows", min=1, help="Number of rows (interactions) to generate."),
    out: Path = typer.Option(..., "--out", help="Output directory (created atomically)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives byte-identical data."),
    output_format: SynthFormat = typer.Option(SynthFormat.PREPARED, "--format", help="prepared: train/valid/test Parquet like `prepare`; criteo-tsv: a raw Criteo day file to feed `prepare --format criteo` (ctr only)."),
    users: int | None = typer.Option(None, "--users", min=1, help="Number of users (default: rows/50 for ctr, rows/30 for implicit)."),
    items: int | None = typer.Option(None, "--items", min=1, help="Number of items (default: rows/100 for ctr, rows/60 for implicit)."),
    embedding_dim: int | None = typer.Option(None, "--embedding-dim", min=1, help="Embedding dim written into the schema (default 16 for ctr, 32 for implicit)."),
    min_count: int = typer.Option(3, "--min-count", min=1, help="ctr: ids seen fewer times in train share the out-of-vocabulary row."),
    split: SplitMode = typer.Option(SplitMode.RANDOM, "--split", help=_SPLIT_HELP),
    valid_fraction: float = typer.Option(0.1, "--valid-fraction", help="Share of rows for validation."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of rows for test."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    noise_fields: int = typer.Option(0, "--noise-fields", min=0, help="ctr: extra fields with no effect on the "
                                     "label (sparse and dense), for judging feature methods."),
    redundant_fields: int = typer.Option(0, "--redundant-fields", min=0, help="ctr: extra noisy copies of strong "
                                         "fields (at most 10)."),
    planted_cross: bool = typer.Option(False, "--planted-cross", help="ctr: two extra fields whose cross alone "
                                       "moves the label. Planted fields are F1, F2, ... in shuffled order; "
                                       "stats.json 'planted' says which is which."),
) -> None:
    """Generate synthetic data in the same layout as `prepare` (stats.json records the Bayes-optimal AUC for ctr)."""
    from recsys.data import synth as generator
    from recsys.data.summary import print_summary

    if kind is Task.CTR:
        config = generator.CtrConfig(rows=rows, seed=seed, users=users, items=items, min_count=min_count,
                                     noise_fields=noise_fields, redundant_fields=redundant_fields,
                                     planted_cross=planted_cross,
                                     **({"embedding_dim": embedding_dim} if embedding_dim else {}))
        if output_format is SynthFormat.CRITEO_TSV:
            if config.planted:
                raise RecsysError("--format criteo-tsv has Criteo's 39 fields only: planted fields need --format prepared")
            path = generator.write_criteo_tsv(config, out, overwrite)
            log.info("wrote %d Criteo-format rows to %s", rows, path)
            return
        options = PrepareOptions(split=split.value, valid_fraction=valid_fraction, test_fraction=test_fraction,
                                 seed=seed, overwrite=overwrite)
        result = generator.synth_ctr(config, out, options)
    else:
        if noise_fields or redundant_fields or planted_cross:
            raise RecsysError("--noise-fields, --redundant-fields and --planted-cross are for --kind ctr")
        if output_format is not SynthFormat.PREPARED:
            raise RecsysError("--format criteo-tsv is only for --kind ctr")
        implicit = generator.ImplicitConfig(rows=rows, seed=seed, users=users, items=items,
                                            **({"embedding_dim": embedding_dim} if embedding_dim else {}))
        options = PrepareOptions(split=split.value, valid_fraction=valid_fraction, test_fraction=test_fraction,
                                 seed=seed, overwrite=overwrite)
        result = generator.synth_implicit(implicit, out, options)
    print_summary(result.out, brief=True)


@app.command()
def prepare(
    input_format: InputFormat = typer.Option(..., "--format", help="criteo: Criteo TSV day files (or CSV with a header), .gz ok; movielens: a 100K, 1M or latest folder; csv/parquet: any table, described by --schema; interactions: a folder with train.txt and test.txt, one line per user: its id then its item ids (LightGCN/BARS layout, e.g. Gowalla)."),
    input_path: Path = typer.Option(..., "--input", help="Input file or directory."),
    out: Path = typer.Option(..., "--out", help="Output directory (written atomically: nothing appears unless the job succeeds)."),
    schema_path: Path | None = typer.Option(None, "--schema", help="Schema YAML/JSON describing the input columns (required for csv/parquet; overrides the built-in one for criteo/movielens)."),
    split: SplitMode | None = typer.Option(None, "--split", help=_SPLIT_HELP, show_default=False),
    valid_fraction: float = typer.Option(0.1, "--valid-fraction", help="Share of rows for validation (--split given: of the given train rows; 0: no valid split)."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of rows for test (random and time splits)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split (and of the valid rows drawn from a given train split)."),
    max_bad_fraction: float = typer.Option(0.01, "--max-bad-fraction", help="Fail (writing nothing) when more than this share of rows is malformed."),
    task: Task = typer.Option(Task.CTR, "--task", help="movielens: ctr (rating >= --positive-rating is a click) or implicit (positive interactions only)."),
    positive_rating: float = typer.Option(4.0, "--positive-rating", help="movielens: lowest rating that counts as positive."),
    history_length: int = typer.Option(50, "--history-length", min=1, help="movielens: max length of the per-user history sequence."),
    max_field_bytes: int = typer.Option(MAX_FIELD_BYTES, "--max-field-bytes", min=1, help="A row with a field (cell) longer than this many bytes is quarantined as malformed: one huge value would otherwise become a vocabulary entry copied into every artifact."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    engine: Engine = typer.Option(Engine.POLARS, "--engine", help="polars: in this process; ray: on a Ray cluster, parsing and writing as Ray tasks, vocabularies and statistics as Ray Data aggregations (the same output), OUT on storage every node sees."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="--engine ray: the cluster to join ('auto': the one running on this machine, or host:port); default: start a local one for the job."),
) -> None:
    """Turn raw data into train/valid/test Parquet + schema.json + stats.json, quarantining malformed rows.

    Example: recsys data prepare --format criteo --input day_0.gz --out data/criteo --engine ray --ray-address auto
    """
    from recsys.data.pipeline import run
    from recsys.data.summary import print_summary
    from recsys.schema import Schema

    if split is None:
        split = SplitMode.GIVEN if input_format is InputFormat.INTERACTIONS else SplitMode.RANDOM
    options = PrepareOptions(split=split.value, valid_fraction=valid_fraction, test_fraction=test_fraction,
                             seed=seed, max_bad_fraction=max_bad_fraction, overwrite=overwrite)
    schema = Schema.load(schema_path) if schema_path is not None else None
    if input_format is InputFormat.INTERACTIONS:
        from recsys.data.formats.interactions import InteractionsSource

        source = InteractionsSource(input_path, schema, max_field_bytes=max_field_bytes)
    elif input_format is InputFormat.CRITEO:
        from recsys.data.formats.criteo import CriteoSource

        source = CriteoSource(input_path, schema, max_field_bytes=max_field_bytes)
    elif input_format is InputFormat.MOVIELENS:
        from recsys.data.formats.movielens import MovieLensSource

        source = MovieLensSource(input_path, task=task.value, positive_rating=positive_rating,
                                 history_length=history_length, schema=schema, max_field_bytes=max_field_bytes)
    else:
        from recsys.data.formats.tabular import TabularSource

        if schema is None:
            raise RecsysError(f"--format {input_format.value} needs --schema (a YAML file describing the columns)")
        source = TabularSource(input_path, schema, file_format=input_format.value, max_field_bytes=max_field_bytes)
    if ray_address is not None and engine is not Engine.RAY:
        raise RecsysError("--ray-address needs --engine ray")
    if engine is Engine.RAY:
        from recsys.data.ray_engine import RayExecutor

        executor = RayExecutor(ray_address)
        try:
            result = run(source, out, options, executor=executor)
        finally:
            executor.close()
    else:
        result = run(source, out, options)
    print_summary(result.out, brief=True)


@app.command()
def summary(data_dir: Path = typer.Argument(..., help="A prepared data directory.")) -> None:
    """Print a prepared data set's splits, features and tables."""
    from recsys.data.summary import print_summary

    print_summary(data_dir)
