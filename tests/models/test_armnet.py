"""ARM-Net, unsharded: sparse gates, exponential cross features, explain, gradients, bad configs."""

from __future__ import annotations

import pytest
import torch

from recsys.config import EmbeddingConfig, TrainConfig
from recsys.embeddings import build_embeddings
from recsys.errors import RecsysError
from recsys.models import build_model, model_config
from recsys.models.armnet import ARMNet, ARMNetConfig
from recsys.schema import Schema
from recsys.types import Batch
from tests.conftest import REPO_ROOT
from tests.models.schemas import (
    assert_every_parameter_learns,
    random_rows,
    small_schema,
)

FIELDS = ["item_id", "city", "device", "hist_item_id", "d0", "d1", "d2"]


def _schema(dense: int = 3) -> Schema:
    return small_schema(dense, fields=("city", "device"))


def _batch(schema: Schema, rows: int = 4) -> Batch:
    return random_rows(schema, rows, shortest_history=1)


SMALL = {"heads": 2, "neurons": 3, "mlp": [8, 1]}


def _model(schema: Schema, **config: object) -> ARMNet:
    torch.manual_seed(0)
    model = build_model("armnet", schema, {**SMALL, **config}, EmbeddingConfig())
    with torch.no_grad():  # spread the attention scores so entmax prunes for sure
        model.gates.queries.mul_(40.0)
    return model


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_gates_are_sparse_and_sum_to_one(alpha: float) -> None:
    schema = _schema()
    model = _model(schema, alpha=alpha)
    gates = model.interaction_weights(_batch(schema))
    assert gates.shape == (4, 2 * 3, len(FIELDS))
    torch.testing.assert_close(gates.sum(dim=2), torch.ones(4, 6))
    assert (gates >= 0).all()
    assert (gates == 0).sum() > gates.numel() // 4  # exact zeros, not small weights
    assert ((gates > 0).sum(dim=2) >= 1).all()


def test_cross_features_are_exp_of_the_weighted_log_space_sum() -> None:
    schema = _schema()
    model = _model(schema).eval()
    batch = _batch(schema)
    embeddings = model.field_embeddings(batch)  # (B, F, D), log space
    gates = model.interaction_weights(batch)  # (B, H·K, F)
    values = model.values.detach().flatten(0, 1)  # (H·K, F)
    expected = torch.empty(4, 6, 4)
    for row in range(4):
        for neuron in range(6):
            exponent = sum(gates[row, neuron, j] * values[neuron, j] * embeddings[row, j] for j in range(len(FIELDS)))
            expected[row, neuron] = torch.exp(exponent)
    crosses = model.crosses(embeddings)
    torch.testing.assert_close(crosses, expected)
    # a pruned field does not enter its neuron's product at all
    kept = gates > 0
    sparse_only = torch.exp(torch.einsum("bnf,bfd->bnd", torch.where(kept, gates * values, 0.0), embeddings))
    assert torch.equal(crosses.detach(), sparse_only.detach())

    seen: list[torch.Tensor] = []
    model.mlp.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    logits = model(batch)
    torch.testing.assert_close(seen[0], model.cross_norm(expected).flatten(1))
    torch.testing.assert_close(logits, model.mlp(seen[0]).squeeze(1))


def test_explain_names_the_fields_each_neuron_kept() -> None:
    schema = _schema()
    model = _model(schema).eval()
    batch = _batch(schema)
    before = model(batch)
    explained = model.explain(batch, top=3)
    torch.testing.assert_close(model(batch), before)  # explaining changes nothing
    state = {key: value.clone() for key, value in model.state_dict().items()}
    model.train().explain(batch, top=3)  # not even the batch-norm statistics in training mode
    model.eval()
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())

    gates = model.interaction_weights(batch)
    names = model.field_names  # the embedding module's pooled keys, then the dense features
    assert sorted(names) == sorted(FIELDS) and names[-3:] == ["d0", "d1", "d2"]
    magnitude = (gates * model.values.detach().flatten(0, 1)).abs().sum(dim=2)  # (B, H·K)
    assert len(explained) == 4
    for row, contributions in enumerate(explained):
        shares: dict[str, float] = {}
        for neuron in range(6):
            name = "×".join(names[j] for j in range(len(names)) if gates[row, neuron, j] > 0)
            shares[name] = shares.get(name, 0.0) + float(magnitude[row, neuron] / magnitude[row].sum())
        expected = sorted(shares.items(), key=lambda item: -item[1])[:3]
        assert [c.name for c in contributions] == [name for name, _ in expected]
        assert [c.weight for c in contributions] == pytest.approx([share for _, share in expected])
        assert all(name.split("×") and set(name.split("×")) <= set(FIELDS) for name, _ in expected)
    # every cross's field list is exactly the support of some neuron's gates
    supports = {frozenset(names[j] for j in (gates[0, n] > 0).nonzero().flatten().tolist()) for n in range(6)}
    assert all(frozenset(c.name.split("×")) in supports for c in explained[0])
    assert sum(c.weight for c in model.explain(batch, top=100)[0]) == pytest.approx(1.0)


@pytest.mark.parametrize(("dense", "dnn"), [(3, None), (3, [8, 1]), (0, [8, 1])])
def test_backward_reaches_every_parameter(dense: int, dnn: list[int] | None) -> None:
    schema = _schema(dense)
    torch.manual_seed(0)
    model = build_model("armnet", schema, {**SMALL, "dnn": dnn}, EmbeddingConfig())
    assert_every_parameter_learns(model, _batch(schema, rows=6), torch.ones(6))


def test_ensemble_starts_as_the_mean_of_both_logits() -> None:
    schema = _schema()
    model = _model(schema, dnn=[8, 1]).eval()
    batch = _batch(schema)
    raw = model.raw_fields(batch)
    arm = model.mlp(model.cross_norm(model.crosses(model.field_norm(raw))).flatten(1)).squeeze(1)
    deep = model.dnn(raw.flatten(1)).squeeze(1)
    torch.testing.assert_close(model(batch), 0.5 * arm + 0.5 * deep)


def test_bad_config_is_one_clear_line() -> None:
    schema = _schema()
    with pytest.raises(RecsysError, match=r"model \(armnet\).*alpha"):
        build_model("armnet", schema, {**SMALL, "alpha": 1.0}, EmbeddingConfig())
    with pytest.raises(RecsysError, match=r"model \(armnet\).*mlp must end with 1"):
        build_model("armnet", schema, {**SMALL, "mlp": [8, 4]}, EmbeddingConfig())
    with pytest.raises(RecsysError, match=r"model \(armnet\).*dnn must end with 1"):
        build_model("armnet", schema, {**SMALL, "dnn": [8, 2]}, EmbeddingConfig())
    with pytest.raises(RecsysError, match=r"model \(armnet\).*heads"):
        build_model("armnet", schema, {**SMALL, "heads": 0}, EmbeddingConfig())
    mixed = schema.model_copy(deep=True)
    mixed.tables[1].embedding_dim = 6
    projected = ARMNet(mixed, ARMNetConfig(**SMALL), build_embeddings(mixed, EmbeddingConfig()))
    assert projected.dim == 6  # the 4-dim tables projected to the widest


def test_shipped_config_builds() -> None:
    config = TrainConfig.load(REPO_ROOT / "configs" / "armnet.yaml")
    assert isinstance(model_config("armnet", config.model), ARMNetConfig)
