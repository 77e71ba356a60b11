"""The Parquet → Batch reader: contents match the files, every row once per epoch over ranks and workers,
global batches that do not depend on the world size, and exact mid-epoch resume."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from recsys.data import reader as reader_module
from recsys.data.layout import split_files
from recsys.data.pipeline import PrepareOptions
from recsys.data.reader import ParquetReader
from recsys.data.synth import CtrConfig, ImplicitConfig, synth_ctr, synth_implicit
from recsys.errors import RecsysError
from recsys.schema import Column, DenseFeature, Entity, Label, Schema, SequenceFeature, SparseFeature, Table, Task
from tests.conftest import train_cli


@pytest.fixture(scope="session")
def ctr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Small row groups, so rank and worker boundaries fall inside and across row groups.
    out = tmp_path_factory.mktemp("reader") / "ctr"
    synth_ctr(CtrConfig(rows=20_000, seed=1), out, PrepareOptions(row_group_size=1000))
    return out


@pytest.fixture(scope="session")
def train(ctr_dir: Path) -> pl.DataFrame:
    """The train split as polars reads it: files in name order, rows in file order (= row ids)."""
    return pl.concat([pl.read_parquet(p) for p in split_files(ctr_dir, "train")])


def _read_all(reader: ParquetReader) -> tuple[list[int], np.ndarray]:
    """Batch sizes and the concatenated row ids of one epoch."""
    sizes, ids = [], []
    for batch, row_ids in reader.iter_with_row_ids():
        sizes.append(batch.batch_size)
        ids.append(row_ids.numpy())
    return sizes, np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)


def _check_contents(batch, row_ids: torch.Tensor, frame: pl.DataFrame, schema: Schema) -> None:
    """Every part of the batch equals the Parquet rows its row ids name."""
    rows = frame[row_ids.numpy()]
    dense = rows.select([f.name for f in schema.dense]).to_numpy().astype(np.float32)
    np.testing.assert_array_equal(batch.dense.numpy(), dense)
    np.testing.assert_array_equal(batch.labels.numpy(), rows["label"].to_numpy())
    jagged = batch.sparse.to_dict()
    for feature in schema.sparse:
        assert jagged[feature.name].lengths().tolist() == [1] * len(rows)
        assert jagged[feature.name].values().tolist() == rows[feature.name].to_list()
    for feature in schema.sequences:
        assert jagged[feature.name].lengths().tolist() == rows[feature.name].list.len().to_list()
        assert jagged[feature.name].values().tolist() == rows[feature.name].explode().drop_nulls().to_list()


def test_batches_have_the_contracted_shapes_and_dtypes(ctr_dir: Path) -> None:
    reader = ParquetReader(ctr_dir, "train", batch_size=512)
    schema = reader.schema
    batch = next(iter(reader))
    keys = schema.sparse_keys
    assert batch.dense.shape == (512, len(schema.dense)) and batch.dense.dtype == torch.float32
    assert batch.labels.shape == (512,) and batch.labels.dtype == torch.float32
    assert batch.sparse.keys() == keys == reader.keys
    assert batch.sparse.stride() == 512
    assert batch.sparse.lengths().shape == (len(keys) * 512,) and batch.sparse.lengths().dtype == torch.int32
    assert batch.sparse.values().dtype == torch.int64
    assert batch.sparse.values().numel() == int(batch.sparse.lengths().sum())


def test_pin_memory_is_ignored_without_an_accelerator(ctr_dir: Path) -> None:
    for num_workers in (0, 1):
        batch = next(iter(ParquetReader(ctr_dir, "valid", batch_size=64, pin_memory=True, num_workers=num_workers)))
        assert batch.batch_size == 64
        assert batch.dense.is_pinned() == torch.accelerator.is_available()


def test_unshuffled_batches_equal_the_parquet_rows_in_file_order(ctr_dir: Path, train: pl.DataFrame) -> None:
    reader = ParquetReader(ctr_dir, "train", batch_size=700)  # batches straddle the 1000-row groups
    seen = 0
    for batch, row_ids in reader.iter_with_row_ids():
        assert row_ids.tolist() == list(range(seen, seen + batch.batch_size))
        if seen < 3000 or seen + batch.batch_size >= len(train):  # the first row groups and the tail
            _check_contents(batch, row_ids, train, reader.schema)
        seen += batch.batch_size
    assert seen == reader.rows == len(train)


def test_sequences_keep_their_lengths_including_empty_histories(ctr_dir: Path, train: pl.DataFrame) -> None:
    reader = ParquetReader(ctr_dir, "train", batch_size=4096)
    lengths = {name: [] for name in ("hist_item_id", "hist_category")}
    for batch in reader:
        jagged = batch.sparse.to_dict()
        for name in lengths:
            lengths[name] += jagged[name].lengths().tolist()
    for name, got in lengths.items():
        expected = train[name].list.len().to_list()
        assert got == expected
        assert 0 in expected, "the fixture should contain users without history"


@pytest.mark.parametrize(("world_size", "num_workers"), [(2, 0), (3, 0), (2, 2), (3, 2)])
def test_ranks_and_workers_read_every_row_exactly_once(
    ctr_dir: Path, train: pl.DataFrame, world_size: int, num_workers: int
) -> None:
    counts, everything = [], []
    for rank in range(world_size):
        reader = ParquetReader(ctr_dir, "train", batch_size=300, shuffle=True, shuffle_buffer=2500, seed=3,
                               num_workers=num_workers, rank=rank, world_size=world_size)
        reader.set_epoch(1)
        sizes, ids = _read_all(reader)
        assert sum(sizes) == reader.rows and len(sizes) == reader.num_batches == len(reader)
        assert sum(size < 300 for size in sizes) <= 1, "only the rank's last batch may be partial"
        counts.append(len(ids))
        everything.append(ids)
    assert max(counts) - min(counts) <= 1
    assert np.array_equal(np.sort(np.concatenate(everything)), np.arange(len(train)))


def test_shuffled_batches_carry_the_rows_their_ids_name(ctr_dir: Path, train: pl.DataFrame) -> None:
    reader = ParquetReader(ctr_dir, "train", batch_size=256, shuffle=True, shuffle_buffer=3000, num_workers=2,
                           rank=1, world_size=2)
    batches = list(reader.iter_with_row_ids())
    for batch, row_ids in batches[:3] + batches[-2:]:
        _check_contents(batch, row_ids, train, reader.schema)


def test_shuffle_reorders_per_epoch_and_is_reproducible(ctr_dir: Path) -> None:
    def epoch_ids(epoch: int, seed: int = 0, num_workers: int = 0) -> np.ndarray:
        reader = ParquetReader(ctr_dir, "train", batch_size=512, shuffle=True, shuffle_buffer=4000, seed=seed,
                               num_workers=num_workers)
        reader.set_epoch(epoch)
        return _read_all(reader)[1]

    first, second = epoch_ids(0), epoch_ids(1)
    assert not np.array_equal(first, second)
    assert np.array_equal(np.sort(first), np.sort(second))
    assert not np.array_equal(first, np.sort(first)), "rows should move within and across row groups"
    assert np.array_equal(first, epoch_ids(0))
    assert not np.array_equal(first, epoch_ids(0, seed=1))
    assert np.array_equal(epoch_ids(2, num_workers=2), epoch_ids(2, num_workers=2))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_drop_last_drops_only_the_final_partial_batch(ctr_dir: Path, train: pl.DataFrame, num_workers: int) -> None:
    batch_size = 1000 + 7  # never divides the split
    reader = ParquetReader(ctr_dir, "train", batch_size=batch_size, shuffle=True, drop_last=True,
                           num_workers=num_workers)
    sizes, ids = _read_all(reader)
    assert sizes == [batch_size] * (len(train) // batch_size) and len(sizes) == reader.num_batches
    assert len(set(ids.tolist())) == len(ids)
    kept = ParquetReader(ctr_dir, "train", batch_size=batch_size, num_workers=num_workers)
    assert _read_all(kept)[0][-1] == len(train) % batch_size


def test_drop_last_gives_every_rank_the_same_step_count(ctr_dir: Path, train: pl.DataFrame) -> None:
    # A world size and batch size for which ranks of N // W and N // W + 1 rows would differ by a step.
    world_size, batch_size = next(
        (w, b) for w in range(3, 12) if len(train) % w for b in range(16, len(train) // w) if (len(train) // w + 1) % b == 0)
    untrimmed = [ParquetReader(ctr_dir, "train", batch_size=batch_size, rank=r, world_size=world_size).rows // batch_size
                 for r in range(world_size)]
    assert len(set(untrimmed)) == 2, "without trimming, the ranks would take different step counts"
    steps = []
    for rank in range(world_size):
        reader = ParquetReader(ctr_dir, "train", batch_size=batch_size, drop_last=True, rank=rank,
                               world_size=world_size)
        steps.append(len(list(reader)))
        assert reader.rows == len(train) // world_size
    assert len(set(steps)) == 1 and steps[0] == reader.num_batches


def test_valid_split_reads_unshuffled_and_complete(ctr_dir: Path) -> None:
    reader = ParquetReader(ctr_dir, "valid", batch_size=333, num_workers=2)
    sizes, ids = _read_all(reader)
    rows = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in split_files(ctr_dir, "valid"))
    assert sum(sizes) == rows and np.array_equal(np.sort(ids), np.arange(rows))


# ---- the global partition -----------------------------------------------------------------------

def _global_steps(ctr_dir: Path, global_batch: int, world_size: int, **options: Any) -> list[list[np.ndarray]]:
    """Per step, the row ids each rank yields under the global partition; checks the counts every rank reports."""
    per_rank = []
    for rank in range(world_size):
        reader = ParquetReader(ctr_dir, "train", batch_size=global_batch // world_size, rank=rank,
                               world_size=world_size, partition="global", **options)
        reader.set_epoch(1)
        sizes, ids = _read_all(reader)
        assert len(sizes) == reader.num_batches == len(reader) and sum(sizes) == reader.rows
        per_rank.append(np.split(ids, np.cumsum(sizes)[:-1]))
    assert len({len(batches) for batches in per_rank}) == 1, "every rank must take the same number of steps"
    return [list(step) for step in zip(*per_rank)]


@pytest.mark.parametrize(("shuffle", "num_workers"), [(False, 0), (True, 0), (False, 2), (True, 2)])
def test_global_batches_do_not_depend_on_the_world_size(
    ctr_dir: Path, train: pl.DataFrame, shuffle: bool, num_workers: int
) -> None:
    global_batch = 1200
    assert len(train) % global_batch >= 4, "the final partial global batch should be split over 4 ranks"
    options = dict(shuffle=shuffle, shuffle_buffer=2500, seed=3, num_workers=num_workers)
    one = [parts[0] for parts in _global_steps(ctr_dir, global_batch, 1, **options)]
    assert len(one) == -(-len(train) // global_batch)
    assert np.array_equal(np.sort(np.concatenate(one)), np.arange(len(train)))
    assert not shuffle or not np.array_equal(np.concatenate(one), np.arange(len(train))), "rows should move"
    for world_size in (2, 4):
        steps = _global_steps(ctr_dir, global_batch, world_size, **options)
        assert len(steps) == len(one)
        for whole, parts in zip(one, steps):
            assert np.array_equal(np.concatenate(parts), whole)  # rank order is row order within the global batch
        assert [len(part) for part in steps[0]] == [global_batch // world_size] * world_size


def test_global_batches_carry_the_rows_their_ids_name(ctr_dir: Path, train: pl.DataFrame) -> None:
    reader = ParquetReader(ctr_dir, "train", batch_size=256, shuffle=True, shuffle_buffer=3000, num_workers=2,
                           rank=2, world_size=3, partition="global")
    batches = list(reader.iter_with_row_ids())
    for batch, row_ids in batches[:2] + batches[-1:]:
        _check_contents(batch, row_ids, train, reader.schema)


def test_global_partition_of_one_rank_reads_as_the_rank_partition(ctr_dir: Path) -> None:
    def epoch(partition: str) -> list[int]:
        reader = ParquetReader(ctr_dir, "train", batch_size=700, shuffle=True, shuffle_buffer=2000, seed=4,
                               num_workers=2, partition=partition)
        reader.set_epoch(3)
        sizes, ids = _read_all(reader)
        return [*sizes, *ids.tolist()]

    assert epoch("global") == epoch("rank")


@pytest.mark.parametrize("drop_last", [False, True])
def test_global_final_partial_batch_is_split_over_ranks_or_dropped(
    ctr_dir: Path, train: pl.DataFrame, drop_last: bool
) -> None:
    world_size = 4
    # 1200: the final global batch has enough rows to give each rank some; the other: fewer rows than ranks.
    too_few = next(b for b in range(100, 1000) if 0 < len(train) % (world_size * b) < world_size)
    for batch_size in (300, too_few):
        global_batch = batch_size * world_size
        full, rest = divmod(len(train), global_batch)
        kept = not drop_last and rest >= world_size
        steps = _global_steps(ctr_dir, global_batch, world_size, drop_last=drop_last)
        assert len(steps) == full + kept
        assert all(len(part) == batch_size for step in steps[:full] for part in step)
        if kept:
            assert [len(part) for part in steps[-1]] == [
                (r + 1) * rest // world_size - r * rest // world_size for r in range(world_size)]
        yielded = np.concatenate([part for step in steps for part in step])
        assert len(yielded) == full * global_batch + (rest if kept else 0) == len(np.unique(yielded))


# ---- mid-epoch resume ---------------------------------------------------------------------------

@pytest.mark.parametrize("partition", ["rank", "global"])
@pytest.mark.parametrize(("shuffle", "num_workers"), [(False, 0), (True, 0), (False, 2), (True, 2)])
def test_set_start_resumes_with_the_tail_of_an_uninterrupted_iteration(
    ctr_dir: Path, partition: str, shuffle: bool, num_workers: int
) -> None:
    # Windows of 2000 rows hold several batches, so starts fall inside and between windows.
    reader = ParquetReader(ctr_dir, "train", batch_size=300, shuffle=shuffle, shuffle_buffer=2000, seed=5,
                           num_workers=num_workers, rank=1, world_size=2, partition=partition)
    reader.set_epoch(2)
    full = list(reader.iter_with_row_ids())
    n = reader.num_batches
    assert len(full) == n and full[-1][0].batch_size < 300, "the epoch should end with a partial batch"
    assert n == 27, "two workers hold 13 and 14 batches"
    # From 1 and n // 2 (odd), and from n - 1 (worker 0 has run out), the next batch is worker 1's.
    for start in sorted({0, 1, n // 2, n - 1, n}):
        reader.set_start(start)
        tail = list(reader.iter_with_row_ids())
        assert len(tail) == n - start
        for (batch, row_ids), (expected, expected_ids) in zip(tail, full[start:]):
            assert torch.equal(row_ids, expected_ids)
            assert torch.equal(batch.dense, expected.dense) and torch.equal(batch.labels, expected.labels)
            assert torch.equal(batch.sparse.lengths(), expected.sparse.lengths())
            assert torch.equal(batch.sparse.values(), expected.sparse.values())
    assert len(list(reader)) == n, "a start applies to one iteration only"


@pytest.mark.parametrize("partition", ["rank", "global"])
def test_set_start_neither_builds_skipped_batches_nor_reads_rows_they_alone_need(
    ctr_dir: Path, monkeypatch: pytest.MonkeyPatch, partition: str
) -> None:
    reader = ParquetReader(ctr_dir, "train", batch_size=200, shuffle=True, shuffle_buffer=2000, rank=1,
                           world_size=2, partition=partition)
    takes, rows_read = [], []
    take, read = reader_module._Window.take, reader_module._read_segments

    def counting_take(window: reader_module._Window, rows: slice | np.ndarray) -> Any:
        takes.append(1)
        return take(window, rows)

    def counting_read(*args: Any) -> Any:
        for piece, ids in read(*args):
            rows_read.append(len(ids))
            yield piece, ids

    monkeypatch.setattr(reader_module._Window, "take", counting_take)
    monkeypatch.setattr(reader_module, "_read_segments", counting_read)
    list(reader)
    epoch_rows = sum(rows_read)
    takes.clear()
    rows_read.clear()
    reader.set_start(reader.num_batches - 2)
    list(reader)
    assert len(takes) == 2
    assert sum(rows_read) < epoch_rows / 3


def test_partition_and_start_are_checked_and_set_epoch_clears_the_start(ctr_dir: Path) -> None:
    with pytest.raises(RecsysError, match="partition must be 'rank' or 'global', got 'ranks'"):
        ParquetReader(ctr_dir, "valid", batch_size=100, partition="ranks")
    reader = ParquetReader(ctr_dir, "valid", batch_size=100)
    for start in (-1, reader.num_batches + 1):
        with pytest.raises(RecsysError, match=f"start must be between 0 and {reader.num_batches} batches, got {start}"):
            reader.set_start(start)
    reader.set_start(reader.num_batches)
    reader.set_epoch(1)
    assert len(list(reader)) == reader.num_batches


# ---- other schemas ------------------------------------------------------------------------------

def test_implicit_data_yields_all_positive_labels(tmp_path: Path) -> None:
    out = tmp_path / "implicit"
    synth_implicit(ImplicitConfig(rows=6000, seed=0), out, PrepareOptions())
    reader = ParquetReader(out, "train", batch_size=128)
    batch = next(iter(reader))
    assert batch.dense.shape == (128, 0)
    assert torch.equal(batch.labels, torch.ones(128))
    assert batch.sparse.keys() == ["user_id", "item_id", "item_community"]
    assert batch.sparse.lengths().tolist() == [1] * (3 * 128)


def _tiny_schema() -> Schema:
    return Schema(
        task=Task.CTR,
        dense=[DenseFeature(name="x", entity=Entity.CONTEXT)],
        sparse=[SparseFeature(name="a", entity=Entity.USER), SparseFeature(name="tags", entity=Entity.ITEM, separator="|")],
        sequences=[SequenceFeature(name="hist", table="a", max_length=5)],
        tables=[Table(name="a", cardinality=10), Table(name="tags", cardinality=10)],
        labels=[Label(name="click"), Label(name="buy")],
        user_key=Column(name="user"),
    )


def _write_tiny(out: Path, frames: list[pl.DataFrame]) -> Path:
    (out / "train").mkdir(parents=True)
    _tiny_schema().save(out)
    for index, frame in enumerate(frames):
        frame.write_parquet(out / "train" / f"part-{index:05d}.parquet", row_group_size=2)
    return out


def test_multi_valued_features_null_lists_and_several_labels(tmp_path: Path) -> None:
    first = pl.DataFrame({
        "x": [0.5, 1.5, 2.5],
        "a": [1, 2, 3],
        "tags": [[1, 2], [], None],  # a null list reads as an empty one
        "hist": [[4], None, [5, 6, 7]],
        "click": [1.0, 0.0, 1.0],
        "buy": [0.0, 0.0, 1.0],
        "user": ["u1", "u2", "u3"],
    }, schema_overrides={"x": pl.Float32, "click": pl.Float32, "buy": pl.Float32})
    # A second file with wider types must read the same way as the first.
    second = pl.DataFrame({"x": [3.5], "a": [4], "tags": [[9]], "hist": [[]], "click": [0.0], "buy": [1.0],
                           "user": ["u4"]}, schema_overrides={"a": pl.Int32, "hist": pl.List(pl.Int64)})
    reader = ParquetReader(_write_tiny(tmp_path / "tiny", [first, second]), "train", batch_size=4)
    (batch,) = list(reader)
    assert batch.labels.shape == (4, 2) and batch.labels[:, 1].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert batch.dense[:, 0].tolist() == [0.5, 1.5, 2.5, 3.5]
    jagged = batch.sparse.to_dict()
    assert jagged["a"].values().tolist() == [1, 2, 3, 4]
    assert jagged["tags"].lengths().tolist() == [2, 0, 0, 1] and jagged["tags"].values().tolist() == [1, 2, 9]
    assert jagged["hist"].lengths().tolist() == [1, 0, 3, 0] and jagged["hist"].values().tolist() == [4, 5, 6, 7]


def test_null_in_a_scalar_column_names_file_and_column(tmp_path: Path) -> None:
    frame = pl.DataFrame({"x": [0.5, None], "a": [1, 2], "tags": [[1], [2]], "hist": [[1], [2]],
                          "click": [1.0, 0.0], "buy": [0.0, 0.0], "user": ["u1", "u2"]})
    reader = ParquetReader(_write_tiny(tmp_path / "tiny", [frame]), "train", batch_size=4)
    with pytest.raises(RecsysError, match=r"part-00000\.parquet: column 'x' has null values"):
        list(reader)


# ---- errors -------------------------------------------------------------------------------------

def test_errors_name_what_is_wrong(ctr_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="batch_size must be at least 1"):
        ParquetReader(ctr_dir, "train", batch_size=0)
    with pytest.raises(RecsysError, match="rank 2 is out of range for world_size 2"):
        ParquetReader(ctr_dir, "train", batch_size=8, rank=2, world_size=2)
    with pytest.raises(RecsysError, match="unknown split 'dev'"):
        ParquetReader(ctr_dir, "dev", batch_size=8)

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(ctr_dir / "schema.json", broken / "schema.json")
    with pytest.raises(RecsysError, match=r"broken/train: split directory missing"):
        ParquetReader(broken, "train", batch_size=8)
    (broken / "train").mkdir()
    with pytest.raises(RecsysError, match=r"broken/train: no Parquet files"):
        ParquetReader(broken, "train", batch_size=8)
    source = split_files(ctr_dir, "train")[0]
    pl.read_parquet(source).drop("hist_category").write_parquet(broken / "train" / source.name)
    with pytest.raises(RecsysError, match=r"part-00000\.parquet: sequence feature column 'hist_category' is missing"):
        ParquetReader(broken, "train", batch_size=8)
    pl.read_parquet(source).with_columns(pl.col("C3").cast(pl.String)).write_parquet(broken / "train" / source.name)
    with pytest.raises(RecsysError, match=r"sparse feature column 'C3' has type large_string"):
        ParquetReader(broken, "train", batch_size=8)


def _flip_a_byte(part: Path, column: str, row_group: int = 0) -> None:
    """Flip one bit near the end of a column chunk: inside its last data page's values, as a bad disk would."""
    metadata = pq.ParquetFile(part).metadata
    paths = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    chunk = metadata.row_group(row_group).column(paths.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(part.read_bytes())
    data[start + chunk.total_compressed_size - 8] ^= 0x01
    part.write_bytes(bytes(data))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_corrupted_page_is_an_error_naming_the_file_not_wrong_data(ctr_dir: Path, tmp_path: Path,
                                                                      num_workers: int) -> None:
    corrupt = tmp_path / "ctr"
    shutil.copytree(ctr_dir, corrupt)
    part = split_files(corrupt, "train")[0]
    _flip_a_byte(part, "I1")
    reader = ParquetReader(corrupt, "train", batch_size=512, num_workers=num_workers)
    with pytest.raises(RecsysError) as caught:
        for _ in reader:
            pass
    message = str(caught.value)  # one line, also from a worker process
    assert message.startswith(f"{part}: row group 0 is corrupt (") and "\n" not in message, message


def test_training_on_a_corrupted_part_stops_with_one_line(ctr_dir: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "ctr"
    shutil.copytree(ctr_dir, corrupt)
    part = split_files(corrupt, "train")[0]
    _flip_a_byte(part, "C1")
    result = train_cli(corrupt, tmp_path / "run", "trainer.max_steps=3")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {part}: row group 0 is corrupt ("), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_row_ids_count_each_row_once_per_epoch_over_epochs(ctr_dir: Path, train: pl.DataFrame) -> None:
    reader = ParquetReader(ctr_dir, "train", batch_size=1024, shuffle=True, num_workers=1)
    seen: Counter[int] = Counter()
    for epoch in range(2):
        reader.set_epoch(epoch)
        seen.update(_read_all(reader)[1].tolist())
    assert set(seen.values()) == {2} and len(seen) == len(train)
