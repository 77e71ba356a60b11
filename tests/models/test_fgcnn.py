"""FGCNN, unsharded: the generated-feature count, the IPNN products, gradients, bad configs."""

from __future__ import annotations

import pytest
import torch

from recsys.config import EmbeddingConfig, TrainConfig
from recsys.embeddings import build_embeddings
from recsys.errors import RecsysError
from recsys.models import build_model, model_config
from recsys.models.fgcnn import FGCNN, FGCNNConfig
from recsys.schema import Schema
from recsys.types import Batch
from tests.conftest import REPO_ROOT
from tests.models.schemas import (
    assert_every_parameter_learns,
    random_rows,
    small_schema,
)


def _schema(dense: int = 3) -> Schema:
    return small_schema(dense, fields=("city", "device", "hour"))


def _batch(schema: Schema, rows: int = 3) -> Batch:
    return random_rows(schema, rows, shortest_history=0)


SMALL = {"channels": [3, 4], "kernel_heights": [3, 3], "pooling_heights": [2, 2], "recombined": [2, 3],
         "mlp": [8, 1]}


@pytest.mark.parametrize("dense", [3, 0])
def test_generated_feature_count_follows_the_pooled_heights(dense: int) -> None:
    schema = _schema(dense)
    model = build_model("fgcnn", schema, SMALL, EmbeddingConfig())
    raw_count = 5 + dense  # 4 sparse + 1 pooled history + dense fields
    heights = [raw_count // 2, raw_count // 2 // 2]
    expected = heights[0] * 2 + heights[1] * 3
    assert model.generation.num_generated == expected
    raw = model.raw_fields(_batch(schema))
    assert raw.shape == (3, raw_count, 4)
    assert model.generation(raw).shape == (3, expected, 4)
    fields = raw_count + expected
    assert model.classifier._mlp[0]._linear.in_features == fields * (fields - 1) // 2 + fields * 4


def test_inner_products_and_embeddings_feed_the_mlp() -> None:
    schema = _schema()
    torch.manual_seed(0)
    model = build_model("fgcnn", schema, SMALL, EmbeddingConfig())
    batch = _batch(schema)
    seen: list[torch.Tensor] = []
    model.classifier.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    logits = model(batch)

    raw = model.raw_fields(batch)
    everything = torch.cat([raw, model.generation(raw)], dim=1)  # (B, N, D)
    count = everything.shape[1]
    products = [(everything[:, i] * everything[:, j]).sum(dim=1) for i in range(count) for j in range(i + 1, count)]
    expected = torch.cat([everything.flatten(1), torch.stack(products, dim=1)], dim=1)
    torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(logits, model.classifier(expected).squeeze(1))


def test_generation_convolves_along_fields_then_pools() -> None:
    """The first layer's maps are a (h × 1) convolution of the field matrix, max-pooled by (p × 1)."""
    schema = _schema()
    torch.manual_seed(0)
    model = build_model("fgcnn", schema, SMALL, EmbeddingConfig())
    raw = model.raw_fields(_batch(schema))  # (B, 8, 4)
    conv = model.generation.convolutions[0][0]
    padded = torch.nn.functional.pad(raw, (0, 0, 1, 1))  # "same" for height 3
    maps = torch.stack([
        torch.tanh(sum(conv.weight[c, 0, t, 0] * padded[:, t:t + 8] for t in range(3)) + conv.bias[c])
        for c in range(3)], dim=1)  # (B, 3, 8, 4)
    pooled = torch.maximum(maps[:, :, 0::2], maps[:, :, 1::2])  # (B, 3, 4, 4)
    recombination = model.generation.recombinations[0]
    expected = recombination(pooled.flatten(1)).view(3, 8, 4)
    torch.testing.assert_close(model.generation(raw)[:, :8], expected)


@pytest.mark.parametrize("dense", [3, 0])
def test_backward_reaches_every_parameter(dense: int) -> None:
    schema = _schema(dense)
    model = build_model("fgcnn", schema, SMALL, EmbeddingConfig())
    assert_every_parameter_learns(model, _batch(schema, rows=6), torch.ones(6))


def test_bad_config_is_one_clear_line() -> None:
    schema = _schema()
    with pytest.raises(RecsysError, match=r"model \(fgcnn\).*recombined needs one entry per convolution layer"):
        build_model("fgcnn", schema, {**SMALL, "recombined": [2]}, EmbeddingConfig())
    with pytest.raises(RecsysError, match=r"model \(fgcnn\).*mlp must end with 1"):
        build_model("fgcnn", schema, {**SMALL, "mlp": [8, 2]}, EmbeddingConfig())
    with pytest.raises(RecsysError, match=r"model \(fgcnn\).*channels"):
        build_model("fgcnn", schema, {**SMALL, "channels": [0, 4]}, EmbeddingConfig())
    with pytest.raises(RecsysError, match=r"model \(fgcnn\).*unknown_key"):
        build_model("fgcnn", schema, {**SMALL, "unknown_key": 1}, EmbeddingConfig())
    with pytest.raises(RecsysError, match=r"model.pooling_heights: layer 2 pools 4 rows by 5 to none \(8 fields"):
        build_model("fgcnn", schema, {**SMALL, "pooling_heights": [2, 5]}, EmbeddingConfig())
    mixed = schema.model_copy(deep=True)
    mixed.tables[1].embedding_dim = 6
    projected = FGCNN(mixed, FGCNNConfig(**SMALL), build_embeddings(mixed, EmbeddingConfig()))
    assert projected.dim == 6  # the 4-dim tables projected to the widest


def test_shipped_config_builds() -> None:
    config = TrainConfig.load(REPO_ROOT / "configs" / "fgcnn.yaml")
    assert isinstance(model_config("fgcnn", config.model), FGCNNConfig)
