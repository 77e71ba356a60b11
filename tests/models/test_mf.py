"""MF-BPR: only the user and item tables are embedded, and sampled negatives are rows of the same item table."""

from __future__ import annotations

import torch

from recsys.config import EmbeddingConfig
from recsys.embeddings import table_names
from recsys.models import build_model
from tests.models.implicit_schemas import ITEMS, implicit_schema, interactions


def test_mf_embeds_user_and_item_ids_only() -> None:
    model = build_model("mf", implicit_schema(), {}, EmbeddingConfig())
    assert sorted(table_names(model)) == ["item_id", "user_id"]  # no table for item_genre, which mf never reads


def test_bpr_scores_dot_products_with_sampled_rows_of_the_item_table() -> None:
    schema = implicit_schema("vocab")
    model = build_model("mf", schema, {"loss": "bpr", "negatives": 5}, EmbeddingConfig())
    batch = interactions([0, 1, 2], [4, 5, 6])
    torch.manual_seed(3)
    out = model(batch)
    torch.manual_seed(3)
    negatives = torch.randint(1, ITEMS, (3, 5))  # what the sampler drew: never row 0 of a vocabulary
    state = model.state_dict()
    users = state["embeddings.ebc.embedding_bags.user_id.weight"][[0, 1, 2]]
    items = state["embeddings.ebc.embedding_bags.item_id.weight"]
    expected = torch.einsum("bd,bkd->bk", users, items[torch.cat([torch.tensor([[4], [5], [6]]), negatives], 1)])
    torch.testing.assert_close(out.scores, expected)
    torch.testing.assert_close(model.user_vectors(batch), users)
    torch.testing.assert_close(model.score(model.user_vectors(batch), model.item_vectors(batch)),
                               users @ items[[4, 5, 6]].T)
