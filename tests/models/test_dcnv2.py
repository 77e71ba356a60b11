"""DCN-v2, unsharded: the cross layer against its formula, low rank as U V^T, stacked and parallel wiring."""

from __future__ import annotations

import pytest
import torch
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet

from recsys.config import EmbeddingConfig
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.models.dcnv2 import DCNv2
from recsys.schema import Schema
from recsys.types import Batch
from tests.models.schemas import assert_every_parameter_learns, small_schema, three_rows


def _schema(dense: int = 3) -> Schema:
    # tables of different dims: x0 is a concatenation, DCN needs no common dim
    return small_schema(dense, dims={"city": 6})


def _model(section: dict, dense: int = 3) -> tuple[DCNv2, Batch]:
    torch.manual_seed(0)
    schema = _schema(dense)
    model = build_model("dcnv2", schema, {"cross_layers": 2, "deep": [8, 5], **section}, EmbeddingConfig())
    assert isinstance(model, DCNv2)
    return model, three_rows(schema)


def test_input_is_dense_then_pooled_embeddings() -> None:
    model, batch = _model({})
    x0 = model.inputs(batch)
    pooled = model.sparse_arch(batch.sparse).pooled.values()
    assert x0.shape == (3, 3 + 4 + 6 + 4)  # raw dense and the item_id, hist_item_id, city vectors
    torch.testing.assert_close(x0, torch.cat([batch.dense, pooled], dim=1))
    bottom, batch = _model({"bottom_mlp": [7, 2]})
    assert bottom.inputs(batch).shape == (3, 2 + 14)
    torch.testing.assert_close(bottom.inputs(batch)[:, :2], bottom.dense_arch(batch.dense))


def test_full_rank_cross_layers_are_x0_times_wx_plus_b_plus_x() -> None:
    model, batch = _model({"cross_layers": 3})
    assert isinstance(model.cross, CrossNet)
    with torch.no_grad():
        for bias in model.cross.bias:  # torchrec starts the biases at zero; make them count
            bias.normal_()
    x0 = model.inputs(batch)
    x = x0
    for w, b in zip(model.cross.kernels, model.cross.bias):
        assert w.shape == (17, 17)
        x = x0 * (x @ w.T + b.squeeze(1)) + x  # paper eq. 1
    torch.testing.assert_close(model.cross(x0), x)


def test_low_rank_cross_uses_u_v_transpose() -> None:
    model, batch = _model({"low_rank": 2})
    cross = model.cross
    assert isinstance(cross, LowRankCrossNet)
    with torch.no_grad():
        for bias in cross.bias:
            bias.normal_()
    x0 = model.inputs(batch)
    x = x0
    for u, v_t, b in zip(cross.W_kernels, cross.V_kernels, cross.bias):
        assert u.shape == (17, 2) and v_t.shape == (2, 17)  # U and V^T, both of rank 2
        w = u @ v_t  # W = U V^T: a rank-2 (17, 17) matrix
        assert torch.linalg.matrix_rank(w) == 2
        x = x0 * (x @ w.T + b) + x
    torch.testing.assert_close(cross(x0), x)


def test_stacked_feeds_the_cross_output_to_the_deep_network() -> None:
    model, batch = _model({"structure": "stacked"})
    x0 = model.inputs(batch)
    expected = model.output(model.deep(model.cross(x0))).squeeze(1)
    torch.testing.assert_close(model(batch), expected)
    assert model.output.in_features == 5  # the deep network's last layer only


def test_parallel_concatenates_cross_and_deep_both_reading_x0() -> None:
    model, batch = _model({"structure": "parallel"})
    seen: list[torch.Tensor] = []
    model.deep.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x0 = model.inputs(batch)
    expected = model.output(torch.cat([model.cross(x0), model.deep(x0)], dim=1)).squeeze(1)
    seen.clear()
    torch.testing.assert_close(model(batch), expected)
    torch.testing.assert_close(seen[0], x0)  # the deep network reads x0, not the crossed x
    assert model.output.in_features == 17 + 5


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_without_deep_network_it_is_the_cross_network_alone(structure: str) -> None:
    model, batch = _model({"structure": structure, "deep": []})
    assert model.deep is None
    torch.testing.assert_close(model(batch), model.output(model.cross(model.inputs(batch))).squeeze(1))


@pytest.mark.parametrize("section", [{"structure": "stacked"}, {"structure": "parallel", "low_rank": 3},
                                     {"bottom_mlp": [4], "deep": []}])
@pytest.mark.parametrize("dense", [3, 0])
def test_backward_reaches_every_parameter(section: dict, dense: int) -> None:
    model, batch = _model(section, dense)
    assert_every_parameter_learns(model, batch, torch.tensor([1.0, 0.0, 1.0]))


def test_bad_config_is_one_clear_line() -> None:
    schema = _schema()
    cases = [({"structure": "diagonal"}, "structure"), ({"cross_layers": 0}, "cross_layers"),
             ({"low_rank": 0}, "low_rank"), ({"deep": [8, 0]}, "deep layer sizes must be at least 1"),
             ({"cross": 3}, "cross")]
    for section, message in cases:
        with pytest.raises(RecsysError, match=message):
            build_model("dcnv2", schema, section, EmbeddingConfig())
    with pytest.raises(RecsysError, match="low_rank must be below the cross input width 17, got 17"):
        build_model("dcnv2", schema, {"low_rank": 17}, EmbeddingConfig())
