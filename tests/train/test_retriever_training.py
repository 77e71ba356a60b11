"""Training a retriever: a model without dense parameters trains on one process (DDP and the dense optimizer have
nothing to hold), evaluation by full ranking picks the best epoch on valid Recall@20, and graph models get the
training split's interactions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.layout import load_schema, split_files
from recsys.train.retrieval import training_interactions
from tests.conftest import REPO_ROOT, train_cli


def test_cml_without_dense_parameters_keeps_its_best_epoch_by_valid_recall(small_implicit: Path,
                                                                          tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train_cli(small_implicit, run, "trainer.epochs=3", "trainer.batch_size=512",
                       "trainer.early_stopping.patience=0", "optimizer.sparse.lr=0.5", model="cml",
                       extra=("--config", str(REPO_ROOT / "configs" / "cml.yaml")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Test Recall@20" in result.stdout + result.stderr
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [line for line in lines if line["split"] == "valid"]
    assert len(valid) == 3
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    best = max(valid, key=lambda line: line["recall@20"])
    assert metrics["train.best_epoch"] == best["epoch"]
    assert metrics["valid.recall@20"] == best["recall@20"]
    assert {"test.recall@20", "test.ndcg@20", "test.mrr", "test.hr@50"} <= set(metrics)
    assert metrics["train.world_size"] == 1


def test_training_interactions_are_the_train_split_rows(small_implicit: Path) -> None:
    users, items = training_interactions(small_implicit, load_schema(small_implicit))
    frame = pl.read_parquet(split_files(small_implicit, "train"), columns=["user_id", "item_id"])
    assert users.dtype == np.int64 and items.dtype == np.int64
    np.testing.assert_array_equal(users, frame["user_id"].to_numpy())
    np.testing.assert_array_equal(items, frame["item_id"].to_numpy())


def test_a_retriever_refuses_the_train_pipeline(small_implicit: Path, tmp_path: Path) -> None:
    """torchrec's pipeline prefetches the batch's ids only; a retriever also looks up the negatives it samples."""
    result = train_cli(small_implicit, tmp_path / "run", "trainer.pipeline=on", "trainer.max_steps=2", model="mf")
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert "trainer.pipeline" in error and "--model mf" in error


def test_sampled_softmax_trains_with_the_item_table_split_over_both_processes(small_implicit: Path,
                                                                              tmp_path: Path) -> None:
    """Partial FC-style: each step looks up the batch's positives and 64 shared sampled items from an item table
    whose columns live on both processes."""
    run = tmp_path / "run"
    result = train_cli(small_implicit, run, "model.loss=softmax", "model.sampling=in_batch", "model.negatives=64",
                       "trainer.max_steps=20", "trainer.log_every=1", "trainer.batch_size=256",
                       "sharding.sharding_types=[column_wise]", "sharding.min_partition=8", model="mf", nproc=2,
                       extra=("--config", str(REPO_ROOT / "configs" / "mf.yaml")))
    assert result.returncode == 0, result.stderr[-3000:]
    item_table = [line for line in (run / "plan.txt").read_text().splitlines() if ".item_id:" in line]
    assert len(item_table) == 1 and "rank 0" in item_table[0] and "rank 1" in item_table[0], item_table
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["split"] == "train"]
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    assert metrics["test.recall@20"] > 2 * 20 / metrics["test.items"]
