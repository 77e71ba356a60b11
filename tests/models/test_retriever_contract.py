"""The retriever contract, for every registered retriever: a new retriever file is tested the moment it registers.

Each retriever is built from its ``configs/NAME.yaml`` on small synthetic implicit data (users and items in
communities). Unsharded: user and item vectors of one dim, PairScores of consistent shapes, and a gradient for
every parameter under each loss the model accepts. Then one real ``recsys train --nproc 2`` (gloo, the planner's
sharding) per model: the loss decreases, the test Recall@20 (full ranking) beats a random ranking's, tables sit
on both processes, and the artifact's exported item vectors, reloaded in a fresh process, give the same vectors,
scores and test recall as the sharded model measured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys import artifact
from recsys.config import TrainConfig
from recsys.data.layout import load_schema
from recsys.data.reader import ParquetReader
from recsys.errors import RecsysError
from recsys.embeddings import scheme_names
from recsys.models import build_model, model_names, model_spec
from recsys.models.retriever import PairScores, RetrievalLoss, Retriever
from recsys.tasks import task_spec
from tests.conftest import REPO_ROOT, run_python, train_cli
from tests.trained_runs import assert_two_process_run_learned

RETRIEVERS = [name for name in model_names() if model_spec(name).retriever]
STEPS = 30


def _config(name: str) -> TrainConfig:
    return TrainConfig.load(REPO_ROOT / "configs" / f"{name}.yaml")


def _build(name: str, data: Path, **model: object) -> Retriever:
    config = _config(name)
    torch.manual_seed(0)
    built = build_model(name, load_schema(data), config.model | model, config.embedding)
    if callable(getattr(built, "attach_interactions", None)):
        from recsys.train.retrieval import training_interactions

        built.attach_interactions(*training_interactions(data, load_schema(data)))
    assert isinstance(built, Retriever)
    return built


@pytest.mark.parametrize("name", RETRIEVERS)
def test_vectors_and_pair_scores_have_consistent_shapes(name: str, small_implicit: Path) -> None:
    model = _build(name, small_implicit)
    batch = next(iter(ParquetReader(small_implicit, "train", 32)))
    users, items = model.user_vectors(batch), model.item_vectors(batch)
    assert users.shape == items.shape and users.shape[0] == 32 and users.dtype == torch.float32
    assert model.score(users, items).shape == (32, 32)
    out = model(batch)
    assert isinstance(out, PairScores)
    assert out.scores.dim() == 2 and out.scores.shape[0] == 32 and out.target.shape == (32,)
    assert bool((out.target >= 0).all()) and bool((out.target < out.scores.shape[1]).all())
    if out.exclude is not None:
        assert out.exclude.shape == out.scores.shape
        assert not bool(out.exclude.gather(1, out.target.unsqueeze(1)).any())  # a positive is never excluded


@pytest.mark.parametrize("loss", list(RetrievalLoss))
@pytest.mark.parametrize("name", RETRIEVERS)
def test_every_parameter_learns_under_each_loss(name: str, loss: RetrievalLoss, small_implicit: Path) -> None:
    sampling = {"sampling": "in_batch"} if loss is RetrievalLoss.SOFTMAX else {}
    try:
        model = _build(name, small_implicit, loss=loss.value, **sampling)
    except RecsysError as exc:  # a model may support only some losses: its config says which
        pytest.skip(f"{name} does not take loss {loss.value}: {exc}")
    batch = next(iter(ParquetReader(small_implicit, "train", 64)))
    value = task_spec(load_schema(small_implicit)).loss(model(batch), batch.labels)
    assert value.dim() == 0 and bool(torch.isfinite(value))
    value.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not silent, f"{name} ({loss.value}): no gradient reaches {silent}"


@pytest.mark.parametrize("scheme", [s for s in scheme_names() if s != "standard"])
@pytest.mark.parametrize("name", RETRIEVERS)
def test_every_retriever_learns_through_every_scheme(name: str, scheme: str, small_implicit: Path) -> None:
    """Each compressing scheme holds every table (user_id, item_id) at 1/4 of its rows: the vectors keep their
    shapes, the loss is finite and every parameter gets a gradient."""
    config = TrainConfig.load(REPO_ROOT / "configs" / f"{name}.yaml",
                              [f"embedding.scheme={scheme}", "embedding.ratio=4"])
    torch.manual_seed(0)
    model = build_model(name, load_schema(small_implicit), config.model, config.embedding)
    if callable(getattr(model, "attach_interactions", None)):
        from recsys.train.retrieval import training_interactions

        model.attach_interactions(*training_interactions(small_implicit, load_schema(small_implicit)))
    batch = next(iter(ParquetReader(small_implicit, "train", 64)))
    assert model.user_vectors(batch).shape == model.item_vectors(batch).shape
    value = task_spec(load_schema(small_implicit)).loss(model(batch), batch.labels)
    assert bool(torch.isfinite(value))
    value.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not silent, f"{name} with {scheme}: no gradient reaches {silent}"


def _train(name: str, data: Path, out: Path, nproc: int, *more: str) -> subprocess.CompletedProcess[str]:
    return train_cli(data, out, f"trainer.max_steps={STEPS}", "trainer.epochs=1", "trainer.log_every=1",
                     "trainer.batch_size=256", "trainer.checkpoint_every=0", model=name, nproc=nproc,
                     extra=("--config", str(REPO_ROOT / "configs" / f"{name}.yaml"), *more))


@pytest.fixture(scope="module", params=RETRIEVERS)
def trained(request: pytest.FixtureRequest, small_implicit: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[str, Path]:
    """(model, run folder): 30 steps of ``recsys train --nproc 2`` with the model's config, one evaluation."""
    name = request.param
    out = tmp_path_factory.mktemp(f"retriever-{name}") / "run"
    result = _train(name, small_implicit, out, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Recall@20" in result.stdout + result.stderr  # the summary line names the primary metric
    return name, out


@pytest.mark.slow
def test_two_process_sharded_training_learns_to_rank(trained: tuple[str, Path]) -> None:
    name, run = trained
    assert_two_process_run_learned(run, STEPS, name)
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    items, users = metrics["test.items"], metrics["test.users"]
    assert items == 200 and users > 100
    # A random ranking finds about 20 / |items| of a user's test items in its top 20.
    assert metrics["test.recall@20"] > 2 * 20 / items, (name, metrics["test.recall@20"])
    assert metrics["valid.recall@20"] > 2 * 20 / items


_RELOAD = """
import sys, numpy as np, torch
from recsys import artifact
from recsys.data.reader import ParquetReader
from recsys.eval.retrieval import evaluate_retriever, item_catalogue
loaded = artifact.load(sys.argv[1])
model = loaded.model
with torch.no_grad():
    items = torch.cat([model.item_vectors(b) for b in item_catalogue(sys.argv[2], loaded.schema).batches(4096)])
    batch = next(iter(ParquetReader(sys.argv[2], "test", 256, schema=loaded.schema)))
    users = model.user_vectors(batch)
    scores = model.score(users, items)
    recall = evaluate_retriever(model.user_vectors, model.item_vectors, model.similarity, sys.argv[2], "test")
np.savez(sys.argv[3], items=items.numpy(), users=users.numpy(), scores=scores.numpy(),
         recall=np.array(recall["recall@20"]))
"""


@pytest.mark.slow
def test_exported_vectors_reload_in_a_fresh_process_with_the_same_scores(trained: tuple[str, Path],
                                                                          small_implicit: Path, tmp_path: Path) -> None:
    name, run = trained
    out = tmp_path / "reloaded.npz"
    result = run_python(_RELOAD, str(run / "artifact"), str(small_implicit), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = np.load(out)
    keys, exported, similarity = artifact.load_item_vectors(run / "artifact")
    assert similarity == _build(name, small_implicit).similarity.value
    assert len(keys) == 200 and len(set(keys)) == 200
    np.testing.assert_allclose(fresh["items"], exported.numpy(), rtol=0, atol=1e-6)
    loaded = artifact.load(run / "artifact")
    batch = next(iter(ParquetReader(small_implicit, "test", 256, schema=loaded.schema)))
    with torch.no_grad():
        users = loaded.model.user_vectors(batch)
        scores = loaded.model.score(users, exported)
    np.testing.assert_allclose(fresh["users"], users.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(fresh["scores"], scores.numpy(), rtol=0, atol=1e-5)
    # The sharded model's test recall, measured during training, from the reloaded model in a fresh process.
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    assert float(fresh["recall"]) == pytest.approx(metrics["test.recall@20"], abs=1e-6)


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_in_one_with_the_same_test_recall(trained: tuple[str, Path],
                                                                              small_implicit: Path,
                                                                              tmp_path: Path) -> None:
    """The checkpoint holds the weights the sharded model was evaluated with, dense layers included (the same on
    every process): resumed with nothing left to train, one process measures the same test recall."""
    name, run = trained
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    result = _train(name, small_implicit, copy, 1, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    before = json.loads((run / "artifact" / "metrics.json").read_text())
    after = json.loads((copy / "artifact" / "metrics.json").read_text())
    assert after["train.world_size"] == 1
    assert after["test.recall@20"] == pytest.approx(before["test.recall@20"], abs=1e-6)
    assert after["test.ndcg@20"] == pytest.approx(before["test.ndcg@20"], abs=1e-6)
