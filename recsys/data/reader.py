"""Streaming Parquet → Batch reader: every row once per epoch, split evenly over ranks and workers.

Why it is built this way:

- Training splits can be larger than memory, so the reader streams the prepared
  Parquet parts row group by row group, reading only the schema's columns, and
  holds at most one shuffle window of rows per worker.
- Data-parallel ranks must take the same number of steps or a collective hangs.
  Every rank computes the same global row order from (seed, epoch) alone — no
  communication — and takes a contiguous slice of it: ranks differ by at most
  one row, and by none with ``drop_last`` (each rank then keeps ``N // W`` rows
  and drops its final partial batch, so all ranks run ``(N // W) // B`` steps).
- Shuffling is two-level, the usual streaming stand-in for a full shuffle: the
  order of the (file, row group) units is permuted per epoch, identically on
  every rank, and each worker permutes rows within windows of
  ``shuffle_buffer`` rows, seeded by (seed, epoch, rank, worker).
- Worker processes (a ``DataLoader`` over an ``IterableDataset``) turn Arrow
  columns into flat tensors with numpy — list offsets and flattened values, no
  per-row Python — and send plain tensors; the main process wraps them into a
  ``KeyedJaggedTensor`` and a ``Batch``, so no torchrec object is pickled.
  A rank's rows are cut into whole batches before they are dealt to workers, so
  only the rank's last batch can be partial however many workers there are.

What a Batch holds (see ``recsys.types.Batch``): ``dense`` (B, D) float32 in
``schema.dense`` order; ``sparse`` a KeyedJaggedTensor with keys
``schema.sparse_keys``, int64 values and int32 lengths, where a scalar sparse
column has length 1 per row and a list column (multi-valued sparse feature or
behaviour sequence) its list length (0 for an empty or null list); ``labels``
(B,) float32, (B, L) for L > 1 labels. An ``implicit`` schema has no label
column: every row is an observed positive interaction, so its labels are
``torch.ones(B)``. Any other null value is an error naming the file and column.

    reader = ParquetReader("data/ctr", "train", batch_size=2048, shuffle=True,
                           num_workers=2, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        for batch in reader:
            ...
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.layout import load_schema, split_files
from recsys.errors import RecsysError
from recsys.schema import Schema
from recsys.types import Batch

DEFAULT_SHUFFLE_BUFFER = 100_000
_READ_ROWS = 1 << 16  # rows per Arrow record batch while decoding a row group: bounds memory on huge row groups


# ---- plan: which rows each rank and worker reads ---------------------------------------------------

@dataclass(frozen=True)
class _Unit:
    """One row group, the unit of shuffling and of I/O."""

    file: int
    row_group: int
    rows: int
    first_row: int  # row id of its first row: its position in the unshuffled split (files in name order)


@dataclass(frozen=True)
class _Segment:
    """Rows [start, stop) of one row group."""

    file: int
    row_group: int
    start: int
    stop: int
    first_row: int  # row id of the row group's row 0


def _segments(units: list[_Unit], lo: int, hi: int) -> list[_Segment]:
    """The parts of units (concatenated in the given order) that overlap global positions [lo, hi)."""
    out: list[_Segment] = []
    position = 0
    for unit in units:
        begin, end = max(lo, position), min(hi, position + unit.rows)
        if begin < end:
            out.append(_Segment(unit.file, unit.row_group, begin - position, end - position, unit.first_row))
        position += unit.rows
        if position >= hi:
            break
    return out


@dataclass(frozen=True)
class _Layout:
    """How Parquet columns become Batch parts; small and picklable, shipped to workers."""

    files: tuple[str, ...]
    dense: tuple[str, ...]
    keys: tuple[str, ...]
    is_list: tuple[bool, ...]  # per key: a list column (jagged) or a scalar one (length 1)
    labels: tuple[str, ...]
    arrow_schema: pa.Schema  # of the columns as the first file stores them; other files are cast to it

    @property
    def columns(self) -> list[str]:
        return [*self.dense, *self.keys, *self.labels]


class _Columns(NamedTuple):
    """One batch as plain tensors: what a worker sends to the main process."""

    dense: torch.Tensor  # (B, D) float32
    values: torch.Tensor  # (total ids,) int64, key-major
    lengths: torch.Tensor  # (K * B,) int32, key-major
    labels: torch.Tensor  # (B,) or (B, L) float32
    row_ids: torch.Tensor  # (B,) int64


_HEADER = 16  # bytes: B and the number of ids, as int64


def _pack(columns: _Columns) -> torch.Tensor:
    """The batch as one uint8 tensor, each part 8-byte aligned. Every tensor that crosses from a worker
    costs a shared-memory file and a socket round trip; five per batch made the transfer the bottleneck."""
    parts = [t.reshape(-1).view(torch.uint8) for t in columns]
    # Allocated in shared memory, so that sending it moves no bytes.
    packed = torch.empty(_HEADER + sum(-(-p.numel() // 8) * 8 for p in parts), dtype=torch.uint8).share_memory_()
    packed[:_HEADER].view(torch.int64)[:] = torch.tensor([len(columns.row_ids), len(columns.values)])
    offset = _HEADER
    for part in parts:
        packed[offset:offset + part.numel()] = part
        offset += -(-part.numel() // 8) * 8
    return packed


def _unpack(packed: torch.Tensor, dense_dim: int, num_keys: int, num_labels: int) -> _Columns:
    """Views into the packed bytes, shaped as ``_Columns`` (no copy)."""
    batch, ids = packed[:_HEADER].view(torch.int64).tolist()
    shapes = [
        (torch.float32, (batch, dense_dim)),
        (torch.int64, (ids,)),
        (torch.int32, (num_keys * batch,)),
        (torch.float32, (batch, num_labels) if num_labels > 1 else (batch,)),
        (torch.int64, (batch,)),
    ]
    parts, offset = [], _HEADER
    for dtype, shape in shapes:
        size = math.prod(shape) * dtype.itemsize
        parts.append(packed[offset:offset + size].view(dtype).view(shape))
        offset += -(-size // 8) * 8
    return _Columns(*parts)


# ---- worker side: Arrow → numpy windows → batches --------------------------------------------------

def _is_list(dtype: pa.DataType) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype)


class _Window:
    """A window of rows as numpy arrays, cut into batches without touching rows one by one."""

    def __init__(self, table: pa.Table, row_ids: np.ndarray, layout: _Layout) -> None:
        n = table.num_rows
        self.rows = n
        self.row_ids = row_ids  # (n,)
        self.dense = np.empty((n, len(layout.dense)), dtype=np.float32)  # (n, D)
        for j, name in enumerate(layout.dense):
            self.dense[:, j] = table.column(name).to_numpy()
        scalar_keys = [name for name, is_list in zip(layout.keys, layout.is_list) if not is_list]
        self.scalars = np.empty((len(scalar_keys), n), dtype=np.int64)  # (S, n), one row per scalar key
        for i, name in enumerate(scalar_keys):
            self.scalars[i] = table.column(name).to_numpy()
        self.flat: list[np.ndarray] = []  # per list key: its ids, row after row
        self.offsets: list[np.ndarray] = []  # per list key: (n + 1,) row bounds into flat
        self.slots: list[tuple[bool, int]] = []  # per key: (is_list, index into scalars or flat)
        for name, is_list in zip(layout.keys, layout.is_list):
            if not is_list:
                self.slots.append((False, scalar_keys.index(name)))
                continue
            column = table.column(name)
            array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
            if array.null_count == 0:
                # Offsets of a sliced list array point into its unsliced child: use them as they are.
                offsets = array.offsets.to_numpy().astype(np.int64, copy=False)
                values = array.values.to_numpy()
            else:  # a null list is an empty list; flatten() skips nulls backed by non-empty ranges
                lengths = array.value_lengths().fill_null(0).to_numpy()
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                values = array.flatten().to_numpy()
            self.slots.append((True, len(self.flat)))
            self.flat.append(values.astype(np.int64, copy=False))
            self.offsets.append(offsets)
        if layout.labels:
            labels = np.column_stack([table.column(name).to_numpy() for name in layout.labels]).astype(np.float32)
            self.labels = labels[:, 0] if len(layout.labels) == 1 else labels  # (n,) or (n, L)
        else:
            self.labels = np.ones(n, dtype=np.float32)  # implicit feedback: every row is a positive

    def take(self, rows: slice | np.ndarray) -> _Columns:
        """The given rows (a contiguous slice, or row indices when shuffling) as a batch of fresh arrays.

        Shuffled rows are gathered here, batch by batch, rather than by permuting the whole window:
        the same gathers, without a second copy of the window. Never a view: it would drag the whole
        window into shared memory when the batch crosses to the main process.
        """
        contiguous = isinstance(rows, slice)
        if contiguous:
            a, b, _ = rows.indices(self.rows)
            size = b - a
            dense, scalars = self.dense[a:b].copy(), self.scalars[:, a:b]  # (B, D), (S, B)
            labels, row_ids = self.labels[a:b].copy(), self.row_ids[a:b].copy()
        else:  # np.take: several times faster than fancy indexing along axis 1
            size = len(rows)
            dense, scalars = np.take(self.dense, rows, axis=0), np.take(self.scalars, rows, axis=1)
            labels, row_ids = np.take(self.labels, rows, axis=0), self.row_ids[rows]
        parts = []
        lengths = np.ones((len(self.slots), size), dtype=np.int32)  # (K, B): 1 for scalar keys
        for k, (is_list, index) in enumerate(self.slots):
            if not is_list:
                parts.append(scalars[index])
                continue
            flat, offsets = self.flat[index], self.offsets[index]
            if contiguous:
                bounds = offsets[a:b + 1]  # (B + 1,)
                parts.append(flat[bounds[0]:bounds[-1]])
                lengths[k] = np.diff(bounds)
                continue
            starts = offsets[:-1][rows]  # (B,) where each picked row's ids begin in flat
            counts = offsets[1:][rows] - starts
            lengths[k] = counts
            out_starts = np.cumsum(counts) - counts  # where they go in the batch's ids
            # Output position p inside picked row i reads flat[starts[i] + (p - out_starts[i])].
            gather = np.repeat(starts - out_starts, counts) + np.arange(counts.sum())
            parts.append(np.take(flat, gather))
        values = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)  # key-major
        return _Columns(
            dense=torch.from_numpy(dense),
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(lengths.reshape(-1)),  # (K, B) → (K * B,), key-major
            labels=torch.from_numpy(labels),
            row_ids=torch.from_numpy(row_ids),
        )


def _read(layout: _Layout, segments: list[_Segment]) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Stream the segments' rows (schema columns only) with their row ids."""
    handles: dict[int, pq.ParquetFile] = {}
    try:
        yield from _read_segments(layout, segments, handles)
    finally:
        for handle in handles.values():
            handle.close()


