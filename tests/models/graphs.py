"""A tiny implicit schema, interaction graph and batches for the graph retrievers' tests (lightgcn, ltgnn)."""

from __future__ import annotations

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.schema import Schema
from recsys.types import Batch

# 3 users × 4 items; user u interacted with the items in INTERACTIONS[u]
INTERACTIONS = {0: [0, 1], 1: [1, 2], 2: [3, 0]}


def implicit_schema(users: int = 3, items: int = 4, dim: int = 4) -> Schema:
    return Schema.from_dict({
        "task": "implicit",
        "sparse": [{"name": "user_id", "entity": "user"}, {"name": "item_id", "entity": "item"}],
        "tables": [{"name": "user_id", "encoding": "identity", "cardinality": users, "embedding_dim": dim},
                   {"name": "item_id", "encoding": "identity", "cardinality": items, "embedding_dim": dim}],
        "user_key": {"name": "user_key"}, "item_key": {"name": "item_key"},
    })


def interactions(pairs: dict[int, list[int]] = INTERACTIONS) -> tuple[np.ndarray, np.ndarray]:
    users = np.array([u for u, items in pairs.items() for _ in items], dtype=np.int64)
    items = np.array([i for found in pairs.values() for i in found], dtype=np.int64)
    return users, items


def dense_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph, (N, N) dense, the textbook way."""
    nodes = n_users + n_items
    a = torch.zeros(nodes, nodes, dtype=torch.float64)
    a[users, n_users + items] = 1.0
    a[n_users + items, users] = 1.0
    degree = a.sum(1)
    scale = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    return scale.unsqueeze(1) * a * scale.unsqueeze(0)


def pair_batch(users: list[int], items: list[int]) -> Batch:
    """Rows (user, item): one id of each feature per row."""
    rows = len(users)
    sparse = KeyedJaggedTensor(keys=["user_id", "item_id"], values=torch.tensor([*users, *items]),
                               lengths=torch.ones(2 * rows, dtype=torch.int32))
    return Batch(dense=torch.zeros(rows, 0), sparse=sparse, labels=torch.ones(rows))


def random_pairs(users: int, items: int, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, users, count), rng.integers(0, items, count)
