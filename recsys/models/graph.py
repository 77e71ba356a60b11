"""What the graph retrievers (``lightgcn``, ``ltgnn``) share: the user-item graph, its propagation, neighbour
sampling and the lookup of node embeddings through the embedding module.

The graph has N = users + items nodes (users first, item i is node users + i) and
an edge for every distinct training interaction. Its symmetric-normalised
adjacency Â = D^-1/2 A D^-1/2 (He et al., LightGCN, eq. 7) is kept in CSR form,
so a propagation Â·X is one ``torch.sparse.mm``; Â is symmetric, so the backward
of Â·X is Â·G with the same matrix (no transpose is built).

E0 (the layer-0 vectors) are looked up through the model's embedding module, not
read from its weights: under ``DistributedModelParallel`` that module is sharded,
the lookup is a collective, and fbgemm's fused optimizer updates the rows it
served during the backward. A KeyedJaggedTensor has one stride for all its keys,
so the user and item ids ride in one KJT of bags of one id, padded with empty bags.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.errors import RecsysError
from recsys.models.candidates import ITEM_ID, USER_ID
from recsys.schema import Schema
from recsys.types import Batch

@dataclass
class Graph:
    """The bipartite user-item graph as the normalised adjacency Â, (N, N) CSR.

    crow (N + 1,) int64, col (nnz,) int64, value (nnz,) float32: Â's rows, symmetric; nnz = 2 × edges.
    """

    users: int
    items: int
    crow: torch.Tensor
    col: torch.Tensor
    value: torch.Tensor

    @property
    def nodes(self) -> int:
        return self.users + self.items

    @property
    def edges(self) -> int:
        return int(self.col.numel()) // 2

    @property
    def degree(self) -> torch.Tensor:
        return self.crow[1:] - self.crow[:-1]  # (N,)

    def matrix(self) -> torch.Tensor:
        """Â as a torch sparse CSR tensor (cached)."""
        cached = getattr(self, "_matrix", None)
        if cached is None:
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                cached = torch.sparse_csr_tensor(self.crow, self.col, self.value, (self.nodes, self.nodes),
                                                 check_invariants=False)  # built sorted and in range here
            self._matrix = cached
        return cached


def build_graph(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> Graph:
    """The graph of the training interactions (``attach_interactions``'s arrays: row indices of the user_id
    and item_id tables); duplicate pairs are one edge."""
    users, items = np.asarray(users), np.asarray(items)
    if users.ndim != 1 or users.shape != items.shape:
        raise RecsysError(f"attach_interactions: users and items must be 1-D arrays of one length, got shapes "
                          f"{users.shape} and {items.shape}")
    if users.size and not (np.issubdtype(users.dtype, np.integer) and np.issubdtype(items.dtype, np.integer)):
        raise RecsysError(f"attach_interactions: expected integer row indices, got {users.dtype} and {items.dtype}")
    users, items = users.astype(np.int64), items.astype(np.int64)
    for name, ids, rows in (("users", users, n_users), ("items", items, n_items)):
        if ids.size and (ids.min() < 0 or ids.max() >= rows):
            raise RecsysError(f"attach_interactions: {name} hold ids outside the table's [0, {rows}): "
                              f"{int(ids.min())}..{int(ids.max())}")
    pairs = np.unique(users * n_items + items)  # distinct interactions, sorted
    users, items = pairs // n_items, pairs % n_items
    nodes = n_users + n_items
    rows = np.concatenate([users, n_users + items])
    cols = np.concatenate([n_users + items, users])
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    degree = np.bincount(rows, minlength=nodes).astype(np.float64)
    value = 1.0 / np.sqrt(degree[rows] * degree[cols])
    crow = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=nodes))])
    return Graph(n_users, n_items, torch.from_numpy(crow.astype(np.int64)), torch.from_numpy(cols),
                 torch.from_numpy(value.astype(np.float32)))


def empty_graph(n_users: int, n_items: int) -> Graph:
    """No edges: what a graph model uses until ``attach_interactions`` (its propagation gives zeros)."""
    return build_graph(np.zeros(0, np.int64), np.zeros(0, np.int64), n_users, n_items)


class _Propagate(torch.autograd.Function):
    """Â·X with Â symmetric: the backward is Â·G."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.matrix = matrix
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, torch.sparse.mm(ctx.matrix, grad.contiguous())


