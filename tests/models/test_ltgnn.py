"""LTGNN's own claims: a step costs the batch's sampled neighbourhood, not the graph; the variance-reduced estimator
is unbiased; the refresh solves the implicit model's fixed point; the exported vectors need no graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recsys.config import EmbeddingConfig
from recsys.embeddings import table_vectors
from recsys.models import build_model
from recsys.models.graph import build_graph, propagate
from recsys.tasks.implicit import pair_loss
from tests.models.graphs import dense_adjacency, implicit_schema, interactions, pair_batch, random_pairs
from tests.models.test_lightgcn import assert_reloads_without_the_graph


def _model(section: dict | None = None, users: int = 3, items: int = 4, dim: int = 4):
    torch.manual_seed(0)
    return build_model("ltgnn", implicit_schema(users, items, dim), section or {}, EmbeddingConfig())


def _e0(model) -> torch.Tensor:
    return torch.cat([table_vectors(model.embeddings, "user_id", torch.arange(model.users)),
                      table_vectors(model.embeddings, "item_id", torch.arange(model.items))]).double()


def test_refresh_solves_the_fixed_point_of_the_implicit_model() -> None:
    """E* = (1-α)ÂE* + αE0, i.e. α(I - (1-α)Â)⁻¹E0, to (1-α)^iterations."""
    users, items = interactions()
    model = _model({"alpha": 0.45, "refresh_iterations": 40})
    model.attach_interactions(users, items)
    model.eval()
    a = dense_adjacency(users, items, 3, 4)
    expected = 0.45 * torch.linalg.solve(torch.eye(7, dtype=torch.float64) - 0.55 * a, _e0(model))
    assert torch.allclose(model.user_final.double(), expected[:3], atol=1e-5)
    assert torch.allclose(model.item_final.double(), expected[3:], atol=1e-5)


def test_a_step_after_a_refresh_is_the_exact_iteration_of_the_formula() -> None:
    """Right after a refresh the memory equals its snapshot, so the variance-reduced estimate is exact: the step's
    output for the batch's nodes is (1-α)(Â·M)[B] + αE0[B], whatever neighbours were drawn."""
    users, items = random_pairs(12, 15, 60)
    model = _model({"alpha": 0.3, "neighbours": 2, "implicit_backward": False, "sampling": "in_batch"},
                   users=12, items=15, dim=6)  # in-batch negatives: no second step over sampled items
    model.attach_interactions(users, items)
    model.refresh()
    memory = model.memory[0].clone().double()
    a = dense_adjacency(*_dedup(users, items), 12, 15)
    e0 = _e0(model)
    batch = pair_batch([3, 7, 3], [2, 9, 14])
    model(batch)
    nodes = torch.tensor([3, 7, 12 + 2, 12 + 9, 12 + 14])
    expected = 0.7 * (a @ memory)[nodes] + 0.3 * e0[nodes]
    assert torch.allclose(model.memory[0, nodes].double(), expected, atol=1e-5)


def _dedup(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def test_the_variance_reduced_estimator_is_unbiased_and_has_less_variance() -> None:
    """Mean over draws of Σ_sampled Â(M - M̄) + ÂM̄ equals (Â·M)[nodes]; with M near M̄ it varies far less than
    plain neighbour sampling."""
    users, items = random_pairs(10, 12, 60, seed=3)
    model = _model({"neighbours": 3}, users=10, items=12, dim=5)
    model.attach_interactions(users, items)
    graph = build_graph(users, items, 10, 12)
    snapshot = torch.randn(22, 5)
    source = snapshot + 0.1 * torch.randn(22, 5)  # the memory moved a little since the snapshot
    snapshot_agg = propagate(graph, snapshot)
    nodes = torch.arange(22)
    exact = propagate(graph, source)
    model.config.variance_reduction = True
    torch.manual_seed(0)
    reduced = torch.stack([model.estimate(nodes, source, snapshot, snapshot_agg) for _ in range(3000)])
    model.config.variance_reduction = False
    plain = torch.stack([model.estimate(nodes, source, snapshot, snapshot_agg) for _ in range(3000)])
    assert torch.allclose(reduced.mean(0), exact, atol=3e-3)
    assert torch.allclose(plain.mean(0), exact, atol=0.05)
    assert reduced.var(0).mean() < 0.05 * plain.var(0).mean()


def test_a_step_touches_only_the_batch_and_its_sampled_neighbours() -> None:
    """The ids looked up in the tables are the batch's distinct users, positives and drawn negatives, the memory
    rows read are neighbours × those nodes (× 2 with the implicit backward): the same bound on a graph 50 times
    larger, never the graph."""
    batch_users, batch_items = [0, 1, 2, 1], [0, 3, 5, 3]
    for users_, items_, edges in ((20, 30, 200), (1000, 1500, 10000)):
        model = _model({"neighbours": 4, "negatives": 2}, users=users_, items=items_, dim=4)
        model.attach_interactions(*random_pairs(users_, items_, edges))
        model(pair_batch([0], [0]))  # the first step refreshes (looks up everything): not the per-step cost
        seen: list[torch.Tensor] = []
        model.embeddings.register_forward_pre_hook(lambda module, args: seen.append(args[0].values()))
        pair_loss(model(pair_batch(batch_users, batch_items))).backward()
        assert seen[0].numel() == len(set(batch_users)) + len(set(batch_items))  # users and positives
        assert len(seen) == 2 and seen[1].numel() == seen[1].unique().numel() <= 2 * len(batch_users)  # negatives
        looked_up = sum(ids.numel() for ids in seen)
        assert model.step_rows == {"tables": looked_up, "memory": 2 * 4 * looked_up}
        assert looked_up <= 3 + 3 + 8  # distinct users, positives, negatives


def test_refresh_once_per_epoch_by_default() -> None:
    users, items = random_pairs(20, 30, 200)
    model = _model({}, users=20, items=30, dim=4)
    model.attach_interactions(users, items)
    edges = build_graph(users, items, 20, 30).edges
    refreshes = []
    model.embeddings.register_forward_pre_hook(
        lambda module, args: refreshes.append(1) if args[0].stride() == 30 else None)  # all 30 items; a step: 40, then 20
    batch = pair_batch(users[:20].tolist(), items[:20].tolist())
    steps = 3 * -(-edges // 20)
    for _ in range(steps):
        model(batch)
    assert len(refreshes) == 3


def test_training_lowers_the_loss_and_the_implicit_backward_adds_the_memory_term() -> None:
    users, items = random_pairs(20, 30, 200)
    model = _model({"l2": 1e-4}, users=20, items=30, dim=8)
    model.attach_interactions(users, items)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    batch = pair_batch(users[:64].tolist(), items[:64].tolist())
    losses = []
    for _ in range(40):
        torch.manual_seed(1)
        optimizer.zero_grad()
        loss = pair_loss(model(batch))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    assert model.grad_memory.abs().sum() > 0


def test_export_reloads_in_a_fresh_process_with_identical_scores(tmp_path: Path) -> None:
    assert_reloads_without_the_graph("ltgnn", tmp_path)
