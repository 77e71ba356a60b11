"""The DNIS search: learn each table's soft dim selection on validation batches, prune to a parameter budget.

Cheng et al., "Differentiable Neural Input Search for Recommender Systems",
arXiv:2006.04466. The model is built with its ``dnis`` tables in search mode
(``recsys.embeddings.dnis``: every id's vector times its frequency bucket's α)
and trained with the paper's first-order bi-level approximation, alternating: a
step of the model's weights (tables and dense layers, α fixed) on a training
batch, then a step of α alone on a validation batch, plus an L1 on α weighted by
the rows each entry governs. The (table, bucket, dim) entries are then ranked by
their magnitude, ``|α| × RMS`` of the table column over the bucket's rows (α's
scale alone is arbitrary: a column may grow while its α shrinks), and the largest
are kept while the parameters (bucket rows and a projection column per kept dim)
fit ``full / ratio``; each table keeps at least its best entry. The result is a
full training config with per-table ``dims`` and ``bounds``, which ``recsys train
--config`` retrains from scratch (the paper's retraining).

Runs in this one process, unsharded: the search model's tables are full tables
and are trained with plain torch optimizers on dense gradients (the sparse
optimizer's Adagrad or SGD; row-wise Adagrad becomes Adagrad), fine for tables of
up to millions of parameters on a CPU. Sharding the search is not implemented:
the α step must not run the fused table optimizers, which the sharded backward
always runs.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recsys import artifact
from recsys.config import SparseOptimizer, TableEmbeddingConfig, TrainConfig
from recsys.data.layout import load_schema
from recsys.data.reader import ParquetReader
from recsys.distributed.init import init_embeddings
from recsys.embeddings import build_embeddings, embedding_tables, model_bytes
from recsys.embeddings.dnis import DnisPart
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.system import write_atomic
from recsys.tasks import task_spec
from recsys.train.evaluate import evaluate
from recsys.types import Batch

log = logging.getLogger(__name__)

CONFIG_OUT, SUMMARY_JSON, SUMMARY_MD = "dnis.yaml", "dnis.json", "dnis.md"
DIM_STEP = 4  # fbgemm's fused tables need dims in multiples of 4


@dataclass(frozen=True)
class SearchJob:
    model: str
    data: Path
    out: Path
    config: TrainConfig  # resolved; its dnis tables without dims are searched
    budget_ratio: float | None = None  # None: each table's embedding ratio
    steps: int | None = None  # None: the config's epochs (or max_steps)
    alpha_lr: float = 0.01
    l1: float = 0.01
    progress: bool = True


@dataclass
class TableChoice:
    """One searched table's outcome."""

    name: str
    rows: int
    dim: int
    bounds: list[int]
    dims: list[int]
    budget: float  # parameters it brings to the budget: rows * dim / ratio
    alpha: list[float] = field(default_factory=list)  # mean |α| per bucket at the end of the search

    @property
    def full_params(self) -> int:
        return self.rows * self.dim

    @property
    def table_params(self) -> int:
        return sum((b - a) * d for a, b, d in zip(self.bounds, self.bounds[1:], self.dims))

    @property
    def projection_params(self) -> int:
        return sum(d * self.dim for d in self.dims if 0 < d < self.dim)


def searched_parts(model: torch.nn.Module) -> dict[str, DnisPart]:
    """The model's search-mode dnis parts by logical table."""
    return {part.table.name: part for part in model.modules() if isinstance(part, DnisPart) and part.searching}


def _optimizer(kind: str, params: list[torch.nn.Parameter], lr: float, eps: float,
               weight_decay: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay)
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)


def _cycle(reader: ParquetReader) -> Iterator[Batch]:
    for epoch in itertools.count():
        reader.set_epoch(epoch)
        yield from reader


def column_scores(part: DnisPart, weight: torch.Tensor) -> torch.Tensor:
    """(buckets, dim) importance of each (bucket, dim) entry: |α| × RMS of the column over the bucket's rows."""
    assert part.alpha is not None
    rms = torch.stack([weight[a:b].pow(2).mean(dim=0).sqrt() for a, b in zip(part.bounds, part.bounds[1:])])
    return part.alpha.detach().abs() * rms  # (buckets, dim)