def propagate(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """(N, d) → Â·x (N, d), differentiable in x. At fp32 under autocast too: it aggregates embeddings, which
    stay fp32 (``recsys.precision``), and CPU sparse kernels have no bf16."""
    if graph.col.numel() == 0:
        return torch.zeros_like(x)
    with torch.autocast(x.device.type, enabled=False):
        return _Propagate.apply(graph.matrix(), x.float().contiguous())


def sample_neighbours(graph: Graph, nodes: torch.Tensor, count: int,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` neighbours of each node, uniformly with replacement, with weights that make the weighted sum an
    unbiased estimate of the node's row of Â·X:  E[Σ_s w_s X[j_s]] = Σ_j Â_ij X[j].

    nodes (n,) → neighbours (n, count) int64, weights (n, count) float32 (zero for a node without edges).
    """
    start = graph.crow[nodes]  # (n,)
    degree = graph.crow[nodes + 1] - start  # (n,)
    if graph.col.numel() == 0:
        zeros = torch.zeros(nodes.numel(), count, dtype=torch.int64)
        return zeros, zeros.float()
    draw = torch.rand(nodes.numel(), count, generator=generator)  # (n, count)
    offset = (draw * degree.unsqueeze(1)).long().clamp(max=(degree - 1).clamp(min=0).unsqueeze(1))
    position = (start.unsqueeze(1) + offset).clamp(max=graph.col.numel() - 1)  # (n, count)
    weights = graph.value[position] * (degree.float() / count).unsqueeze(1)
    weights = weights.masked_fill((degree == 0).unsqueeze(1), 0.0)
    return graph.col[position], weights


def graph_inputs(schema: Schema, config: object) -> list[str]:
    """The features a graph retriever embeds (``register_model``'s ``inputs``): user_id and item_id, the nodes."""
    missing = [f for f in (USER_ID, ITEM_ID) if f not in schema.sparse_keys]
    if missing:
        raise RecsysError(f"schema: a graph retriever needs the sparse feature '{missing[0]}' (one id per row); "
                          f"features: {', '.join(schema.sparse_keys)}")
    return [USER_ID, ITEM_ID]


def table_rows(schema: Schema) -> tuple[int, int]:
    """(users, items): the rows of the user_id and item_id features' tables."""
    users, items = schema.feature_table(USER_ID).cardinality, schema.feature_table(ITEM_ID).cardinality
    assert users is not None and items is not None  # resolved schema
    return users, items


def node_dim(embeddings: nn.Module) -> int:
    dims = dict(zip(embeddings.feature_names, embeddings.embedding_dims))
    if dims[USER_ID] != dims[ITEM_ID]:
        raise RecsysError(f"embedding: a graph retriever propagates users and items together, so their dims must "
                          f"agree; user_id has {dims[USER_ID]}, item_id {dims[ITEM_ID]}")
    return dims[USER_ID]


def batch_ids(batch: Batch, feature: str) -> torch.Tensor:
    """(B,) int64: the one id of ``feature`` in each row."""
    jagged = batch.sparse[feature]
    ids = jagged.values()
    if ids.numel() != batch.batch_size:
        raise RecsysError(f"batch: feature '{feature}' must hold exactly one id per row for a graph retriever; "
                          f"got {ids.numel()} ids for {batch.batch_size} rows")
    return ids.long()


def lookup(embeddings: nn.Module, users: torch.Tensor, items: torch.Tensor,
           stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """E0 rows through the embedding module: users (n_u,), items (n_i,) → (n_u, d), (n_i, d).

    One KJT of one-id bags, the shorter key padded with empty bags to ``stride`` (default the longer of the
    two); every other feature gets empty bags. Under DMP every process must pass the same stride.
    """
    keys: list[str] = list(embeddings.input_names)
    stride = max(users.numel(), items.numel(), 1) if stride is None else stride
    lengths = torch.zeros(len(keys), stride, dtype=torch.int32)
    at_user, at_item = keys.index(USER_ID), keys.index(ITEM_ID)
    lengths[at_user, : users.numel()] = 1
    lengths[at_item, : items.numel()] = 1
    values = torch.cat([users, items] if at_user < at_item else [items, users]).long()
    kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten(), stride=stride)
    pooled = embeddings(kjt).pooled
    return pooled[USER_ID][: users.numel()], pooled[ITEM_ID][: items.numel()]


def lookup_all(embeddings: nn.Module, users: int, items: int) -> torch.Tensor:
    """Every node's E0 row, (users + items, d): users first."""
    user_rows, item_rows = lookup(embeddings, torch.arange(users), torch.arange(items))
    return torch.cat([user_rows, item_rows])


def final_vectors_loaded(module: nn.Module, incompatible: object) -> None:
    """A load_state_dict post-hook: final vectors loaded with the tables are theirs, so scoring uses them as they
    are (no graph needed) and the model is not stale."""
    if not any(key.endswith(("user_final", "item_final")) for key in getattr(incompatible, "missing_keys", [])):
        module._stale = False
