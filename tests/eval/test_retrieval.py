"""Full-ranking evaluation on a hand-built data set: exclusions, skipped users, the catalogue, the call sequence."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.errors import RecsysError
from recsys.eval.retrieval import evaluate_retriever, item_catalogue
from recsys.schema import Column, Encoding, Entity, Schema, SparseFeature, Table, Task
from recsys.types import Batch

# One-dimensional vectors: item i scores ITEM[i] × the user's sign, so every ranking is known by hand.
ITEM = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]  # items 0..5 (item 5 only in valid)
USER = [1.0, -1.0, 1.0, 1.0]  # users 0..3


def _schema() -> Schema:
    return Schema(
        task=Task.IMPLICIT,
        sparse=[SparseFeature(name="user_id", entity=Entity.USER), SparseFeature(name="item_id", entity=Entity.ITEM)],
        tables=[Table(name="user_id", encoding=Encoding.IDENTITY, cardinality=4),
                Table(name="item_id", encoding=Encoding.IDENTITY, cardinality=6)],
        user_key=Column(name="user_key"),
        item_key=Column(name="item_key"),
    )


def _write(folder: Path, pairs: list[tuple[int, int]], files: int = 1) -> None:
    folder.mkdir(parents=True)
    for part in range(files):
        rows = pairs[part::files]
        table = pa.table({
            "user_id": pa.array([u for u, _ in rows], pa.int64()),
            "item_id": pa.array([i for _, i in rows], pa.int64()),
            "user_key": pa.array([f"u{u}" for u, _ in rows], pa.string()),
            "item_key": pa.array([f"i{i}" for _, i in rows], pa.string()),
        })
        pq.write_table(table, folder / f"part-{part:05d}.parquet")


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """u0 trained on i0, i1; u1 on i4 with i3 in valid; u2 untrained; u3's only test item is one it trained on."""
    _schema().save(tmp_path)
    _write(tmp_path / "train", [(0, 0), (0, 1), (1, 4), (3, 2)], files=2)
    _write(tmp_path / "valid", [(1, 3), (3, 5)])
    _write(tmp_path / "test", [(0, 0), (0, 3), (1, 2), (1, 0), (2, 1), (3, 2), (1, 3)])
    return tmp_path


