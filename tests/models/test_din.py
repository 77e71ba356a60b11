"""DIN, unsharded: the jagged activation unit against a padded reference, Dice, mini-batch aware L2, explain."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys.config import EmbeddingConfig
from recsys.embeddings import embedding_tables
from recsys.errors import RecsysError
from recsys.models import build_model, model_config
from recsys.models.din import DIN, ActivationUnit, Dice
from recsys.schema import Schema
from recsys.types import Batch
from tests.models.schemas import assert_every_parameter_learns

LENGTHS = [3, 0, 1, 5]  # ragged, with an empty history


def _schema(sequences: bool = True) -> Schema:
    return Schema.from_dict({
        "dense": [{"name": f"d{i}", "entity": "user", "transform": "none"} for i in range(2)],
        "sparse": [{"name": "item_id", "entity": "item"}, {"name": "item_category", "entity": "item"},
                   {"name": "city", "entity": "user"}],
        "sequences": [{"name": "hist_item_id", "table": "item_id", "max_length": 5},
                      {"name": "hist_category", "table": "item_category", "max_length": 5}] if sequences else [],
        "tables": [{"name": "item_id", "encoding": "identity", "cardinality": 10, "embedding_dim": 4},
                   {"name": "item_category", "encoding": "identity", "cardinality": 5, "embedding_dim": 4},
                   {"name": "city", "encoding": "identity", "cardinality": 4, "embedding_dim": 4}],
        "labels": [{"name": "label"}],
    })


def _batch() -> Batch:
    # item table: row 2 is row 2's target and in rows 0 (twice) and 3's histories; row 0 is absent
    # category table: row 4 absent; city table: row 3 absent
    items, categories, cities = [1, 4, 2, 5], [0, 1, 2, 0], [0, 2, 1, 1]
    history, history_categories = [2, 3, 2, 6, 7, 8, 9, 1, 2], [1, 2, 1, 3, 0, 1, 2, 3, 0]
    sparse = KeyedJaggedTensor(
        keys=["item_id", "item_category", "city", "hist_item_id", "hist_category"],
        values=torch.tensor(items + categories + cities + history + history_categories),
        lengths=torch.tensor([1] * 12 + LENGTHS + LENGTHS, dtype=torch.int32))
    return Batch(dense=torch.randn(4, 2), sparse=sparse, labels=torch.tensor([1.0, 0.0, 1.0, 0.0]))


def _model(seed: int = 0, **config: object) -> DIN:
    torch.manual_seed(seed)
    model = build_model("din", _schema(), {"attention_mlp": [8, 5, 1], "top_mlp": [16, 8, 1], **config},
                        EmbeddingConfig())
    # Dice starts with α = 0 and unit statistics; move both so the tests see every term of the formula.
    for name, module in model.named_modules():
        if isinstance(module, Dice):
            module.alpha.data.uniform_(-0.5, 0.5)
            module.norm.running_mean.uniform_(-0.3, 0.3)
            module.norm.running_var.uniform_(0.5, 2.0)
    return model


def _padded_reference(unit: ActivationUnit, history: JaggedTensor, target: torch.Tensor,
                      training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation unit on a (B, T, D) zero-padded history with a mask: (pooled (B, D), weights (B, T)).

    Dice's training statistics are taken over the real elements only (the mask), which is what the
    jagged computation gives without ever building the padding.
    """
    lengths = history.lengths().long()
    batch, longest, dim = len(lengths), int(lengths.max()), history.values().shape[1]
    mask = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    padded = torch.zeros(batch, longest, dim)
    padded[mask] = history.values()
    targets = target.unsqueeze(1).expand(batch, longest, dim)  # (B, T, D)
    x = torch.cat([padded, targets, padded - targets, padded * targets], dim=2)  # (B, T, 4D)
    for layer in unit.mlp[:-1]:
        x = layer._linear(x)
        dice = layer._activation_fn
        if training:
            mean, var = x[mask].mean(0), x[mask].var(0, unbiased=False)
        else:
            mean, var = dice.norm.running_mean, dice.norm.running_var
        p = torch.sigmoid((x - mean) / torch.sqrt(var + dice.norm.eps))
        x = p * x + (1 - p) * dice.alpha * x
    weights = unit.mlp[-1](x).squeeze(2) * mask  # (B, T)
    return (weights.unsqueeze(2) * padded).sum(1), weights


