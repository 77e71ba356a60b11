"""The ranking model contract, for every registered ranking model: a new model file is tested the moment it
registers (retrievers need an implicit schema: tests/models/test_retriever_contract.py holds theirs).

Each model is built from its ``configs/NAME.yaml`` (the tuned defaults users start from) on the synthetic
CTR data (dense, user/item/context sparse features, histories sharing the item tables). Unsharded: output
shapes, finite logits, a gradient for every parameter. Then, per model, one real ``recsys train --nproc 2``
(gloo, the planner's sharding) for 20 steps, whose artifact must reload in a fresh process with the same
predictions and be served by ``recsys serve`` over HTTP, from a real Redis, with the offline scores.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

from recsys.config import TrainConfig
from recsys.data.layout import load_schema
from recsys.models import build_model, model_names, model_spec
from services.feature_store.embedded import EmbeddedRedis
from tests.conftest import REPO_ROOT, train_cli
from tests.trained_runs import (assert_learns_from_a_batch, assert_reloads_with_the_same_predictions,
                                assert_served_with_the_offline_scores, assert_two_process_run_learned)

# Retrievers need an implicit schema: tests/models/test_retriever_contract.py holds their contract.
MODELS = [name for name in model_names() if not model_spec(name).retriever]
STEPS = 20


def _config(name: str) -> TrainConfig:
    return TrainConfig.load(REPO_ROOT / "configs" / f"{name}.yaml")


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_every_parameter_learns(name: str, small_ctr: Path) -> None:
    config = _config(name)
    schema = load_schema(small_ctr)
    torch.manual_seed(0)
    model = build_model(name, schema, config.model, config.embedding)
    assert_learns_from_a_batch(model, small_ctr, name)
    source = inspect.getsource(sys.modules[type(model).__module__])
    assert not re.search(r"^\s*(from|import) (recsys\.distributed|torch\.distributed)", source, re.MULTILINE)  # no sharding


@pytest.fixture(scope="module", params=MODELS)
def trained(request: pytest.FixtureRequest, small_ctr: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[str, Path]:
    """(model, run folder): 20 steps of ``recsys train --nproc 2`` with the model's config."""
    name = request.param
    out = tmp_path_factory.mktemp(f"contract-{name}") / "run"
    result = train_cli(small_ctr, out, f"trainer.max_steps={STEPS}", "trainer.log_every=1", "trainer.batch_size=256",
                       "trainer.checkpoint_every=0", model=name, nproc=2,
                       extra=("--config", str(REPO_ROOT / "configs" / f"{name}.yaml")))
    assert result.returncode == 0, result.stderr[-3000:]
    return name, out


@pytest.mark.slow
def test_two_process_sharded_training_learns(trained: tuple[str, Path]) -> None:
    name, run = trained
    assert_two_process_run_learned(run, STEPS, name)


@pytest.mark.slow
def test_artifact_reloads_in_a_fresh_process_with_the_same_predictions(trained: tuple[str, Path], small_ctr: Path,
                                                                        tmp_path: Path) -> None:
    assert_reloads_with_the_same_predictions(trained[1], small_ctr, tmp_path)


@pytest.mark.slow
def test_served_over_http_with_the_offline_scores(trained: tuple[str, Path], small_ctr: Path,
                                                  contract_redis: EmbeddedRedis, tmp_path: Path) -> None:
    name, run = trained
    assert_served_with_the_offline_scores(name, run, small_ctr, contract_redis, tmp_path)
