"""DNIS (recsys/embeddings/dnis.py, recsys/train/dnis_search.py): bucket index maths, the pruning to a budget, and
``recsys embeddings search`` writing a config that ``recsys train`` retrains within the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from recsys.config import TrainConfig
from recsys.data.layout import load_schema
from recsys.embeddings import LogicalTable, build_part, table_vectors
from recsys.embeddings.dnis import DnisPart, bucket_bounds
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.train.dnis_search import prune
from tests.conftest import REPO_ROOT, run_cli, train_cli

TABLE = LogicalTable("C9", 10, 8, ("C9",), False)


def _part(**options: object) -> DnisPart:
    part = build_part(TABLE, {"scheme": "dnis", "ratio": 1.0, **options})
    assert isinstance(part, DnisPart)
    return part


def test_equal_buckets_hold_equal_numbers_of_ids() -> None:
    assert bucket_bounds(10, 4) == [0, 2, 5, 7, 10]
    assert bucket_bounds(3, 4) == [0, 1, 2, 3]  # never an empty bucket
    part = _part()
    assert part.bucket(torch.arange(10)).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    custom = _part(bounds=[0, 1, 10], buckets=2)
    assert custom.bucket(torch.tensor([0, 1, 9])).tolist() == [0, 1, 1]


def test_search_mode_is_the_full_table_times_its_buckets_alpha() -> None:
    part = _part()
    assert [(t.name, t.rows, t.dim) for t in part.physical] == [("C9__dnis", 10, 8)]
    assert not part.linear and part.alpha is not None and part.alpha.shape == (4, 8)
    with torch.no_grad():
        part.alpha.copy_(torch.arange(1.0, 5.0).unsqueeze(1).expand(4, 8))
    ids = torch.tensor([0, 4, 9])
    vectors = torch.randn(3, 8)
    assert [r.tolist() for r in part.remap("C9", ids)] == [ids.tolist()]
    out = part.combine([vectors], ids)
    torch.testing.assert_close(out, vectors * torch.tensor([1.0, 2.0, 4.0]).unsqueeze(1))


def test_final_mode_looks_ids_up_in_their_buckets_table_and_projects_it() -> None:
    part = _part(dims=[8, 4, 0, 4])
    assert [(t.name, t.rows, t.dim) for t in part.physical] == [("C9__dnis0", 2, 8), ("C9__dnis1", 3, 4),
                                                                ("C9__dnis3", 3, 4)]
    assert part.alpha is None and sorted(part.projections) == ["1", "3"]  # bucket 0 keeps the full dim
    ids = torch.tensor([1, 2, 4, 5, 9])  # buckets 0, 1, 1, 2 (pruned), 3
    remapped = part.remap("C9", ids)
    assert [r.tolist() for r in remapped] == [[1, 0, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 0, 0, 2]]
    vectors = [torch.randn(5, t.dim) for t in part.physical]
    out = part.combine(vectors, ids)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out[0], vectors[0][0])
    torch.testing.assert_close(out[1:3], part.projections["1"](vectors[1][1:3]))
    torch.testing.assert_close(out[3], torch.zeros(8))  # a pruned bucket gives zeros
    torch.testing.assert_close(out[4], part.projections["3"](vectors[2][4]))


@pytest.mark.parametrize(("options", "message"), [
    ({"dims": [8, 4]}, "2 dims for 4 buckets"),
    ({"dims": [8, 12, 4, 4]}, "above the table's dim 8"),
    ({"dims": [8, 6, 4, 4]}, "6 is not a multiple of 4"),
    ({"dims": [0, 0, 0, 0]}, "every bucket is pruned"),
    ({"bounds": [0, 5, 12]}, "ends at 12 but the table has 10 rows"),
    ({"bounds": [0, 5, 5, 10]}, "should rise strictly"),
    ({"dims": [8, -4, 4, 4]}, "negative"),
])
def test_inconsistent_options_name_the_table_and_key(options: dict[str, object], message: str) -> None:
    with pytest.raises(RecsysError, match=message) as caught:
        _part(**options)
    assert "embedding.tables.C9" in str(caught.value) and "\n" not in str(caught.value)


def test_pruning_keeps_the_strongest_columns_within_the_budget() -> None:
    # table a: its head bucket matters, its tail does not; table b: uniformly weak but gets its best entry
    scores = {"a": torch.tensor([[1.0] * 8, [0.5] * 4 + [0.01] * 4, [0.001] * 8]), "b": torch.full((2, 8), 0.002)}
    bounds = {"a": [0, 4, 100, 1000], "b": [0, 500, 1000]}
    cost = {"a": [4, 96, 900], "b": [500, 500]}

    def params(dims: dict[str, list[int]]) -> int:
        return sum(d * (cost[t][b] + 8) for t in dims for b, d in enumerate(dims[t]))

    budget = 8 * (4 + 8) + 4 * (96 + 8) + 4 * (500 + 8) + 100  # not enough for a's next 4 columns of bucket 1
    dims = prune(scores, bounds, budget=budget)
    assert dims == {"a": [8, 4, 0], "b": [4, 0]}, dims
    assert params(dims) <= budget
    # a budget below the mandatory entries keeps one group per table and nothing else
    # (a's 4-row head bucket takes the full dim: 4 dims and a 4 x 8 projection would be more than 4 x 8 rows)
    assert prune(scores, bounds, budget=1) == {"a": [8, 0, 0], "b": [4, 0]}
    # a large budget keeps everything
    assert prune(scores, bounds, budget=1e9) == {"a": [8, 8, 8], "b": [8, 8]}


def test_a_chosen_config_embeds_the_pruned_buckets_as_zeros_through_the_model(small_ctr: Path) -> None:
    schema = load_schema(small_ctr)
    rows = next(t.cardinality for t in schema.tables if t.name == "C12")
    assert rows is not None and rows >= 8
    config = TrainConfig.load(REPO_ROOT / "configs" / "dlrm.yaml",
                              ["embedding.tables.C12.scheme=dnis", "embedding.tables.C12.dims=[32,8,0,4]"])
    torch.manual_seed(0)
    model = build_model("dlrm", schema, config.model, config.embedding)
    assert model.sparse_arch.schemes["C12"] == "dnis" and model.sparse_arch.schemes["C1"] == "standard"
    bounds = bucket_bounds(rows, 4)
    vectors = table_vectors(model.sparse_arch, "C12", torch.arange(rows))
    assert vectors.shape == (rows, 32)
    assert bool((vectors[bounds[2]:bounds[3]] == 0).all())
    assert bool((vectors[:bounds[2]].abs().sum(dim=1) > 0).all() and (vectors[bounds[3]:].abs().sum(dim=1) > 0).all())


@pytest.mark.slow
def test_search_writes_a_config_that_retrains_within_the_budget(small_ctr: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    result = run_cli("-q", "embeddings", "search", "--model", "dlrm", "--data", str(small_ctr), "--out", str(out),
                     "--config", str(REPO_ROOT / "configs" / "dlrm.yaml"), "--budget-ratio", "2", "--steps", "12",
                     "--set", "trainer.batch_size=256", "--set", "trainer.progress=false",
                     "--set", "embedding.tables.C1.scheme=standard")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "dnis.json").read_text())
    assert summary["budget_met"] and summary["table_params"] + summary["projection_params"] <= summary["full_params"] / 2
    assert "C1" not in summary["tables"] and "C2" in summary["tables"]  # a table's own scheme is kept
    alphas = [a for table in summary["tables"].values() for a in table["mean_abs_alpha"]]
    assert any(abs(a - 1.0) > 1e-3 for a in alphas), "α did not move"
    assert "fewer" in (out / "dnis.md").read_text()
    chosen = yaml.safe_load((out / "dnis.yaml").read_text())
    assert chosen["model"]["interaction"] == "dot" and chosen["embedding"]["tables"]["C1"]["scheme"] == "standard"
    assert chosen["embedding"]["tables"]["C2"]["dims"] == summary["tables"]["C2"]["dims"]

    run = tmp_path / "retrain"
    trained = train_cli(small_ctr, run, "trainer.max_steps=5", "trainer.batch_size=256",
                        extra=("--config", str(out / "dnis.yaml")))
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run / "artifact" / "metrics.json").read_text())
    searched_full = 4 * summary["full_params"]
    c1 = 4 * 32 * next(t.cardinality for t in load_schema(small_ctr).tables if t.name == "C1")
    assert metrics["embedding_bytes_full"] == searched_full + c1
    assert metrics["embedding_bytes"] == 4 * summary["table_params"] + c1
    assert metrics["embedding_bytes"] - c1 <= searched_full / 2


def test_search_without_a_budget_is_a_one_line_error(small_ctr: Path, tmp_path: Path) -> None:
    result = run_cli("embeddings", "search", "--model", "dlrm", "--data", str(small_ctr), "--out",
                     str(tmp_path / "s"), "--steps", "1")
    assert result.returncode == 2
    assert "--budget-ratio" in result.stderr and "Traceback" not in result.stderr