@pytest.mark.parametrize("training", [True, False])
def test_jagged_activation_unit_matches_padded_reference(training: bool) -> None:
    model = _model()
    model.train(training)
    embedded = model.sparse_arch(_batch().sparse)
    pooled = embedded.pooled.to_dict()
    for seq, target in model.interest_arch.pairs:
        unit = model.interest_arch.units[f"{seq}__{target}"]
        history = embedded.sequences[seq]
        expected, expected_weights = _padded_reference(unit, history, pooled[target], training)
        torch.testing.assert_close(unit(history, pooled[target]), expected)
        mask = torch.arange(5).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
        torch.testing.assert_close(unit.weights(history, pooled[target]), expected_weights[mask])
        assert expected[1].abs().sum() == 0  # the empty history pools to zeros


def test_forward_is_the_top_mlp_over_targets_attention_and_dense() -> None:
    model = _model().eval()
    batch = _batch()
    embedded = model.sparse_arch(batch.sparse)
    pooled = embedded.pooled.to_dict()
    assert model.interest_arch.pairs == [("hist_item_id", "item_id"), ("hist_category", "item_category")]
    interests = [_padded_reference(model.interest_arch.units[f"{s}__{t}"], embedded.sequences[s], pooled[t], False)[0]
                 for s, t in model.interest_arch.pairs]
    features = torch.cat([pooled["item_id"], pooled["item_category"], pooled["city"], *interests, batch.dense], 1)
    torch.testing.assert_close(model(batch), model.over_arch(features).squeeze(1))


