"""The embedding-scheme contract, for every registered scheme: a new scheme file is tested the moment it registers.

Each scheme is the default of a model whose ``C1`` table stays a full table and whose ``C2`` table is hashed (a
mix of schemes in one model), at a quarter of the full tables' memory, on the synthetic CTR data. Unsharded, for
every registered model: finite logits and a gradient for every parameter. Then one real ``recsys train --nproc 2``
of DLRM per scheme (gloo, the planner's sharding), whose plan names the logical tables, whose embedding parameters are
below the full tables', whose artifact reloads in a fresh process with the same predictions and is served by
``recsys serve`` over HTTP, from a real Redis, with the offline scores. The standard scheme's runs are the model
contract's (tests/models/test_contract.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recsys.config import TrainConfig
from recsys.data.layout import load_schema
from recsys.embeddings import scheme_names
from recsys.models import build_model, model_names, model_spec
from services.feature_store.embedded import EmbeddedRedis
from tests.conftest import REPO_ROOT, train_cli
from tests.trained_runs import (assert_learns_from_a_batch, assert_reloads_with_the_same_predictions,
                                assert_served_with_the_offline_scores, assert_two_process_run_learned)

# Retrievers need an implicit schema: tests/models/test_retriever_contract.py runs them through the schemes.
RANKERS = [n for n in model_names() if not model_spec(n).retriever]
SCHEMES = scheme_names()
COMPRESSING = [s for s in SCHEMES if s != "standard"]
STEPS = 20


def _settings(scheme: str) -> list[str]:
    mixed = ["embedding.tables.C1.scheme=standard"] + (["embedding.tables.C2.scheme=hash"] if scheme != "hash" else [])
    return [f"embedding.scheme={scheme}", "embedding.ratio=4", *mixed]


@pytest.mark.parametrize("model_name", RANKERS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_model_learns_through_the_scheme(scheme: str, model_name: str, small_ctr: Path) -> None:
    config = TrainConfig.load(REPO_ROOT / "configs" / f"{model_name}.yaml", _settings(scheme))
    schema = load_schema(small_ctr)
    torch.manual_seed(0)
    model = build_model(model_name, schema, config.model, config.embedding)
    assert model.sparse_arch.schemes["C1"] == "standard" and model.sparse_arch.schemes["C3"] == scheme
    assert_learns_from_a_batch(model, small_ctr, f"{scheme}/{model_name}")


@pytest.fixture(scope="module", params=COMPRESSING)
def trained(request: pytest.FixtureRequest, small_ctr: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[str, Path]:
    """(scheme, run folder): 20 steps of ``recsys train --model dlrm --nproc 2`` with the scheme the default."""
    scheme = request.param
    out = tmp_path_factory.mktemp(f"scheme-{scheme}") / "run"
    result = train_cli(small_ctr, out, *_settings(scheme), f"trainer.max_steps={STEPS}", "trainer.log_every=1",
                       "trainer.batch_size=256", nproc=2, extra=("--config", str(REPO_ROOT / "configs" / "dlrm.yaml")))
    assert result.returncode == 0, result.stderr[-3000:]
    return scheme, out


@pytest.mark.slow
def test_two_process_sharded_training_learns_within_the_budget(trained: tuple[str, Path]) -> None:
    scheme, run = trained
    assert_two_process_run_learned(run, STEPS, scheme)
    plan = (run / "plan.txt").read_text()
    # logical tables head their physical ones; the full table C1 keeps its one line
    assert f"C3 ({scheme})" in plan or "(shared by" in plan, plan
    assert "\nsparse_arch.ebc.C1:" in "\n" + plan or "\nsparse_arch.ecs.0.C1:" in "\n" + plan, plan
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    assert 0 < metrics["embedding_params"] < metrics["embedding_params_full"], metrics
    assert 0 < metrics["embedding_bytes"] <= metrics["embedding_bytes_full"], metrics
    assert metrics["dense_bytes"] > 0


@pytest.mark.slow
def test_artifact_reloads_in_a_fresh_process_with_the_same_predictions(trained: tuple[str, Path], small_ctr: Path,
                                                                        tmp_path: Path) -> None:
    assert_reloads_with_the_same_predictions(trained[1], small_ctr, tmp_path)


@pytest.mark.slow
def test_served_over_http_with_the_offline_scores(trained: tuple[str, Path], small_ctr: Path,
                                                  contract_redis: EmbeddedRedis, tmp_path: Path) -> None:
    assert_served_with_the_offline_scores("dlrm", trained[1], small_ctr, contract_redis, tmp_path)
