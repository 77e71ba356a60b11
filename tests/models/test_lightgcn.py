"""LightGCN's own claims: its propagation is the paper's formula, it trains, and its exported vectors need no graph."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from recsys.config import EmbeddingConfig
from recsys.embeddings import table_vectors
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.models.graph import build_graph, lookup_all, propagate, sample_neighbours
from recsys.tasks.implicit import pair_loss
from tests.models.graphs import dense_adjacency, implicit_schema, interactions, pair_batch, random_pairs

REPO = Path(__file__).resolve().parents[2]


def _model(section: dict | None = None, scheme: str = "standard", users: int = 3, items: int = 4, dim: int = 4):
    torch.manual_seed(0)
    embedding = EmbeddingConfig(scheme=scheme, ratio=2.0) if scheme != "standard" else EmbeddingConfig()
    return build_model("lightgcn", implicit_schema(users, items, dim), section or {}, embedding)


def _dense_lightgcn(model, users: np.ndarray, items: np.ndarray, layers: int) -> torch.Tensor:
    """mean_k Â^k E0, (N, d) float64, with Â built densely from the definition."""
    e0 = torch.cat([table_vectors(model.embeddings, "user_id", torch.arange(model.users)),
                    table_vectors(model.embeddings, "item_id", torch.arange(model.items))]).double()
    a = dense_adjacency(users, items, model.users, model.items)
    layer, total = e0, e0
    for _ in range(layers):
        layer = a @ layer
        total = total + layer
    return total / (layers + 1)


def test_normalised_adjacency_matches_the_definition_and_drops_duplicate_interactions() -> None:
    users, items = interactions()
    graph = build_graph(np.concatenate([users, users[:2]]), np.concatenate([items, items[:2]]), 3, 4)
    assert graph.edges == len(users)
    assert torch.allclose(graph.matrix().to_dense().double(), dense_adjacency(users, items, 3, 4), atol=1e-6)


@pytest.mark.parametrize("scheme", ["standard", "hash", "qr"])
def test_propagation_equals_a_dense_reference_of_the_formula(scheme: str) -> None:
    users, items = interactions()
    model = _model({"layers": 3}, scheme)
    model.attach_interactions(users, items)
    expected = _dense_lightgcn(model, users, items, 3)
    final, _ = model.propagated()
    assert torch.allclose(final.double(), expected, atol=1e-5)
    model.eval()  # the buffers the artifact and scoring use
    assert torch.allclose(model.user_final.double(), expected[:3], atol=1e-5)
    assert torch.allclose(model.item_final.double(), expected[3:], atol=1e-5)
    batch = pair_batch([2, 0], [3, 1])
    assert torch.allclose(model.user_vectors(batch).double(), expected[[2, 0]], atol=1e-5)
    assert torch.allclose(model.item_vectors(batch).double(), expected[[3 + 3, 3 + 1]], atol=1e-5)


def test_gradient_of_the_propagation_is_the_transpose_product() -> None:
    users, items = random_pairs(6, 5, 14)
    graph = build_graph(users, items, 6, 5)
    x = torch.randn(11, 3, dtype=torch.float32, requires_grad=True)
    weights = torch.randn(11, 3)
    (propagate(graph, propagate(graph, x)) * weights).sum().backward()
    a = dense_adjacency(users, items, 6, 5).float()
    assert torch.allclose(x.grad, a.T @ (a.T @ weights), atol=1e-5)


def test_training_step_reaches_the_tables_and_lowers_the_loss() -> None:
    users, items = random_pairs(20, 30, 200)
    model = _model({"layers": 2, "l2": 1e-4}, users=20, items=30, dim=8)
    model.attach_interactions(users, items)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    batch = pair_batch(users[:64].tolist(), items[:64].tolist())
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same negatives each step: the loss of one fixed problem
        optimizer.zero_grad()
        out = model(batch)
        assert out.scores.shape == (64, 2) and out.penalty is not None
        loss = pair_loss(out)
        loss.backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_a_user_reaches_items_of_similar_users_through_the_graph() -> None:
    """With 1+ layers a user's vector mixes in its items' (and their users'), which MF (0 layers) does not."""
    users, items = interactions()
    model = _model({"layers": 2})
    model.attach_interactions(users, items)
    model.eval()
    lone = _model({"layers": 0})
    lone.eval()
    assert not torch.allclose(model.user_final, lone.user_final)
    assert torch.allclose(lone.user_final, table_vectors(lone.embeddings, "user_id", torch.arange(3)))


def test_eval_scores_come_from_the_buffers_without_lookups() -> None:
    users, items = interactions()
    model = _model()
    model.attach_interactions(users, items)
    model(pair_batch([0], [1]))
    model.eval()
    calls = []
    model.embeddings.register_forward_pre_hook(lambda module, args: calls.append(1))
    out = model(pair_batch([0, 1], [1, 2]))
    model.user_vectors(pair_batch([0, 1], [1, 2]))
    assert calls == [] and out.scores.shape == (2, 2)


def test_bad_interactions_are_one_line_errors() -> None:
    model = _model()
    with pytest.raises(RecsysError, match="items hold ids outside"):
        model.attach_interactions(np.array([0]), np.array([9]))
    with pytest.raises(RecsysError, match="one length"):
        model.attach_interactions(np.array([0, 1]), np.array([0]))


def test_lookup_pads_the_shorter_key_with_empty_bags() -> None:
    model = _model(users=3, items=7)
    rows = lookup_all(model.embeddings, 3, 7)
    assert rows.shape == (10, 4)
    assert torch.equal(rows[:3], table_vectors(model.embeddings, "user_id", torch.arange(3)))


def test_sampled_neighbours_are_neighbours() -> None:
    users, items = interactions()
    graph = build_graph(users, items, 3, 4)
    neighbours, weights = sample_neighbours(graph, torch.arange(7), 5)
    a = dense_adjacency(users, items, 3, 4)
    assert (a[torch.arange(7).unsqueeze(1), neighbours] > 0).all()
    assert (weights > 0).all()


_RELOAD = """
import sys, torch
from safetensors.torch import load_file
from recsys.config import EmbeddingConfig
from recsys.models import build_model
from tests.models.graphs import implicit_schema, pair_batch
model = build_model(sys.argv[1], implicit_schema(20, 30, 8), {}, EmbeddingConfig())
model.load_state_dict(load_file(sys.argv[2]))
model.eval()
batch = pair_batch(list(range(20)), [i % 30 for i in range(20)])
items = model.item_vectors(pair_batch([0] * 30, list(range(30))))
torch.save(model.score(model.user_vectors(batch), items), sys.argv[3])
"""


def assert_reloads_without_the_graph(name: str, tmp_path: Path) -> None:
    """Trained with a graph, the state saved, then scored in a fresh process that never sees the graph."""
    torch.manual_seed(0)
    model = build_model(name, implicit_schema(20, 30, 8), {}, EmbeddingConfig())
    users, items = random_pairs(20, 30, 150)
    model.attach_interactions(users, items)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(5):
        optimizer.zero_grad()
        pair_loss(model(pair_batch(users[step * 30:(step + 1) * 30].tolist(),
                                   items[step * 30:(step + 1) * 30].tolist()))).backward()
        optimizer.step()
    model.eval()
    batch = pair_batch(list(range(20)), [i % 30 for i in range(20)])
    expected = model.score(model.user_vectors(batch), model.item_vectors(pair_batch([0] * 30, list(range(30)))))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "weights.safetensors")
    subprocess.run([sys.executable, "-c", _RELOAD, name, str(tmp_path / "weights.safetensors"),
                    str(tmp_path / "scores.pt")], check=True, cwd=REPO, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    assert torch.equal(torch.load(tmp_path / "scores.pt"), expected)
    assert expected.std() > 0


def test_export_reloads_in_a_fresh_process_with_identical_scores(tmp_path: Path) -> None:
    assert_reloads_without_the_graph("lightgcn", tmp_path)


@pytest.mark.parametrize("name", ["lightgcn", "ltgnn"])
@pytest.mark.parametrize("section", [{"loss": "softmax", "sampling": "in_batch", "negatives": 3},
                                     {"loss": "bpr", "sampling": "in_batch"}, {"loss": "hinge", "negatives": 2},
                                     {"layers": 2}])
def test_every_loss_and_sampling_of_the_contract_trains(name: str, section: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, implicit_schema(20, 30, 8), section, EmbeddingConfig())
    model.attach_interactions(*random_pairs(20, 30, 150))
    batch = pair_batch([0, 4, 4, 9], [1, 2, 2, 7])  # rows 1 and 2 share their item: excluded for each other
    out = model(batch)
    in_batch = section.get("sampling") == "in_batch"
    width = 4 + section.get("negatives", 0) if in_batch else 1 + section.get("negatives", 1)
    assert out.scores.shape == (4, width)
    if in_batch:
        assert out.exclude[1, 2] and out.exclude[2, 1] and not out.exclude[1, 1]
    loss = pair_loss(out)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