def _read_segments(layout: _Layout, segments: list[_Segment],
                   handles: dict[int, pq.ParquetFile]) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    columns = layout.columns
    for segment in segments:
        if segment.file not in handles:
            handles[segment.file] = pq.ParquetFile(layout.files[segment.file])
        position = 0  # row of the row group at the start of the current record batch
        batches = handles[segment.file].iter_batches(
            batch_size=_READ_ROWS, row_groups=[segment.row_group], columns=columns, use_threads=False)
        for record_batch in batches:
            lo, hi = max(segment.start - position, 0), min(segment.stop - position, record_batch.num_rows)
            if lo < hi:
                piece = record_batch.slice(lo, hi - lo)
                _check_nulls(piece, layout, segment)
                if not piece.schema.equals(layout.arrow_schema):  # e.g. list here, large_list in the first file
                    target = layout.arrow_schema
                    piece = pa.RecordBatch.from_arrays(
                        [piece.column(f.name).cast(f.type) for f in target], schema=target)
                first = segment.first_row + position + lo
                yield piece, np.arange(first, first + hi - lo, dtype=np.int64)
            position += record_batch.num_rows
            if position >= segment.stop:
                break


def _check_nulls(piece: pa.RecordBatch, layout: _Layout, segment: _Segment) -> None:
    for name, column in zip(piece.schema.names, piece.columns):
        is_list = _is_list(column.type)
        if (column.null_count and not is_list) or (is_list and column.values.null_count):
            raise RecsysError(f"{layout.files[segment.file]}: column '{name}' has null values")


