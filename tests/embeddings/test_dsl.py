"""Dynamic Sparse Learning: the budget holds, prune-and-grow swaps the smallest active weights, masked weights learn
nothing, and a real 2-process run moves the mask within the budget."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import TrainConfig
from recsys.embeddings import LogicalTable, build_embeddings, embedding_tables, table_vectors
from recsys.embeddings.dsl import DSLOptions, DSLPart, swap_fraction
from tests.conftest import REPO_ROOT, train_cli
from tests.embeddings.test_schemes import _schema


def _part(ratio: float = 4, **options: float) -> DSLPart:
    return DSLPart(LogicalTable("t", 100, 8, ("t",), False), DSLOptions(ratio=ratio, **options))


def test_the_budget_holds_and_the_smallest_active_weights_are_swapped() -> None:
    part = _part(update_every=10, swap_fraction=0.5)
    assert int(part.mask.sum()) == part.parameter_count == 200
    weight = torch.randn(100, 8)
    before = part.mask.clone()
    assert part.update(5, 1000, lambda _: weight) == 0  # not an update step
    swapped = part.update(10, 1000, lambda _: weight)
    assert swapped == int(swap_fraction(10, 1000, part.options) * 200) > 90
    assert int(part.mask.sum()) == 200  # the budget holds
    pruned, grown = before & ~part.mask, part.mask & ~before
    assert int(pruned.sum()) == int(grown.sum()) == swapped
    # every pruned weight is smaller than every active weight that stayed
    assert float(weight.abs()[pruned].max()) <= float(weight.abs()[before & part.mask].min())
    assert part.update(800, 1000, lambda _: weight) == 0  # past stop_fraction (0.75)


def test_masked_weights_give_zeros_and_learn_nothing() -> None:
    schema = _schema({"t": 50}, dim=4)
    module = build_embeddings(schema, TrainConfig.load(None, ["embedding.scheme=dsl", "embedding.ratio=3"]).embedding)
    mask = module.parts["t"].mask
    vectors = table_vectors(module, "t", torch.arange(50))
    assert bool((vectors[~mask] == 0).all()) and bool((vectors[mask] != 0).all())
    (name, _), = embedding_tables(module).items()
    weight = dict(module.named_parameters())[name]
    module(KeyedJaggedTensor(keys=["t"], values=torch.arange(50), lengths=torch.ones(50, dtype=torch.int64))
           ).pooled.values().sum().backward()
    assert weight.grad is not None
    assert bool((weight.grad.to_dense()[~mask] == 0).all()) and bool((weight.grad.to_dense()[mask] != 0).all())


def test_two_process_training_moves_the_mask_within_the_budget(small_ctr: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train_cli(small_ctr, out, "embedding.scheme=dsl", "embedding.ratio=4", "embedding.update_every=5",
                       "trainer.max_steps=20", "trainer.batch_size=256", nproc=2,
                       extra=("--config", str(REPO_ROOT / "configs" / "dlrm.yaml")))
    assert result.returncode == 0, result.stderr[-3000:]
    weights = load_file(str(out / "artifact" / "weights.safetensors"))
    part = DSLPart(LogicalTable("C12", *weights["sparse_arch.parts.C12.mask"].shape, ("C12",), False),
                   DSLOptions(ratio=4))
    exported = weights["sparse_arch.parts.C12.mask"]
    assert int(exported.sum()) == part.parameter_count  # the budget held through training
    assert not torch.equal(exported, part.mask)  # and the mask moved from its initial draw
    # the artifact reloads and predicts (both processes held the same mask: tests/embeddings/test_scheme_contract.py
    # checks the reloaded model's test AUC equals the one the sharded model measured)
