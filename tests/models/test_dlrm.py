"""DLRM and the standard embedding scheme, unsharded: shapes, the interaction, pooling of shared tables."""

from __future__ import annotations

import pytest
import torch
from torchrec.models.dlrm import InteractionArch
from torchrec.sparse.jagged_tensor import KeyedTensor

from recsys.config import EmbeddingConfig
from recsys.embeddings import build_embeddings
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.models.dlrm import DLRM, DLRMConfig
from tests.models.schemas import assert_every_parameter_learns, small_schema, three_rows


def test_shared_table_sums_ids_and_averages_histories() -> None:
    schema = small_schema()
    embeddings = build_embeddings(schema, EmbeddingConfig())
    out = embeddings(three_rows(schema).sparse)
    pooled = out.pooled.to_dict()
    table = embeddings.ecs[0].embeddings["item_id"].weight.detach()  # one table for item_id and its history
    assert list(embeddings.ebc.embedding_bags) == ["city"] and list(embeddings.ecs[0].embeddings) == ["item_id"]
    torch.testing.assert_close(pooled["item_id"], table[[1, 4, 5]])
    torch.testing.assert_close(pooled["hist_item_id"][0], (table[2] + table[3]) / 2)
    torch.testing.assert_close(pooled["hist_item_id"][1], torch.zeros(4))
    torch.testing.assert_close(pooled["hist_item_id"][2], table[6])
    history = out.sequences["hist_item_id"]  # un-pooled, unpadded
    assert history.lengths().tolist() == [2, 0, 1]
    torch.testing.assert_close(history.values(), table[[2, 3, 6]])
    assert list(out.sequences) == embeddings.sequence_names == ["hist_item_id"]
    assert embeddings.feature_tables == {"item_id": "item_id", "hist_item_id": "item_id", "city": "city"}


def test_dot_interaction_matches_torchrec() -> None:
    schema = small_schema()
    torch.manual_seed(0)
    model = build_model("dlrm", schema, {"bottom_mlp": [8, 4], "top_mlp": [8, 1]}, EmbeddingConfig())
    batch = three_rows(schema)
    dense = model.dense_arch(batch.dense)  # (B, 4)
    pooled = model.sparse_arch(batch.sparse).pooled
    sparse = pooled.values().view(3, 3, 4)  # (B, F, D)
    expected = model.over_arch(InteractionArch(num_sparse_features=3)(dense, sparse)).squeeze(1)
    torch.testing.assert_close(model(batch), expected)


@pytest.mark.parametrize("interaction", ["dot", "cat"])
@pytest.mark.parametrize("dense", [3, 0])
def test_forward_and_backward_reach_every_parameter(interaction: str, dense: int) -> None:
    schema = small_schema(dense)
    model = build_model("dlrm", schema, {"bottom_mlp": [8, 4], "top_mlp": [8, 1], "interaction": interaction},
                        EmbeddingConfig())
    assert_every_parameter_learns(model, three_rows(schema), torch.ones(3))


def test_mismatched_sizes_are_clear() -> None:
    schema = small_schema()
    with pytest.raises(RecsysError, match="bottom_mlp must end with the embedding dim 4, got 8"):
        build_model("dlrm", schema, {"bottom_mlp": [8]}, EmbeddingConfig())
    mixed = schema.model_copy(deep=True)
    mixed.tables[1].embedding_dim = 6
    projected = DLRM(mixed, DLRMConfig(bottom_mlp=[4]), build_embeddings(mixed, EmbeddingConfig()))
    assert projected.dim == 4 and projected(three_rows(mixed)).shape == (3,)  # the 6-dim table projected to 4
    assert [p.weight.shape for p in projected.field_matrix.projections.values()] == [(4, 6)]
    with pytest.raises(RecsysError, match="embedding.scheme: unknown scheme 'fancy'"):
        build_embeddings(schema, EmbeddingConfig(scheme="fancy"))
    assert isinstance(build_embeddings(mixed, EmbeddingConfig(dim=4))(three_rows(mixed).sparse).pooled, KeyedTensor)