def test_dice_uses_batch_statistics_in_training_and_moving_averages_in_evaluation() -> None:
    torch.manual_seed(0)
    dice = Dice(3, momentum=0.1)
    dice.alpha.data = torch.tensor([0.1, -0.2, 0.5])
    x = torch.randn(64, 3) * torch.tensor([1.0, 3.0, 0.5]) + torch.tensor([2.0, -1.0, 0.0])
    mean, var = x.mean(0), x.var(0, unbiased=False)

    def formula(s: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid((s - m) / torch.sqrt(v + 1e-8))
        return p * s + (1 - p) * dice.alpha * s

    out = dice(x)  # training: this batch's statistics
    torch.testing.assert_close(out, formula(x, mean, var))
    # the moving averages (from 0 and 1) took one step towards this batch
    torch.testing.assert_close(dice.norm.running_mean, 0.1 * mean)
    torch.testing.assert_close(dice.norm.running_var, 0.9 + 0.1 * x.var(0, unbiased=True))
    dice.eval()
    torch.testing.assert_close(dice(x), formula(x, 0.1 * mean, 0.9 + 0.1 * x.var(0, unbiased=True)))
    assert not torch.allclose(dice(x), out)
    # far above its mean a channel passes through, far below it is scaled by α (the paper's two regimes)
    spread = torch.tensor([[-1e3] * 3, [1e3] * 3])
    torch.testing.assert_close(dice(spread), torch.stack([-1e3 * dice.alpha, torch.full((3,), 1e3)]))
    # one training row has no variance: it is normalised by the moving averages instead of failing
    dice.eval()
    one = x[:1]
    expected = dice(one)
    dice.train()
    torch.testing.assert_close(dice(one), expected)


def test_mini_batch_l2_adds_lambda_w_once_per_present_row() -> None:
    l2 = 0.3
    batch = _batch()
    grads = {}
    for strength in (0.0, l2):
        model = _model(l2=strength).train()
        F.binary_cross_entropy_with_logits(model(batch), batch.labels).backward()
        tables = {table: parameter for name, parameter in model.named_parameters()
                  for table in [embedding_tables(model).get(name, (None, None))[1]] if table}
        grads[strength] = {table: parameter.grad.clone() for table, parameter in tables.items()}
        weights = {table: parameter.detach() for table, parameter in tables.items()}
    present = {"item_id": [1, 2, 3, 4, 5, 6, 7, 8, 9], "item_category": [0, 1, 2, 3], "city": [0, 1, 2]}
    for table, rows in present.items():
        expected = torch.zeros_like(weights[table])
        expected[rows] = l2 * weights[table][rows]  # once per row, however often it occurs
        torch.testing.assert_close(grads[l2][table] - grads[0.0][table], expected)


def test_mini_batch_l2_is_off_in_evaluation() -> None:
    batch = _batch()
    grads = []
    for strength in (0.0, 0.3):
        model = _model(l2=strength).eval()
        model(batch).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, penalised in zip(*grads):
        torch.testing.assert_close(plain, penalised)


def test_explain_returns_the_largest_attention_weights() -> None:
    model = _model().train()
    batch = _batch()
    statistics = [b.clone() for b in model.buffers()]
    rows = model.explain(batch, top=3)
    # explain leaves the mode and Dice's moving averages as they were, so the outputs too
    assert model.training and all(torch.equal(a, b) for a, b in zip(statistics, model.buffers()))
    model.eval()
    before = model(batch)
    assert model.explain(batch, top=3) == rows
    torch.testing.assert_close(model(batch), before)

    with torch.no_grad():
        embedded = model.sparse_arch(batch.sparse)
    pooled = embedded.pooled.to_dict()
    everything: list[list[tuple[str, float]]] = [[] for _ in LENGTHS]
    for seq, target in model.interest_arch.pairs:
        unit = model.interest_arch.units[f"{seq}__{target}"]
        _, weights = _padded_reference(unit, embedded.sequences[seq], pooled[target], False)
        for row, length in enumerate(LENGTHS):
            everything[row] += [(f"{seq}[{p}]", float(weights[row, p].detach())) for p in range(length)]
    assert len(rows) == 4 and rows[1] == []  # no history, nothing to explain
    for row, contributions in enumerate(rows):
        expected = sorted(everything[row], key=lambda item: item[1], reverse=True)[:3]
        assert [c.name for c in contributions] == [name for name, _ in expected]
        torch.testing.assert_close(torch.tensor([c.weight for c in contributions]),
                                   torch.tensor([weight for _, weight in expected]))
    assert len(model.explain(batch, top=100)[3]) == 10  # 5 items and 5 categories


def test_softmax_variant_normalises_each_row() -> None:
    model = _model(attention_norm="softmax").eval()
    embedded = model.sparse_arch(_batch().sparse)
    history = embedded.sequences["hist_item_id"]
    weights = model.interest_arch.units["hist_item_id__item_id"].weights(history, embedded.pooled.to_dict()["item_id"])
    sums = torch.segment_reduce(weights, "sum", lengths=history.lengths())
    torch.testing.assert_close(sums, torch.tensor([1.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_every_parameter_gets_a_gradient(l2: float) -> None:
    model = _model(l2=l2).train()
    batch = _batch()
    assert batch.labels.shape == (4,)
    assert_every_parameter_learns(model, batch, batch.labels)


def test_bad_config_is_one_clear_line() -> None:
    with pytest.raises(RecsysError, match="top_mlp must end with 1, got 2"):
        model_config("din", {"top_mlp": [8, 2]})
    with pytest.raises(RecsysError, match="l2"):
        model_config("din", {"l2": -1})
    with pytest.raises(RecsysError, match="atention_mlp"):
        model_config("din", {"atention_mlp": [4, 1]})
    with pytest.raises(RecsysError, match="din: the schema has no sequence features"):
        build_model("din", _schema(sequences=False), {}, EmbeddingConfig())
