"""LightGCN: user and item vectors propagated over the interaction graph, averaged over layers.

Paper: He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation", SIGIR 2020. E0 is the user_id and item_id tables (from
``recsys.embeddings``: any scheme, sharded by ``recsys.distributed``);
E_k = Â·E_{k-1} with the symmetric-normalised bipartite adjacency Â; the final
vectors are the mean of E_0..E_K; the loss is BPR with uniform negatives plus L2 on
the batch's E0 rows (``l2`` × ½(‖e_u‖² + ‖e_i⁺‖² + ‖e_i⁻‖²) / B, the paper code's
form), and the score a dot product. Every training step propagates the whole graph,
as the paper does: its cost is K sparse products over all edges, whatever the batch.

The graph comes from ``attach_interactions`` (the trainer calls it with the training
split before sharding). Scoring needs no graph: the final vectors of every user and
item are persistent buffers, recomputed from the tables when the model turns to eval
mode after training (``refresh``), exported with the weights and read by
``user_vectors``/``item_vectors`` in eval mode. They are no DDP buffers to broadcast
(torchrec wraps with ``broadcast_buffers=False``, and this model has no dense
parameters): each process computes the same vectors from the same tables.

Differences from the paper: the optimiser is whatever ``optimizer.sparse`` fuses into
the tables (the paper uses Adam, which fbgemm's CPU kernels do not fuse); the
candidates are every retriever's (``recsys.models.candidates``), so the softmax and
hinge losses and in-batch negatives are accepted too, and a negative equal to the
row's positive is excluded.

    model = build_model("lightgcn", schema, {"layers": 3}, EmbeddingConfig())
    model.attach_interactions(users, items)     # int64 rows of the user_id / item_id tables
    out = model(batch)                          # PairScores: scores (B, 1 + negatives)
    model.eval()                                # propagates once; user/item vectors are lookups from here
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from recsys.models import register_model
from recsys.models.candidates import ITEM_ID, USER_ID, Candidates, SampledConfig
from recsys.models.graph import (Graph, batch_ids, build_graph, empty_graph, final_vectors_loaded, graph_inputs,
                                 lookup_all, node_dim, propagate, table_rows)
from recsys.models.retriever import PairScores, Retriever
from recsys.schema import Schema
from recsys.types import Batch


class LightGCNConfig(SampledConfig):
    """The ``model:`` section for ``--model lightgcn``."""

    layers: int = Field(3, ge=0, le=8, description="propagation layers K (final = mean of E_0..E_K)")
    l2: float = Field(1e-4, ge=0, description="weight of the L2 penalty on the batch's E0 rows")


class LightGCN(Retriever):
    """Batch → PairScores in training; user/item vectors (B, d) from the propagated tables."""

    def __init__(self, schema: Schema, config: LightGCNConfig, embeddings: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.users, self.items = table_rows(schema)
        self.dim = node_dim(embeddings)
        self.graph: Graph = empty_graph(self.users, self.items)
        self.candidates = Candidates(schema, config, self.similarity)
        # The propagated vectors as of the last refresh: what scoring and the artifact use.
        self.register_buffer("user_final", torch.zeros(self.users, self.dim))
        self.register_buffer("item_final", torch.zeros(self.items, self.dim))
        # The buffers do not yet hold the tables' propagation: the next turn to eval mode computes it, unless a state
        # dict (an artifact's) brings them first.
        self._stale = True
        self.register_load_state_dict_post_hook(final_vectors_loaded)

    def attach_interactions(self, users: np.ndarray, items: np.ndarray) -> None:
        self.graph = build_graph(users, items, self.users, self.items)
        self._stale = True

    def propagated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(final (N, d), E0 (N, d)) for every node, differentiable in the tables; N = users + items."""
        e0 = lookup_all(self.embeddings, self.users, self.items)  # (N, d): a collective under DMP
        layer, total = e0, e0
        for _ in range(self.config.layers):
            layer = propagate(self.graph, layer)  # (N, d)
            total = total + layer
        return total / (self.config.layers + 1), e0

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the final-vector buffers from the tables (every process, in step: it looks up all rows)."""
        final, _ = self.propagated()
        self.user_final.copy_(final[: self.users])
        self.item_final.copy_(final[self.users:])
        self._stale = False

    def train(self, mode: bool = True) -> LightGCN:
        super().train(mode)
        if not mode and self._stale:
            self.refresh()
        return self

    def forward(self, batch: Batch) -> PairScores:
        users, positives = batch_ids(batch, USER_ID), batch_ids(batch, ITEM_ID)  # (B,), (B,)
        if not self.training:
            return self.candidates(self.user_final[users], self.item_final[positives], positives,
                                   lambda ids: self.item_final[ids], self.score)
        self._stale = True
        final, e0 = self.propagated()  # (N, d), (N, d)
        item_final, item_e0 = final[self.users:], e0[self.users:]
        drawn: list[torch.Tensor] = []  # the negatives' E0 rows, for the L2 term

        def negatives(ids: torch.Tensor) -> torch.Tensor:
            drawn.append(item_e0[ids])
            return item_final[ids]  # (N, d)

        out = self.candidates(final[users], item_final[positives], positives, negatives, self.score)
        if self.config.l2:
            rows = [e0[users], item_e0[positives], *drawn]
            out.penalty = self.config.l2 * 0.5 * sum(r.square().sum() for r in rows) / batch.batch_size
        return out

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        users = batch_ids(batch, USER_ID)
        if self.training:
            return self.propagated()[0][users]
        return self.user_final[users]  # (B, d)

    def item_vectors(self, batch: Batch) -> torch.Tensor:
        items = batch_ids(batch, ITEM_ID)
        if self.training:
            return self.propagated()[0][self.users + items]
        return self.item_final[items]  # (B, d)


@register_model("lightgcn", LightGCNConfig, graph_inputs)
def build(schema: Schema, config: LightGCNConfig, embeddings: nn.Module) -> nn.Module:
    return LightGCN(schema, config, embeddings)