class Tables:
    """user_vectors / item_vectors from fixed tables, recording what each call saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int], list[int]]] = []

    def _ids(self, batch: Batch, key: str) -> torch.Tensor:
        jagged = batch.sparse[key]
        assert jagged.lengths().tolist() == [1] * batch.batch_size, f"{key} should have one id per row"
        return jagged.values()

    def users(self, batch: Batch) -> torch.Tensor:
        # The item tower's features never reach the user tower: the held-out item would leak.
        assert batch.sparse["item_id"].lengths().sum().item() == 0
        ids = self._ids(batch, "user_id")
        self.calls.append(("users", ids.tolist(), []))
        return torch.tensor([[USER[i]] for i in ids.tolist()])

    def items(self, batch: Batch) -> torch.Tensor:
        assert batch.sparse["user_id"].lengths().sum().item() == 0
        ids = self._ids(batch, "item_id")
        self.calls.append(("items", [], ids.tolist()))
        return torch.tensor([[ITEM[i]] for i in ids.tolist()])


def test_catalogue_is_every_item_in_first_appearance_order(data: Path) -> None:
    catalogue = item_catalogue(data, _schema())
    # train part 0 has (0,0),(1,4); part 1 (0,1),(3,2); then valid (1,3),(3,5); test adds nothing new.
    assert catalogue.keys == ["i0", "i4", "i1", "i2", "i3", "i5"]
    ids = [batch.sparse["item_id"].values().tolist() for batch in catalogue.batches(4)]
    assert ids == [[0, 4, 1, 2], [3, 5]]


def test_training_items_are_excluded_by_hand(data: Path) -> None:
    tables = Tables()
    metrics = evaluate_retriever(tables.users, tables.items, "dot", data, "test", batch_size=3, cutoffs=(1, 2, 5))
    # u0 (+): without its train items i0, i1 the ranking is i2, i3, i4, i5. Its test items: i0 (trained on,
    #   so neither ranked nor relevant) and i3, at rank 2.
    # u1 (-): without train i4 and valid i3: i5, i2, i1, i0. Test items i2, i0 (i3 was in valid): ranks 2, 4.
    # u2 (+): nothing excluded: i0, i1, ...; test item i1 at rank 2.
    # u3: its only test item i2 is a training item: skipped.
    assert metrics["users"] == 3 and metrics["items"] == 6
    assert metrics["recall@1"] == pytest.approx(0.0)
    assert metrics["recall@2"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["recall@5"] == pytest.approx(1.0)
    assert metrics["hr@1"] == 0.0 and metrics["hr@2"] == 1.0
    d2 = 1 / math.log2(3)
    ndcg2 = [d2 / 1, d2 / (1 + d2), d2 / 1]
    assert metrics["ndcg@2"] == pytest.approx(sum(ndcg2) / 3)
    ndcg5 = [d2, (d2 + 1 / math.log2(5)) / (1 + d2), d2]
    assert metrics["ndcg@5"] == pytest.approx(sum(ndcg5) / 3)
    assert metrics["mrr"] == pytest.approx(0.5)
    # Users in order of first appearance in test, 3 per call; the catalogue first, in its order.
    assert [c[0] for c in tables.calls] == ["items", "items", "users"]
    assert tables.calls[2][1] == [0, 1, 2]


def test_valid_excludes_train_only(data: Path) -> None:
    tables = Tables()
    metrics = evaluate_retriever(tables.users, tables.items, "dot", data, "valid", cutoffs=(1,))
    # u1 (-), train i4 out: i5, i3, ... -> i3 at rank 2. u3 (+), train i2 out: i0, i1, i3, i4, i5 -> i5 at rank 5.
    assert metrics["users"] == 2
    assert metrics["recall@1"] == 0.0
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1 / 5) / 2)


def test_l2_similarity_ranks_by_distance(data: Path) -> None:
    tables = Tables()
    metrics = evaluate_retriever(tables.users, tables.items, "l2", data, "valid", cutoffs=(1,))
    # u1 at -1: nearest items i5 (0.5), i3 (2), ... with i4 excluded -> i3 at rank 2.
    # u3 at +1: i4 (distance 0), i5 (0.5), ... with i2 excluded -> i5 at rank 2 (by dot product it is 5th).
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_same_calls_whatever_the_block_size(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring blocks split users inside a call; results and calls are unchanged."""
    import recsys.eval.retrieval as retrieval

    first = Tables()
    expected = evaluate_retriever(first.users, first.items, "dot", data, "test", batch_size=2)
    monkeypatch.setattr(retrieval, "SCORE_BLOCK", 1)  # one user at a time
    second = Tables()
    assert evaluate_retriever(second.users, second.items, "dot", data, "test", batch_size=2) == expected
    assert first.calls == second.calls


def test_bad_inputs_are_one_line_errors(data: Path) -> None:
    tables = Tables()
    with pytest.raises(RecsysError, match="'valid' or 'test'"):
        evaluate_retriever(tables.users, tables.items, "dot", data, "train")
    with pytest.raises(RecsysError, match="similarity"):
        evaluate_retriever(tables.users, tables.items, "cosine", data, "test")

    def nan_items(batch: Batch) -> torch.Tensor:
        return torch.full((batch.batch_size, 1), float("nan"))

    with pytest.raises(RecsysError, match="non-finite"):
        evaluate_retriever(tables.users, nan_items, "dot", data, "test")


def test_empty_split_evaluates_no_user(data: Path) -> None:
    for part in (data / "valid").iterdir():
        part.unlink()
    tables = Tables()
    metrics = evaluate_retriever(tables.users, tables.items, "dot", data, "valid")
    assert metrics["users"] == 0 and metrics["recall@20"] == 0.0
    assert metrics["items"] == 5  # i5 was only in valid
