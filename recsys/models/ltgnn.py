"""LTGNN: a graph retriever whose training step costs time linear in the batch, not the graph.

Paper: Zhang et al., "Linear-Time Graph Neural Networks for Scalable Recommendations",
WWW 2024 (arXiv:2402.13973). The model is the implicit (PPNP/APPNP-style) GNN whose
vectors are the fixed point E* = (1-α)·Â·E* + α·E0 of the symmetric-normalised
user-item adjacency Â, E0 the user_id and item_id tables (``recsys.embeddings``: any
scheme, sharded by ``recsys.distributed``). Training never solves it; each step does,
for the batch's nodes only (its users, positives and negatives):

- forward, one fixed-point iteration per layer from historical embeddings kept in
  memory: E_k[B] = (1-α)·(Â·M_{k-1})[B] + α·E0[B], and M_k[B] ← E_k[B] (layer 1 reads
  the last layer's memory: the iteration is warm-started from the previous steps');
- neighbour sampling: (Â·M)[B] is estimated from ``neighbours`` neighbours per node;
- variance reduction: (Â·M)[B] ≈ Σ_sampled Â(M - M̄) + (Â·M̄)[B], where M̄ is a snapshot
  of the memory and Â·M̄ is computed over the whole graph when it is taken (every
  ``refresh_every`` steps, by default once per epoch). Right after a refresh M = M̄,
  and the estimate is exact;
- backward, the implicit gradient ∂L/∂E0 = α·(I - (1-α)Â)⁻¹·∂L/∂E, approximated the
  same way: one iteration from a memory of gradients, G[B] ← g[B] + (1-α)·(Â·G)[B],
  with the same sampled, variance-reduced estimate, and α·G[B] reaches the tables.

The batch's nodes are its distinct users and positives, then, in a second lookup, the
negatives the retrievers' sampler draws (``recsys.models.candidates``). So a step looks
up |B| table rows and (layers + 1) × |B| × ``neighbours`` memory rows (layers × … without
``implicit_backward``), whatever the size of the graph.

Differences from the paper (and its code):

- a refresh solves the fixed point from the tables, E ← (1-α)·Â·E + α·E0 for
  ``refresh_iterations`` full propagations starting at E0, rather than carrying the
  memory over: the memory (each process updates its own batches' rows, with no
  collective) is then the same function of the shared tables on every process again.
  The exported and evaluated vectors are that solution, computed when the model turns
  to eval mode after training, kept as persistent buffers (the artifact scores without
  the graph);
- "once per epoch" is counted from the graph's edges and the rows each process trains
  per step (times ``WORLD_SIZE`` from the environment), as the model does not see epochs;
- the optimiser is whatever ``optimizer.sparse`` fuses into the tables (the paper uses
  Adam, which fbgemm does not fuse on CPUs).

    model = build_model("ltgnn", schema, {"alpha": 0.45, "neighbours": 15}, EmbeddingConfig())
    model.attach_interactions(users, items)     # int64 rows of the user_id / item_id tables
    out = model(batch)                          # PairScores, from |B| looked-up rows
    model.eval()                                # solves the fixed point once; vectors are lookups from here
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from pydantic import Field
from torch import nn

from recsys.models import register_model
from recsys.models.candidates import ITEM_ID, USER_ID, Candidates, SampledConfig
from recsys.models.graph import (Graph, batch_ids, build_graph, empty_graph, final_vectors_loaded, graph_inputs,
                                 lookup, lookup_all, node_dim, propagate, sample_neighbours, table_rows)
from recsys.models.retriever import PairScores, Retriever
from recsys.schema import Schema
from recsys.types import Batch


class LTGNNConfig(SampledConfig):
    """The ``model:`` section for ``--model ltgnn`` (defaults: the paper code's Gowalla/Yelp settings)."""

    layers: int = Field(1, ge=1, le=4, description="fixed-point iterations per step (the paper uses 1)")
    alpha: float = Field(0.45, gt=0, le=1, description="teleport weight α of E = (1-α)ÂE + αE0")
    neighbours: int = Field(15, ge=1, description="neighbours sampled per node and layer")
    variance_reduction: bool = Field(True, description="estimate Â(M - M̄) by sampling and add the exact ÂM̄")
    implicit_backward: bool = Field(True, description="gradients to E0 through a memory of implicit gradients "
                                                      "(off: only the α·E0 path)")
    refresh_every: int = Field(0, ge=0, description="steps between full refreshes of the memory; 0: once per epoch")
    refresh_iterations: int = Field(10, ge=1, description="full propagations solving the fixed point at a refresh")
    l2: float = Field(2e-4, ge=0, description="weight of the L2 penalty on the batch's E0 rows")


class LTGNN(Retriever):
    """Batch → PairScores in training (linear in the batch); user/item vectors (B, d) from the solved fixed point."""

    def __init__(self, schema: Schema, config: LTGNNConfig, embeddings: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.users, self.items = table_rows(schema)
        self.dim = node_dim(embeddings)
        self.graph: Graph = empty_graph(self.users, self.items)
        self.candidates = Candidates(schema, config, self.similarity)
        nodes = self.users + self.items
        self.register_buffer("user_final", torch.zeros(self.users, self.dim))
        self.register_buffer("item_final", torch.zeros(self.items, self.dim))
        # Historical state (not exported): per layer its last output; the snapshot M̄ and Â·M̄; the same for the
        # implicit gradients.
        self.register_buffer("memory", torch.zeros(config.layers, nodes, self.dim), persistent=False)
        self.register_buffer("snapshot", torch.zeros(nodes, self.dim), persistent=False)
        self.register_buffer("snapshot_agg", torch.zeros(nodes, self.dim), persistent=False)
        self.register_buffer("grad_memory", torch.zeros(nodes, self.dim), persistent=False)
        self.register_buffer("grad_snapshot", torch.zeros(nodes, self.dim), persistent=False)
        self.register_buffer("grad_snapshot_agg", torch.zeros(nodes, self.dim), persistent=False)
        # The buffers do not yet hold the tables' propagation: the next turn to eval mode computes it, unless a state
        # dict (an artifact's) brings them first.
        self._stale = True
        self.register_load_state_dict_post_hook(final_vectors_loaded)
        self._ready = False  # the memory holds a refresh of the current graph
        self._since_refresh = 0
        self.step_rows: dict[str, int] = {}  # what the last training step read: table ids and memory rows

    def attach_interactions(self, users: np.ndarray, items: np.ndarray) -> None:
        self.graph = build_graph(users, items, self.users, self.items)
        self._stale, self._ready = True, False

    # ---- full-graph work: refreshes and the exported vectors ---------------------------------------------
    def solve(self, e0: torch.Tensor) -> torch.Tensor:
        """(N, d) E0 → the fixed point of E = (1-α)ÂE + αE0 by ``refresh_iterations`` propagations from E0."""
        alpha, fixed = self.config.alpha, e0
        for _ in range(self.config.refresh_iterations):
            fixed = (1 - alpha) * propagate(self.graph, fixed) + alpha * e0
        return fixed

    @torch.no_grad()
    def refresh(self) -> None:
        """Solve from the tables; reset the memory and snapshots to it; set the final vectors. Every process calls
        it at the same step (it looks up all rows)."""
        fixed = self.solve(lookup_all(self.embeddings, self.users, self.items))  # (N, d)
        self.memory.copy_(fixed.unsqueeze(0).expand_as(self.memory))
        self.snapshot.copy_(fixed)
        self.snapshot_agg.copy_(propagate(self.graph, fixed))
        self.grad_snapshot.copy_(self.grad_memory)
        self.grad_snapshot_agg.copy_(propagate(self.graph, self.grad_memory))
        self.user_final.copy_(fixed[: self.users])
        self.item_final.copy_(fixed[self.users:])
        self._stale, self._ready, self._since_refresh = False, True, 0

    def train(self, mode: bool = True) -> LTGNN:
        super().train(mode)
        if not mode and self._stale:
            self.refresh()
        return self

    def _refresh_due(self, rows: int) -> bool:
        if not self._ready:
            return True
        every = self.config.refresh_every
        if not every:  # once per epoch: the edges over the rows all processes train per step
            every = max(1, math.ceil(self.graph.edges / (rows * int(os.environ.get("WORLD_SIZE", "1")))))
        return self._since_refresh >= every

    # ---- one training step --------------------------------------------------------------------------------
    def estimate(self, nodes: torch.Tensor, source: torch.Tensor, snapshot: torch.Tensor,
                 snapshot_agg: torch.Tensor) -> torch.Tensor:
        """(Â·source)[nodes] (n, d) from ``neighbours`` sampled neighbours per node, variance-reduced against
        ``snapshot`` (whose exact Â·snapshot is ``snapshot_agg``) unless switched off."""
        neighbours, weights = sample_neighbours(self.graph, nodes, self.config.neighbours)  # (n, S), (n, S)
        self.step_rows["memory"] = self.step_rows.get("memory", 0) + neighbours.numel()
        if not self.config.variance_reduction:
            return (weights.unsqueeze(2) * source[neighbours]).sum(1)
        difference = source[neighbours] - snapshot[neighbours]  # (n, S, d)
        return (weights.unsqueeze(2) * difference).sum(1) + snapshot_agg[nodes]

    def forward(self, batch: Batch) -> PairScores:
        users, positives = batch_ids(batch, USER_ID), batch_ids(batch, ITEM_ID)  # (B,), (B,)
        if not self.training:
            return self.candidates(self.user_final[users], self.item_final[positives], positives,
                                   lambda ids: self.item_final[ids], self.score)
        if self._refresh_due(batch.batch_size):
            self.refresh()
        self._stale = True
        self._since_refresh += 1
        self.step_rows = {}
        (user_out, user_e0), (positive_out, positive_e0) = self.step(users, positives)
        drawn: list[torch.Tensor] = []  # the negatives' E0 rows, for the L2 term

        def negatives(ids: torch.Tensor) -> torch.Tensor:
            _, (out, e0) = self.step(ids[:0], ids)  # the negatives' nodes: a second lookup, the same on all ranks
            drawn.append(e0)
            return out  # (N, d)

        out = self.candidates(user_out, positive_out, positives, negatives, self.score)
        if self.config.l2:
            rows = [user_e0, positive_e0, *drawn]
            out.penalty = self.config.l2 * 0.5 * sum(r.square().sum() for r in rows) / batch.batch_size
        return out

    def step(self, users: torch.Tensor, items: torch.Tensor
             ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """One fixed-point iteration per layer for these nodes only: users (n_u,), items (n_i,) ids (repeats
        allowed) → ((out, E0) of the users (n_u, d) each, (out, E0) of the items (n_i, d) each). Updates the
        memory rows of the distinct nodes; the lookup's stride is n_u + n_i, which every process shares."""
        user_nodes, user_at = torch.unique(users, return_inverse=True)  # (u,), (n_u,)
        item_nodes, item_at = torch.unique(items, return_inverse=True)  # (i,), (n_i,)
        e0_users, e0_items = lookup(self.embeddings, user_nodes, item_nodes, max(1, users.numel() + items.numel()))
        e0 = torch.cat([e0_users, e0_items])  # (u + i, d)
        self.step_rows["tables"] = self.step_rows.get("tables", 0) + e0.shape[0]
        nodes = torch.cat([user_nodes, self.users + item_nodes])  # (u + i,) graph node ids
        alpha = self.config.alpha
        out = e0
        with torch.no_grad():
            grad_agg = (self.estimate(nodes, self.grad_memory, self.grad_snapshot, self.grad_snapshot_agg)
                        if self.config.implicit_backward else None)
        for layer in range(self.config.layers):
            source = self.memory[layer - 1]  # layer 0 reads the last layer's memory: the warm start
            with torch.no_grad():
                aggregated = self.estimate(nodes, source, self.snapshot, self.snapshot_agg)  # (u + i, d)
            out = (1 - alpha) * aggregated + alpha * e0  # (u + i, d)
            self.memory[layer, nodes] = out.detach()
        if grad_agg is not None and out.requires_grad:
            self._implicit_backward(nodes, out, e0, grad_agg)
        split = user_nodes.numel()
        return ((out[:split][user_at], e0[:split][user_at]), (out[split:][item_at], e0[split:][item_at]))

    def _implicit_backward(self, nodes: torch.Tensor, out: torch.Tensor, e0: torch.Tensor,
                           grad_agg: torch.Tensor) -> None:
        """Gradient hooks: g = ∂L/∂E[B] is caught at the output; E0[B] receives α·(g + (1-α)·(Â·G)[B]) (autograd
        brings α·g) and the gradient memory G[B] takes g + (1-α)·(Â·G)[B]."""
        alpha, caught = self.config.alpha, {}

        def catch(grad: torch.Tensor) -> None:
            caught["g"] = grad

        def correct(grad: torch.Tensor) -> torch.Tensor:
            g = caught.get("g")
            if g is not None:
                self.grad_memory[nodes] = g + (1 - alpha) * grad_agg
            return grad + alpha * (1 - alpha) * grad_agg

        out.register_hook(catch)
        e0.register_hook(correct)

    # ---- scoring ------------------------------------------------------------------------------------------
    def _solved(self) -> torch.Tensor:
        return self.solve(lookup_all(self.embeddings, self.users, self.items))

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        users = batch_ids(batch, USER_ID)
        if self.training:
            return self._solved()[users]
        return self.user_final[users]  # (B, d)

    def item_vectors(self, batch: Batch) -> torch.Tensor:
        items = batch_ids(batch, ITEM_ID)
        if self.training:
            return self._solved()[self.users + items]
        return self.item_final[items]  # (B, d)


@register_model("ltgnn", LTGNNConfig, graph_inputs)
def build(schema: Schema, config: LTGNNConfig, embeddings: nn.Module) -> nn.Module:
    return LTGNN(schema, config, embeddings)
