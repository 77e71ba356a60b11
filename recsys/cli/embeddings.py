"""``recsys embeddings``: search a model's embedding dims (DNIS) and write a config that retrains with them."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from recsys.config import TrainConfig
from recsys.data.layout import load_schema, split_files
from recsys.errors import RecsysError

log = logging.getLogger(__name__)

app = typer.Typer(help="Embedding schemes: search per-table dims (DNIS).", no_args_is_help=True)


@app.command()
def search(
    model: str = typer.Option(..., "--model", help="Registered model name, e.g. dlrm."),
    data: Path = typer.Option(..., "--data", help="Prepared data directory (schema.json, train/, valid/)."),
    out: Path = typer.Option(..., "--out", help="Folder for dnis.yaml (the config to retrain), dnis.json, dnis.md."),
    config: Path | None = typer.Option(None, "--config", help="The model's training config (YAML); the chosen "
                                       "config is this one with the searched tables' dims."),
    overrides: list[str] = typer.Option([], "--set", help="Override one key, e.g. --set embedding.buckets=8 "
                                        "(repeatable; values parsed as YAML)."),
    budget_ratio: float | None = typer.Option(None, "--budget-ratio", min=1.0, help="Keep at most full / R "
                                              "embedding parameters of the searched tables (default: each "
                                              "table's embedding ratio)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Alternating steps (a training and a "
                                     "validation batch each); default: the config's epochs or max_steps."),
    alpha_lr: float = typer.Option(0.01, "--alpha-lr", min=0.0, help="Adam learning rate of the selection α."),
    l1: float = typer.Option(0.01, "--l1", min=0.0, help="L1 on α, each entry weighted by its bucket's share "
                             "of the searched rows."),
) -> None:
    """Search each table's dims per frequency bucket (DNIS) under a parameter budget, in this one process.

    Every table gets the dnis scheme (unless the config names another per table); the search trains the model with
    a soft selection α over every table's dims, α on validation batches, then prunes to the budget and writes
    OUT/dnis.yaml. Example: recsys embeddings search --model dlrm --data .demo/ctr --config configs/dlrm.yaml
    --budget-ratio 2 --out runs/dnis; then recsys train --model dlrm --data .demo/ctr --config runs/dnis/dnis.yaml
    --out runs/dlrm-dnis
    """
    from recsys.models import model_spec
    from recsys.train.dnis_search import SearchJob
    from recsys.train.dnis_search import search as run
    from recsys.train.trainer import resolved_config

    model_spec(model)
    if not data.is_dir():
        raise RecsysError(f"--data {data}: directory not found")
    load_schema(data)
    for split in ("train", "valid"):
        if not split_files(data, split):
            raise RecsysError(f"{data / split}: no Parquet files")
    if out.exists() and not out.is_dir():
        raise RecsysError(f"--out {out}: is a file; expected a folder")
    settings = resolved_config(model, TrainConfig.load(config, ["embedding.scheme=dnis", *overrides]))
    progress = settings.trainer.progress
    summary = run(SearchJob(model=model, data=data, out=out, config=settings, budget_ratio=budget_ratio,
                            steps=steps, alpha_lr=alpha_lr, l1=l1, progress=progress))
    log.info("searched %d tables: %s parameters kept of %s (%.2fx fewer; budget %s); wrote %s", 
             summary["searched_tables"], f"{summary['table_params'] + summary['projection_params']:,}",
             f"{summary['full_params']:,}", summary["ratio"], f"{summary['budget_params']:,}", out / "dnis.yaml")
