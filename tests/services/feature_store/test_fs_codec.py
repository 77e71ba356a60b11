"""Records decode only into the model's tables, and say which one cannot be decoded; layouts have a stable digest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data.transforms import OOV_INDEX
from recsys.schema import Entity, Schema
from services.feature_store.codec import RecordCodec, RecordError, layout_fingerprint, record_layouts


def _records(codec: RecordCodec, n: int) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """n records' worth of in-range ids: row r of every key's table is r + 1 (histories of r + 1 ids)."""
    ids = [[np.full(r + 1 if key in codec.sequence_keys else 1, r + 1, np.int64) for key in codec.keys]
           for r in range(n)]
    return codec.default_dense, ids


@pytest.mark.parametrize("entity", [Entity.USER, Entity.ITEM])  # users: histories of mixed sizes; items: one size
def test_ids_outside_the_tables_read_as_oov_and_are_reported(small_ctr: Path, entity: Entity) -> None:
    schema = Schema.load(small_ctr)
    codec = RecordCodec(schema, entity)
    dense, ids = _records(codec, 4)
    rows = dict(zip(codec.keys, codec.rows.tolist(), strict=True))
    key = codec.keys[0]
    ids[1][0] = np.full(len(ids[1][0]), rows[key], np.int64)  # one past the table's last row
    ids[3][-1] = np.full(len(ids[3][-1]), -1, np.int64)  # negative
    batch = codec.decode_many([codec.encode(dense, row) for row in ids])
    assert batch.out_of_range.tolist() == [1, 3]
    for k in range(codec.n_keys):
        starts = np.concatenate([[0], np.cumsum(batch.lengths[:, k])])
        for r in range(4):
            got = batch.values[k][starts[r] : starts[r + 1]]
            bad = (r == 1 and k == 0) or (r == 3 and k == codec.n_keys - 1)
            assert (got == (OOV_INDEX if bad else r + 1)).all(), (r, codec.keys[k], got)
    assert codec.decode_many([codec.encode(dense, ids[0]), None]).out_of_range.tolist() == []


@pytest.mark.parametrize("entity", [Entity.USER, Entity.ITEM])
def test_records_that_do_not_fit_raise_naming_their_position(small_ctr: Path, entity: Entity) -> None:
    codec = RecordCodec(Schema.load(small_ctr), entity)
    dense, ids = _records(codec, 3)
    good = [codec.encode(dense, row) for row in ids]
    negative = bytearray(good[0])
    negative[codec.n_dense * 4 : codec.n_dense * 4 + 4] = np.array([-1], "<i4").tobytes()
    for junk in (good[1][:-8], good[1] + b"\x00" * 8, good[1][:5], good[1] + b"\x01", bytes(negative)):
        for records, row in (([good[0], junk], 1), ([junk, junk], 0)):  # mixed sizes, and one size
            with pytest.raises(RecordError, match=f"{entity} record") as caught:
                codec.decode_many(records)
            assert (caught.value.entity, caught.value.row) == (entity, row)


def test_layout_fingerprint_changes_with_what_records_mean(small_ctr: Path, tmp_path: Path) -> None:
    schema = Schema.load(small_ctr)
    copy = tmp_path / "copy"
    shutil.copytree(small_ctr, copy)
    same = layout_fingerprint(record_layouts(schema, small_ctr))
    assert same == layout_fingerprint(record_layouts(Schema.load(copy), copy))  # where it lives does not matter
    assert len(same) == 32 and int(same, 16) >= 0

    vocab = copy / "vocab" / "item_id.parquet"
    table = pl.read_parquet(vocab)
    table.with_columns(pl.col("index").reverse()).write_parquet(vocab)  # same size, other rows
    assert layout_fingerprint(record_layouts(schema, copy)) != same

    data = json.loads((small_ctr / "schema.json").read_text())
    user_dense = next(f for f in data["dense"] if f["entity"] == "user")
    user_dense["mean"] += 0.5
    (copy / "schema.json").write_text(json.dumps(data))
    shutil.copy(small_ctr / "vocab" / "item_id.parquet", vocab)
    assert layout_fingerprint(record_layouts(Schema.load(copy), copy)) != same