def _iter_worker(layout: _Layout, segments: list[_Segment], batch_size: int, drop_last: bool,
                 window_rows: int, rng: np.random.Generator | None) -> Iterator[_Columns]:
    """One worker's batches: fill a window, permute it (when shuffling), cut full batches, carry the rest."""
    pending: list[pa.RecordBatch] = []
    pending_ids: list[np.ndarray] = []
    pending_rows = 0

    def flush() -> tuple[Iterator[_Columns], int, list[pa.RecordBatch], list[np.ndarray]]:
        """Convert the pending rows; return the full batches to yield, how many rows they leave, and
        those rows in Arrow form, to join the next window (and be shuffled again with it)."""
        table = pa.Table.from_batches(pending)
        window = _Window(table, np.concatenate(pending_ids), layout)
        full = (window.rows // batch_size) * batch_size
        starts = range(0, full, batch_size)
        if rng is None:
            batches = (window.take(slice(a, a + batch_size)) for a in starts)
            rest = table.slice(full).to_batches() if full < window.rows else []
            rest_ids = [window.row_ids[full:]] if rest else []
        else:
            order = rng.permutation(window.rows)
            batches = (window.take(order[a:a + batch_size]) for a in starts)
            rest = table.take(order[full:]).to_batches() if full < window.rows else []
            rest_ids = [window.row_ids[order[full:]]] if rest else []
        return batches, window.rows - full, rest, rest_ids

    for piece, ids in _read(layout, segments):
        pending.append(piece)
        pending_ids.append(ids)
        pending_rows += piece.num_rows
        if pending_rows >= window_rows:
            batches, pending_rows, pending, pending_ids = flush()
            yield from batches
    if pending_rows:
        batches, _, rest, rest_ids = flush()
        yield from batches
        if rest and not drop_last:  # the rank's last, partial batch (only the last worker has one)
            yield _Window(pa.Table.from_batches(rest), rest_ids[0], layout).take(slice(0, len(rest_ids[0])))


@dataclass(frozen=True)
class _WorkerPlan:
    segments: list[_Segment]
    seed: tuple[int, int, int, int]  # (seed, epoch, rank, worker)


class _RankDataset(IterableDataset):
    """A rank's share of the epoch; each DataLoader worker takes its own plan by worker id."""

    def __init__(self, layout: _Layout, plans: list[_WorkerPlan], batch_size: int, drop_last: bool,
                 shuffle: bool, shuffle_buffer: int) -> None:
        super().__init__()
        self.layout, self.plans, self.batch_size = layout, plans, batch_size
        self.drop_last, self.shuffle, self.shuffle_buffer = drop_last, shuffle, shuffle_buffer

    def __iter__(self) -> Iterator[_Columns | torch.Tensor]:
        """``_Columns`` in the calling process; packed into one tensor each in a worker process."""
        info = get_worker_info()
        plan = self.plans[info.id if info is not None else 0]
        rng = np.random.default_rng(list(plan.seed)) if self.shuffle else None
        # Without shuffling a window only needs to hold a batch; conversion still runs per record batch.
        window_rows = max(self.shuffle_buffer, self.batch_size) if self.shuffle else self.batch_size
        batches = _iter_worker(self.layout, plan.segments, self.batch_size, self.drop_last, window_rows, rng)
        return batches if info is None else map(_pack, batches)


# ---- the reader ------------------------------------------------------------------------------------

class ParquetReader:
    """Iterates one split of a prepared data set as ``Batch``es for one rank of a data-parallel job.

    Every row of the split is read exactly once per epoch across the ``world_size``
    ranks; ranks get equal row counts up to one (exactly equal with ``drop_last``).
    The same (seed, epoch, rank, world_size, num_workers) gives the same batches.
    Call ``set_epoch`` before each epoch to reshuffle.

    data_dir:       a prepared data directory (``schema.json``, ``train/``, ...).
    split:          ``train``, ``valid`` or ``test``.
    batch_size:     rows per batch B; only the rank's last batch may be smaller.
    shuffle:        permute row groups per epoch and rows within windows of ``shuffle_buffer`` rows.
    drop_last:      drop the rank's final partial batch (and trim ranks to ``N // world_size`` rows).
    num_workers:    reader processes per rank (0: read in the calling process).
    rank, world_size: this process's place in the data-parallel group.
    seed:           base seed of both shuffles.
    pin_memory:     pin batches (for asynchronous host-to-GPU copies).
    schema:         the schema to read by (default: the data directory's ``schema.json``).
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        drop_last: bool = False,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pin_memory: bool = False,
        schema: Schema | None = None,
    ) -> None:
        if batch_size < 1:
            raise RecsysError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1:
            raise RecsysError(f"world_size must be at least 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise RecsysError(f"rank {rank} is out of range for world_size {world_size}")
        if num_workers < 0:
            raise RecsysError(f"num_workers must be 0 or more, got {num_workers}")
        if shuffle_buffer < 0:
            raise RecsysError(f"shuffle_buffer must be 0 or more, got {shuffle_buffer}")
        if seed < 0:
            raise RecsysError(f"seed must be 0 or more, got {seed}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.schema = schema if schema is not None else load_schema(self.data_dir)
        files = split_files(self.data_dir, split)
        if not files:
            raise RecsysError(f"{self.data_dir / split}: no Parquet files")
        self.batch_size, self.shuffle, self.shuffle_buffer = batch_size, shuffle, shuffle_buffer
        self.drop_last, self.num_workers = drop_last, num_workers
        # Pinning needs an accelerator; without one it would fail (in process) or warn (DataLoader).
        self.pin_memory = pin_memory and torch.accelerator.is_available()
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self._layout, self._units = self._scan(files)
        total = sum(unit.rows for unit in self._units)
        self.total_rows = total
        self._lo, self._hi = rank * total // world_size, (rank + 1) * total // world_size
        if drop_last:  # equal rows on every rank, hence equal step counts
            self._hi = self._lo + total // world_size

    def _scan(self, files: list[Path]) -> tuple[_Layout, list[_Unit]]:
        """Check every file's footer against the schema and list its row groups."""
        schema = self.schema
        wanted = [(f.name, "dense feature") for f in schema.dense]
        wanted += [(f.name, "sparse feature") for f in schema.sparse]
        wanted += [(f.name, "sequence feature") for f in schema.sequences]
        wanted += [(label, "label") for label in schema.label_names]
        sequence_names = {f.name for f in schema.sequences}
        is_list: dict[str, bool] = {}
        units: list[_Unit] = []
        first_row = 0
        first_schema = pa.schema([])
        for index, path in enumerate(files):
            try:
                parquet = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as exc:
                raise RecsysError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
            arrow_schema = parquet.schema_arrow
            for name, role in wanted:
                if arrow_schema.get_field_index(name) < 0:
                    raise RecsysError(f"{path}: {role} column '{name}' is missing")
                dtype = arrow_schema.field(name).type
                if role in ("dense feature", "label"):
                    ok = pa.types.is_floating(dtype) or pa.types.is_integer(dtype) or pa.types.is_boolean(dtype)
                else:
                    listed = _is_list(dtype)
                    ok = pa.types.is_integer(dtype.value_type if listed else dtype)
                    ok = ok and (listed or name not in sequence_names)
                    if ok and is_list.setdefault(name, listed) != listed:
                        raise RecsysError(f"{path}: column '{name}' is {dtype} here but not in {files[0].name}")
                if not ok:
                    expected = "a number" if role in ("dense feature", "label") else (
                        "a list of integers" if name in sequence_names else "an integer or a list of integers")
                    raise RecsysError(f"{path}: {role} column '{name}' has type {dtype}, expected {expected}")
            metadata = parquet.metadata
            for row_group in range(metadata.num_row_groups):
                rows = metadata.row_group(row_group).num_rows
                if rows:
                    units.append(_Unit(index, row_group, rows, first_row))
                    first_row += rows
            if index == 0:
                first_schema = arrow_schema
        keys = tuple(schema.sparse_keys)
        dense, labels = tuple(f.name for f in schema.dense), tuple(schema.label_names)
        layout = _Layout(
            files=tuple(str(p) for p in files),
            dense=dense,
            keys=keys,
            is_list=tuple(is_list[k] for k in keys),
            labels=labels,
            arrow_schema=pa.schema([first_schema.field(name) for name in [*dense, *keys, *labels]]),
        )
        return layout, units

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """The KeyedJaggedTensor keys: ``schema.sparse_keys``."""
        return list(self._layout.keys)

    @property
    def rows(self) -> int:
        """Rows this rank reads per epoch (before dropping a partial batch)."""
        return self._hi - self._lo

    @property
    def num_batches(self) -> int:
        """Batches this rank yields per epoch."""
        full, rest = divmod(self.rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle; call with the same value on every rank."""
        if epoch < 0:
            raise RecsysError(f"epoch must be 0 or more, got {epoch}")
        self.epoch = epoch

    # ---- iteration -----------------------------------------------------------------------------
    def _plans(self) -> list[_WorkerPlan]:
        units = self._units
        if self.shuffle:  # the same permutation on every rank: it depends on (seed, epoch) only
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
            units = [units[i] for i in order]
        workers = max(self.num_workers, 1)
        # Deal whole batches to workers, so that only the rank's last batch can be partial.
        batches = -(-self.rows // self.batch_size)
        plans = []
        for worker in range(workers):
            first, last = worker * batches // workers, (worker + 1) * batches // workers
            lo = self._lo + first * self.batch_size
            hi = min(self._lo + last * self.batch_size, self._hi)
            segments = _segments(units, lo, hi) if lo < hi else []
            plans.append(_WorkerPlan(segments, (self.seed, self.epoch, self.rank, worker)))
        return plans

    def _iter_columns(self) -> Iterator[_Columns]:
        dataset = _RankDataset(self._layout, self._plans(), self.batch_size, self.drop_last, self.shuffle,
                               self.shuffle_buffer)
        if self.num_workers == 0:
            for columns in dataset:  # type: ignore[assignment]  # _Columns in the calling process
                yield _Columns(*(t.pin_memory() for t in columns)) if self.pin_memory else columns
            return
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)
        dims = (len(self._layout.dense), len(self._layout.keys), len(self._layout.labels))
        for packed in loader:
            yield _unpack(packed, *dims)

    def _batch(self, columns: _Columns) -> Batch:
        sparse = KeyedJaggedTensor(keys=list(self._layout.keys), values=columns.values, lengths=columns.lengths)
        return Batch(dense=columns.dense, sparse=sparse, labels=columns.labels)

    def __iter__(self) -> Iterator[Batch]:
        for columns in self._iter_columns():
            yield self._batch(columns)

    def iter_with_row_ids(self) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Batches with each row's id, (B,) int64: its position in the unshuffled split (files in name
        order, rows in file order). For checking coverage and joining predictions back to rows."""
        for columns in self._iter_columns():
            yield self._batch(columns), columns.row_ids
