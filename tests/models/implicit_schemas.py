"""A small hand-built implicit schema and batches for the retrievers' own tests.

user_id (6 users) and item_id (10 items) tables, an item_genre item feature and a user_age dense feature;
``encoding`` chooses the item table's encoding (identity: row 0 is an item; vocab: row 0 is unknown).
"""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.schema import Schema
from recsys.types import Batch

USERS, ITEMS, GENRES = 6, 10, 3


def implicit_schema(encoding: str = "identity", dim: int = 4) -> Schema:
    return Schema.from_dict({
        "task": "implicit",
        "dense": [{"name": "user_age", "entity": "user", "transform": "none"}],
        "sparse": [{"name": "user_id", "entity": "user"}, {"name": "item_id", "entity": "item"},
                   {"name": "item_genre", "entity": "item"}],
        "tables": [{"name": "user_id", "encoding": "identity", "cardinality": USERS, "embedding_dim": dim},
                   {"name": "item_id", "encoding": encoding, "cardinality": ITEMS, "embedding_dim": dim},
                   {"name": "item_genre", "encoding": "identity", "cardinality": GENRES, "embedding_dim": dim}],
        "user_key": {"name": "user_key"}, "item_key": {"name": "item_key"},
    })


def interactions(users: list[int], items: list[int]) -> Batch:
    """One row per (user, item), the item's genre item % 3, the user's age user / 6."""
    rows = len(users)
    values = torch.tensor([*users, *items, *(i % GENRES for i in items)])
    sparse = KeyedJaggedTensor(keys=["user_id", "item_id", "item_genre"], values=values,
                               lengths=torch.ones(3 * rows, dtype=torch.int32))
    dense = torch.tensor(users, dtype=torch.float32).unsqueeze(1) / USERS
    return Batch(dense=dense, sparse=sparse, labels=torch.ones(rows))