def prune(scores: dict[str, torch.Tensor], bounds: dict[str, list[int]], budget: float,
          step: int = DIM_STEP) -> dict[str, list[int]]:
    """Per table, the dims of each bucket: the entries of largest score whose parameters fit ``budget``.

    Dims are kept ``step`` at a time (fbgemm's tables take dims in multiples of 4): an entry is a bucket's next
    ``step`` columns by descending score, scored by their mean, and costs ``step`` × (the bucket's rows plus a
    projection column of the table's dim). Each table first keeps its best entry (a table of no dims would be a
    constant), then entries are taken by descending score, skipping any that no longer fit. Last, a bucket so
    small that its projection would hold more than the dims it saves takes the full dim (fewer parameters, no
    projection).
    """
    entries: list[tuple[float, str, int, int, int]] = []  # (score, table, bucket, dims, cost)
    for table, score in scores.items():
        dim = score.shape[1]
        for b in range(score.shape[0]):
            rows = bounds[table][b + 1] - bounds[table][b]
            ranked = score[b].sort(descending=True).values
            for start in range(0, dim, step):
                group = ranked[start:start + step]
                entries.append((float(group.mean()), table, b, group.numel(), group.numel() * (rows + dim)))
    dims = {table: [0] * score.shape[0] for table, score in scores.items()}
    used = 0.0
    taken: set[int] = set()
    for table in scores:  # each table's best entry, whatever the budget
        index = max((i for i, e in enumerate(entries) if e[1] == table), key=lambda i: entries[i][0])
        taken.add(index)
        dims[table][entries[index][2]] += entries[index][3]
        used += entries[index][4]
    # within a bucket the groups' scores fall, so taking by score keeps each bucket's best columns first
    for index in sorted(range(len(entries)), key=lambda i: -entries[i][0]):
        _, table, b, count, cost = entries[index]
        if index not in taken and used + cost <= budget:
            dims[table][b] += count
            used += cost
    for table, score in scores.items():
        dim = score.shape[1]
        for b, d in enumerate(dims[table]):
            rows = bounds[table][b + 1] - bounds[table][b]
            if 0 < d < dim and rows * d + d * dim >= rows * dim:
                dims[table][b] = dim
    return dims


