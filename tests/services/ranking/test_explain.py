"""``"explain": true`` on /v1/rank: the top-k rows' contributions, from the model thread, over real HTTP."""

from __future__ import annotations

import numpy as np

from services.ranking.features import RowBlock


def test_take_keeps_each_rows_jagged_ids() -> None:
    # two keys: one id per row, and a history of lengths 2, 0, 3
    block = RowBlock(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([[1, 1, 1], [2, 0, 3]], np.int32),
                     [np.array([10, 11, 12]), np.array([1, 2, 5, 6, 7])])
    taken = block.take([2, 0])
    assert taken.dense.tolist() == [[4, 5], [0, 1]]
    assert taken.lengths.tolist() == [[1, 1], [3, 2]]
    assert [v.tolist() for v in taken.values] == [[12, 10], [5, 6, 7, 1, 2]]
    assert taken.take([]).rows == 0
