"""AutoInt, unsharded: the interacting layer against the paper's formulas, AutoInt+ as a sum, explanations."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.config import EmbeddingConfig
from recsys.embeddings import build_embeddings
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.models.autoint import AutoInt, AutoIntConfig
from recsys.types import Batch
from tests.models.schemas import assert_every_parameter_learns, small_schema, three_rows

SMALL = {"attention_layers": 2, "heads": 2, "attention_dim": 3}


def _model(section: dict, dense: int = 3) -> tuple[AutoInt, Batch]:
    torch.manual_seed(0)
    schema = small_schema(dense)
    model = build_model("autoint", schema, {**SMALL, **section}, EmbeddingConfig())
    assert isinstance(model, AutoInt)
    return model, three_rows(schema)


def _paper_layer(layer: torch.nn.Module, x: torch.Tensor, scaled: bool) -> torch.Tensor:
    """Paper eq. 5-8, head by head: α = softmax_k <W_Q e_m, W_K e_k> (/ sqrt(d')), ẽ = Σ α W_V e_k,
    then ReLU(⊕_h ẽ + W_res e)."""
    d = layer.attention_dim
    heads = []
    for h in range(layer.heads):
        rows = slice(h * d, (h + 1) * d)
        wq, wk, wv = (linear.weight[rows] for linear in (layer.query, layer.key, layer.value))  # (d', in)
        psi = torch.einsum("bmi,ji,bkl,jl->bmk", x, wq, x, wk) / (math.sqrt(d) if scaled else 1.0)  # (B, F, F)
        alpha = psi.softmax(dim=-1)
        heads.append(torch.einsum("bmk,bki,ji->bmj", alpha, x, wv))  # (B, F, d')
    out = torch.cat(heads, dim=-1)  # (B, F, H d')
    if layer.residual is not None:
        out = out + x @ layer.residual.weight.T
    return torch.relu(out)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("scaled", [True, False])
def test_forward_is_the_papers_interacting_layers(residual: bool, scaled: bool) -> None:
    model, batch = _model({"residual": residual, "scaled": scaled})
    x = model.field_vectors(batch)
    assert x.shape == (3, 6, 4)  # 3 dense + item_id, hist_item_id, city fields, all of the embedding dim
    h = x
    for layer in model.interacting:
        h = _paper_layer(layer, h, scaled)
    expected = (h.flatten(1) @ model.output.weight.T + model.output.bias).squeeze(1)
    torch.testing.assert_close(model(batch), expected)


@pytest.mark.parametrize("scaled", [True, False])
def test_attention_weights_are_a_distribution_over_keys(scaled: bool) -> None:
    model, batch = _model({"attention_layers": 3, "scaled": scaled})
    weights = model.attention(batch)
    assert len(weights) == 3
    for w in weights:
        assert w.shape == (3, 2, 6, 6)  # (B, heads, F, F)
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(dim=-1), torch.ones(3, 2, 6))
    # the weights are the ones the forward uses: the explicit path gives the same outputs as SDPA
    h = model.field_vectors(batch)
    for layer in model.interacting:
        explicit, _ = layer(h, need_weights=True)
        fused, _ = layer(h)
        torch.testing.assert_close(explicit, fused)
        h = fused


def test_residual_path_is_w_res_and_can_be_switched_off() -> None:
    model, batch = _model({})
    layer = model.interacting[0]
    x = model.field_vectors(batch).detach()
    with torch.no_grad():
        layer.value.weight.zero_()  # the attention contributes nothing: only the residual remains
    out, _ = layer(x)
    torch.testing.assert_close(out, torch.relu(x @ layer.residual.weight.T))
    assert out.abs().sum() > 0
    plain, _ = _model({"residual": False})
    assert all(layer.residual is None for layer in plain.interacting)
    assert not any("residual" in name for name, _ in plain.named_parameters())


def test_autoint_plus_is_the_attention_logit_plus_the_dnn_logit() -> None:
    model, batch = _model({"dnn": [8, 5]})
    both = model(batch)
    dnn = model.dnn(model.field_vectors(batch).flatten(1)).squeeze(1)  # the DNN reads the flattened fields
    model.dnn = None  # plain AutoInt with the same attention weights
    torch.testing.assert_close(both, model(batch) + dnn)
    plain, _ = _model({})
    assert plain.dnn is None


def test_explain_names_the_first_layers_top_pairs() -> None:
    model, batch = _model({})
    before = model(batch)
    explained = model.explain(batch, top=4)
    torch.testing.assert_close(model(batch), before)  # explaining changes nothing
    first = model.attention(batch)[0].mean(dim=1)  # (B, F, F)
    names = model.field_names
    assert names == ["d0", "d1", "d2", "item_id", "hist_item_id", "city"]  # sparse_arch.feature_names order
    for row, contributions in enumerate(explained):
        expected = sorted(((float(first[row, a, b] + first[row, b, a]) / 2, f"{names[a]}×{names[b]}")
                           for a in range(6) for b in range(a + 1, 6)), reverse=True)[:4]
        assert [c.name for c in contributions] == [name for _, name in expected]
        assert [c.weight for c in contributions] == pytest.approx([w for w, _ in expected])
    assert len(model.explain(batch, top=100)[0]) == 15  # every pair once, no field with itself


@pytest.mark.parametrize("dnn", [[], [8]])
@pytest.mark.parametrize("dense", [3, 0])
def test_backward_reaches_every_parameter(dnn: list[int], dense: int) -> None:
    model, batch = _model({"dnn": dnn}, dense)
    assert_every_parameter_learns(model, batch, torch.tensor([1.0, 0.0, 1.0]))


def test_bad_config_is_one_clear_line() -> None:
    schema = small_schema()
    with pytest.raises(RecsysError, match="heads"):
        build_model("autoint", schema, {"heads": 0}, EmbeddingConfig())
    with pytest.raises(RecsysError, match="dnn layer sizes must be at least 1"):
        build_model("autoint", schema, {"dnn": [8, 0]}, EmbeddingConfig())
    with pytest.raises(RecsysError, match="layers"):
        build_model("autoint", schema, {"layers": 3}, EmbeddingConfig())  # unknown key
    mixed = schema.model_copy(deep=True)
    mixed.tables[1].embedding_dim = 6
    projected = AutoInt(mixed, AutoIntConfig(), build_embeddings(mixed, EmbeddingConfig()))
    assert projected.dim == 6  # the 4-dim tables projected to the widest