def search(job: SearchJob) -> dict[str, Any]:
    """Run the search and write OUT/dnis.yaml, dnis.json and dnis.md; returns the summary."""
    config = job.config
    console = Console(stderr=True)
    schema = load_schema(job.data)
    task = task_spec(schema)
    torch.manual_seed(config.seed)
    model = build_model(job.model, schema, config.model, config.embedding)
    tables = {name: table for name, (_, table) in embedding_tables(model).items()}
    init_embeddings(model, tables, config.seed)  # the trainer's initial tables
    parts = searched_parts(model)
    if not parts:
        raise RecsysError("embedding: no table is searched; a table is searched when its scheme is dnis and it "
                          "has no dims (set embedding.scheme=dnis)")
    ratios = {}
    for name in parts:
        ratio = job.budget_ratio if job.budget_ratio is not None else config.embedding.for_table(name)["ratio"]
        if ratio is None or ratio <= 1:
            raise RecsysError(f"--budget-ratio: the budget of table {name} is its full size (ratio {ratio}); "
                              "pass --budget-ratio R > 1 or set embedding.ratio")
        ratios[name] = float(ratio)

    alphas = [part.alpha for part in parts.values() if part.alpha is not None]
    alpha_ids = {id(a) for a in alphas}
    table_weights = [p for n, p in model.named_parameters() if n in tables]
    table_ids = {id(p) for p in table_weights}
    dense = [p for p in model.parameters() if id(p) not in alpha_ids | table_ids]
    sparse_cfg, dense_cfg = config.optimizer.sparse, config.optimizer.dense
    sparse_kind = "adagrad" if sparse_cfg.name is SparseOptimizer.ROWWISE_ADAGRAD else sparse_cfg.name.value
    optimizers = [_optimizer(sparse_kind, table_weights, sparse_cfg.lr, sparse_cfg.eps, sparse_cfg.weight_decay)]
    if dense:
        optimizers.append(_optimizer(dense_cfg.name.value, dense, dense_cfg.lr, dense_cfg.eps, dense_cfg.weight_decay))
    alpha_optimizer = torch.optim.Adam(alphas, lr=job.alpha_lr)
    # the L1 weight of each α entry: the share of the searched parameters it governs
    total_rows = sum(part.table.rows for part in parts.values())
    shares = {name: torch.tensor([b - a for a, b in zip(part.bounds, part.bounds[1:])], dtype=torch.float32)
              .unsqueeze(1) / total_rows for name, part in parts.items()}  # (buckets, 1)

    trainer = config.trainer
    train_reader = ParquetReader(job.data, "train", trainer.batch_size, shuffle=trainer.shuffle,
                                 shuffle_buffer=trainer.shuffle_buffer, drop_last=True, seed=config.seed)
    valid_reader = ParquetReader(job.data, "valid", trainer.batch_size, shuffle=True,
                                 shuffle_buffer=trainer.shuffle_buffer, seed=config.seed + 1)
    if train_reader.num_batches == 0 or valid_reader.num_batches == 0:
        raise RecsysError(f"{job.data}: the train and valid splits need a batch of {trainer.batch_size} rows")
    steps = job.steps or min(trainer.epochs * train_reader.num_batches, trainer.max_steps or math.inf)
    steps = int(steps)
    train_batches, valid_batches = _cycle(train_reader), _cycle(valid_reader)
    model.train()
    train_losses: list[float] = []
    valid_losses: list[float] = []
    with Progress(TextColumn("[bold]dnis search"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("train {task.fields[train]:.4f}  valid {task.fields[valid]:.4f}"), TimeElapsedColumn(),
                  console=console, disable=not job.progress) as progress:
        bar = progress.add_task("search", total=steps, train=float("nan"), valid=float("nan"))
        for step in range(steps):
            # the model's weights on a training batch, α fixed
            batch = next(train_batches)
            for alpha in alphas:
                alpha.requires_grad_(False)
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss = task.loss(model(batch), batch.labels)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            for alpha in alphas:
                alpha.requires_grad_(True)
            # α alone on a validation batch (no other weight gets a gradient)
            batch = next(valid_batches)
            valid_loss = task.loss(model(batch), batch.labels)
            penalty = sum((part.alpha.abs() * shares[name]).sum() for name, part in parts.items()
                          if part.alpha is not None)
            grads = torch.autograd.grad(valid_loss + job.l1 * penalty, alphas)
            for alpha, grad in zip(alphas, grads):
                alpha.grad = grad
            alpha_optimizer.step()
            train_losses.append(loss.item())
            valid_losses.append(valid_loss.item())
            if not (math.isfinite(train_losses[-1]) and math.isfinite(valid_losses[-1])):
                raise RecsysError(f"the search diverged at step {step + 1}; lower optimizer.*.lr or --alpha-lr")
            window = max(1, min(50, len(train_losses)))
            progress.update(bar, completed=step + 1, train=sum(train_losses[-window:]) / window,
                            valid=sum(valid_losses[-window:]) / window)

    valid_metrics = evaluate(model, ParquetReader(job.data, "valid", trainer.eval_batch_size), torch.device("cpu"),
                             task)
    weights = {table: p.detach() for n, p in model.named_parameters() if n in tables for table in [tables[n]]}
    scores = {name: column_scores(part, weights[part.physical[0].name]) for name, part in parts.items()}
    bounds = {name: part.bounds for name, part in parts.items()}
    budget = sum(part.table.rows * part.table.dim / ratios[name] for name, part in parts.items())
    dims = prune(scores, bounds, budget)
    choices = [TableChoice(name, part.table.rows, part.table.dim, part.bounds, dims[name],
                           part.table.rows * part.table.dim / ratios[name],
                           [round(float(v), 4) for v in part.alpha.detach().abs().mean(dim=1)])
               for name, part in parts.items() if part.alpha is not None]
    final = chosen_config(config, choices)
    summary = _summary(job, schema, config, final, choices, budget, valid_metrics, train_losses, valid_losses, steps)
    job.out.mkdir(parents=True, exist_ok=True)
    write_atomic(job.out / CONFIG_OUT, final.to_yaml())
    write_atomic(job.out / SUMMARY_JSON, artifact.json_text(summary, indent=2) + "\n")
    write_atomic(job.out / SUMMARY_MD, _markdown(summary, choices))
    return summary


def chosen_config(config: TrainConfig, choices: list[TableChoice]) -> TrainConfig:
    """The config with each searched table's scheme, dims and bounds set: ``recsys train --config`` retrains it."""
    tables = dict(config.embedding.tables)
    for choice in choices:
        own = tables[choice.name].model_dump(exclude_none=True) if choice.name in tables else {}
        tables[choice.name] = TableEmbeddingConfig.model_validate(
            own | {"scheme": "dnis", "dims": choice.dims, "bounds": choice.bounds})
    embedding = config.embedding.model_copy(update={"tables": tables})
    return TrainConfig.from_dict(config.model_copy(update={"embedding": embedding}).model_dump(mode="json"),
                                 where="the chosen config")


def _summary(job: SearchJob, schema: Any, config: TrainConfig, final: TrainConfig, choices: list[TableChoice],
             budget: float, valid_metrics: dict[str, float], train_losses: list[float], valid_losses: list[float],
             steps: int) -> dict[str, Any]:
    full = sum(c.full_params for c in choices)
    kept = sum(c.table_params for c in choices)
    projections = sum(c.projection_params for c in choices)
    before = model_bytes(_embeddings(schema, config))["embedding_bytes"]
    after = model_bytes(_embeddings(schema, final))["embedding_bytes"]
    tail = max(1, min(100, steps))
    return {
        "model": job.model, "data": str(job.data), "steps": steps, "alpha_lr": job.alpha_lr, "l1": job.l1,
        "searched_tables": len(choices), "full_params": full, "budget_params": int(budget),
        "table_params": kept, "projection_params": projections,
        "ratio": full / max(1, kept + projections), "budget_met": kept + projections <= budget,
        "embedding_bytes_search": before, "embedding_bytes_chosen": after,
        "search.train_loss": sum(train_losses[-tail:]) / tail, "search.valid_loss": sum(valid_losses[-tail:]) / tail,
        **{f"search.valid.{k}": v for k, v in valid_metrics.items()},
        "tables": {c.name: {"rows": c.rows, "dim": c.dim, "bounds": c.bounds, "dims": c.dims,
                            "full_params": c.full_params, "table_params": c.table_params,
                            "projection_params": c.projection_params, "mean_abs_alpha": c.alpha}
                   for c in choices},
    }


def _embeddings(schema: Any, config: TrainConfig) -> torch.nn.Module:
    return build_embeddings(schema, config.embedding, "meta")


def _markdown(summary: dict[str, Any], choices: list[TableChoice]) -> str:
    lines = [
        f"# DNIS search: {summary['model']} on {summary['data']}", "",
        f"{summary['steps']} alternating steps (α lr {summary['alpha_lr']}, L1 {summary['l1']}); "
        f"search model's valid loss {summary['search.valid_loss']:.4f}"
        + (f", valid AUC {summary['search.valid.auc']:.4f}" if "search.valid.auc" in summary else "") + ".", "",
        (f"Searched tables: {summary['full_params']:,} parameters in full; chosen: {summary['table_params']:,} in "
         f"tables + {summary['projection_params']:,} in projections (budget {summary['budget_params']:,}), "
         f"**{summary['ratio']:.2f}× fewer**. Retrain with `recsys train --config dnis.yaml`."), "",
        "| table | rows | dim | bucket bounds | dims per bucket | mean |α| per bucket | params (full) |",
        "| --- | ---: | ---: | --- | --- | --- | ---: |",
    ]
    for c in choices:
        lines.append(f"| {c.name} | {c.rows:,} | {c.dim} | {c.bounds} | {c.dims} | {c.alpha} | "
                     f"{c.table_params + c.projection_params:,} ({c.full_params:,}) |")
    return "\n".join(lines) + "\n"
