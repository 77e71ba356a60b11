"""Streaming Parquet → Batch reader: every row once per epoch, split over ranks and workers.

Why it is built this way:

- Training splits can be larger than memory, so the reader streams the prepared
  Parquet parts row group by row group, reading only the schema's columns, and
  holds at most one shuffle window of rows per worker.
- Data-parallel ranks must take the same number of steps or a collective hangs.
  Every rank computes the same global row order from (seed, epoch) alone — no
  communication — and ``partition`` says how the ranks share it:

  - ``"rank"`` (default): each rank takes a contiguous slice of the global order
    and reads only that. Ranks differ by at most one row, and by none with
    ``drop_last`` (each rank then keeps ``N // W`` rows and drops its final
    partial batch, so all ranks run ``(N // W) // B`` steps). The mode for data
    too large to read W times; but which rows meet in a batch depends on W.
  - ``"global"``: every rank reads the whole epoch, cuts it into global batches
    of ``G = B * W`` rows and keeps rows ``[r * B, (r + 1) * B)`` of each, so
    global batch k holds the same rows whatever W is, as long as G is the same:
    a job trains the same on 1 process with ``batch_size=G`` as on 8 with
    ``G / 8``. The price is W times the decoding work of ``"rank"``, fine on one
    host. The final partial global batch of n rows is split as evenly as
    possible (rank r keeps rows ``[r * n // W, (r + 1) * n // W)``); it is
    dropped with ``drop_last``, and also when n < W, as a rank without rows
    could not take the step.
- Shuffling is two-level, the usual streaming stand-in for a full shuffle: the
  order of the (file, row group) units is permuted per epoch, identically on
  every rank, and each worker permutes rows within windows of exactly
  ``shuffle_buffer`` rows (at least a batch), seeded by (seed, epoch, rank,
  worker). Under ``"global"`` every rank seeds as rank 0, so that all draw the
  same permutations (and one process reads the same under either partition).
- Worker processes (a ``DataLoader`` over an ``IterableDataset``) turn Arrow
  columns into flat tensors with numpy — list offsets and flattened values, no
  per-row Python — and send plain tensors; the main process wraps them into a
  ``KeyedJaggedTensor`` and a ``Batch``, so no torchrec object is pickled.
  Whole batches (global batches under ``"global"``) are dealt to workers, so
  only the last one can be partial however many workers there are, and a
  worker gathers only its rank's rows of each.
- Exact mid-epoch resume: ``set_start(k)`` makes the next iteration yield what an
  uninterrupted one yields after its first k batches. It stays cheap: a shuffle
  window's permutation depends on its row count alone, so workers draw the
  skipped windows on row positions, read only the rows still to come (plus the
  few carried into the first window that yields), and build and send no skipped
  batch.

What a Batch holds (see ``recsys.types.Batch``): ``dense`` (B, D) float32 in
``schema.dense`` order; ``sparse`` a KeyedJaggedTensor with keys
``schema.sparse_keys``, int64 values and int32 lengths, where a scalar sparse
column has length 1 per row and a list column (multi-valued sparse feature or
behaviour sequence) its list length (0 for an empty or null list); ``labels``
(B,) float32, (B, L) for L > 1 labels. An ``implicit`` schema has no label
column: every row is an observed positive interaction, so its labels are
``torch.ones(B)``. Any other null value is an error naming the file and column.

    reader = ParquetReader("data/ctr", "train", batch_size=2048, shuffle=True, num_workers=2,
                           rank=rank, world_size=world_size, partition="global")
    for epoch in range(first_epoch, epochs):
        reader.set_epoch(epoch)
        if epoch == first_epoch:
            reader.set_start(first_step)  # resuming: the batches the checkpoint has trained on
        for batch in reader:
            ...
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


def _tail(segments: list[_Segment], start: int) -> list[_Segment]:
    """The segments (concatenated: a worker's stream) from stream position start on."""
    out = []
    for segment in segments:
        rows = segment.stop - segment.start
        if start < rows:
            out.append(replace(segment, start=segment.start + start))
        start = max(start - rows, 0)
    return out


@dataclass(frozen=True)
class _Cutting:
    """How a worker cuts its stream into batches, and which rows of each are this rank's."""

    batch_size: int  # rows per batch cut from the stream: B, or G = B * world_size under "global"
    window_rows: int  # rows a window fills before it is cut (and permuted, when shuffling); at least batch_size
    rank: int  # this rank keeps rows [rank * m // ranks, (rank + 1) * m // ranks) of each batch of m rows
    ranks: int  # world_size under "global"; 1 (keep whole batches) under "rank"
    keep_partial: bool  # yield the final partial batch (not drop_last), if it has a row for every rank

    def share(self, rows: int) -> tuple[int, int]:
        return self.rank * rows // self.ranks, (self.rank + 1) * rows // self.ranks

    def batches(self, rows: int) -> int:
        """Batches a stream of this many rows yields."""
        full, rest = divmod(rows, self.batch_size)
        return full + (1 if self.keep_partial and rest >= self.ranks else 0)


def _resume(counts: list[int], start: int) -> tuple[list[int], int]:
    """How many of its first batches each worker skips so that the rank starts at its batch ``start``, and
    which worker to put first. A DataLoader takes one batch from each worker in turn, dropping a worker
    that has run out; starting the turns at the worker that holds the next batch keeps the rest in order."""
    skips = [0] * len(counts)
    done = 0  # full turns taken
    while True:
        active = [worker for worker, count in enumerate(counts) if count > done]
        if not active:  # start is the whole epoch
            return skips, 0
        turns = min(min(counts[worker] for worker in active) - done, start // len(active))
        if turns == 0:  # start ends inside this turn
            for worker in active[:start]:
                skips[worker] += 1
            return skips, active[start]
        for worker in active:
            skips[worker] += turns
        start -= turns * len(active)
        done += turns


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
        path = layout.files[segment.file]
        if segment.file not in handles:
            handles[segment.file] = _open(path)
        position = 0  # row of the row group at the start of the current record batch
        batches = handles[segment.file].iter_batches(
            batch_size=_READ_ROWS, row_groups=[segment.row_group], columns=columns, use_threads=False)
        for record_batch in _checked(batches, path, segment.row_group):
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


def _open(path: str) -> pq.ParquetFile:
    """A part opened for reading; pages written with checksums (``prepare`` writes them) are verified."""
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as exc:
        raise RecsysError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def _checked(batches: Iterator[pa.RecordBatch], path: str, row_group: int) -> Iterator[pa.RecordBatch]:
    """The record batches, with a corrupted or truncated page turned into an error naming the file."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as exc:
            raise RecsysError(f"{path}: row group {row_group} is corrupt ({str(exc).splitlines()[0]}); "
                              "prepare the data again or restore the file") from None
        yield batch


def _check_nulls(piece: pa.RecordBatch, layout: _Layout, segment: _Segment) -> None:
    for name, column in zip(piece.schema.names, piece.columns):
        is_list = _is_list(column.type)
        if (column.null_count and not is_list) or (is_list and column.values.null_count):
            raise RecsysError(f"{layout.files[segment.file]}: column '{name}' has null values")


def _pass_over(total: int, cutting: _Cutting, rng: np.random.Generator | None,
               skip: int) -> tuple[np.ndarray, int, int]:
    """Where a worker whose stream has ``total`` rows starts reading to skip its first ``skip`` batches:
    the stream positions carried into the first window that yields a batch, where that window's new rows
    begin, and how many of its batches are still to skip.

    A shuffled window's size, hence its permutation, follows from row counts alone, so the windows before
    are drawn on row positions instead of rows: the RNG ends where a full pass leaves it, and of their rows
    only those carried on are ever read.
    """
    size = cutting.batch_size
    carry = np.empty(0, dtype=np.int64)  # stream positions of the rows carried into the next window
    if rng is None:  # unshuffled batches are consecutive runs of the stream
        return carry, skip * size, 0
    start = 0  # stream position of the next window's first new row
    while True:
        rows = min(cutting.window_rows, len(carry) + total - start)
        full, new = rows // size, rows - len(carry)
        if full > skip or start + new == total:  # it yields a batch, or is the last window
            return carry, start, skip
        window = np.concatenate([carry, np.arange(start, start + new)])  # (rows,) stream positions
        carry = window[rng.permutation(rows)[full * size:]]
        start, skip = start + new, skip - full


def _gather(layout: _Layout, segments: list[_Segment], positions: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The rows at the given stream positions, in that order, with their row ids; reads only their row groups."""
    bounds = np.cumsum([0] + [segment.stop - segment.start for segment in segments])  # (S + 1,)
    owner = np.searchsorted(bounds, positions, side="right") - 1  # the segment holding each position
    wanted = np.empty(len(positions), dtype=np.int64)  # their row ids
    parts = []
    for index in np.unique(owner):
        segment, mine = segments[index], owner == index
        rows = positions[mine] - bounds[index] + segment.start  # rows of the row group
        wanted[mine] = segment.first_row + rows
        parts.append(replace(segment, start=int(rows.min()), stop=int(rows.max()) + 1))
    pieces = list(_read(layout, parts))
    ids = np.concatenate([piece_ids for _, piece_ids in pieces])
    sorter = np.argsort(ids)
    index = sorter[np.searchsorted(ids, wanted, sorter=sorter)]
    return pa.Table.from_batches([piece for piece, _ in pieces]).take(index), wanted


def _iter_worker(layout: _Layout, segments: list[_Segment], cutting: _Cutting, rng: np.random.Generator | None,
                 skip: int) -> Iterator[_Columns]:
    """One worker's batches after its first ``skip``: fill a window, permute it (when shuffling), cut full
    batches and keep this rank's rows of each, carry the rest; the rows left at the end make the partial batch."""
    size, window_rows = cutting.batch_size, cutting.window_rows
    total = sum(segment.stop - segment.start for segment in segments)
    if skip >= cutting.batches(total):
        return
    carry, start, skip = _pass_over(total, cutting, rng, skip)
    pending: list[pa.RecordBatch] = []
    pending_ids: list[np.ndarray] = []
    if len(carry):
        table, ids = _gather(layout, segments, carry)
        pending, pending_ids = table.to_batches(), [ids]
    pending_rows = len(carry)

    def cut() -> Iterator[_Columns]:
        """Permute the pending rows; keep the rest after the full batches pending, to join the next window
        (and be shuffled again with it); return the full batches that are not skipped."""
        nonlocal pending, pending_ids, pending_rows, skip
        table = pa.Table.from_batches(pending)
        ids = np.concatenate(pending_ids)
        rows = table.num_rows
        full = (rows // size) * size
        order = rng.permutation(rows) if rng is not None else None
        if full < rows:
            rest = table.slice(full) if order is None else table.take(order[full:])
            pending, pending_ids = rest.to_batches(), [ids[full:] if order is None else ids[order[full:]]]
        else:
            pending, pending_ids = [], []
        pending_rows = rows - full
        skipped = min(skip, full // size)
        skip -= skipped
        starts = range(skipped * size, full, size)
        if not starts:  # every batch skipped: no need to convert the window
            return iter(())
        window = _Window(table, ids, layout)
        lo, hi = cutting.share(size)
        if order is None:
            return (window.take(slice(a + lo, a + hi)) for a in starts)
        return (window.take(order[a + lo:a + hi]) for a in starts)

    for piece, piece_ids in _read(layout, _tail(segments, start)):
        while piece.num_rows:
            # Shuffled windows are cut at exactly window_rows, the sizes _pass_over draws; unshuffled batches are
            # runs of the stream whatever the windows, so they take whole pieces (no copy to join two).
            take = piece.num_rows if rng is None else min(piece.num_rows, window_rows - pending_rows)
            pending.append(piece.slice(0, take))
            pending_ids.append(piece_ids[:take])
            pending_rows += take
            piece, piece_ids = piece.slice(take), piece_ids[take:]
            if pending_rows >= window_rows:
                yield from cut()
    if pending_rows:
        yield from cut()
        if cutting.keep_partial and pending_rows >= cutting.ranks:  # the last partial batch (one worker has it)
            lo, hi = cutting.share(pending_rows)
            rest = pa.Table.from_batches(pending).slice(lo, hi - lo)
            yield _Window(rest, np.concatenate(pending_ids)[lo:hi], layout).take(slice(0, hi - lo))


@dataclass(frozen=True)
class _WorkerError:
    """A user error raised in a worker, sent as an item: the DataLoader would re-raise the exception with the
    worker's traceback in its message, and a user error is one line."""

    message: str


def _packed(batches: Iterator[_Columns]) -> Iterator[torch.Tensor | _WorkerError]:
    try:
        for columns in batches:
            yield _pack(columns)
    except RecsysError as exc:
        yield _WorkerError(str(exc))


@dataclass(frozen=True)
class _WorkerPlan:
    segments: list[_Segment]
    seed: tuple[int, int, int, int]  # (seed, epoch, rank, worker); rank 0 on every rank under "global"
    skip: int  # its first batches to pass over, when resuming mid-epoch


class _RankDataset(IterableDataset):
    """A rank's share of the epoch; each DataLoader worker takes its own plan by worker id."""

    def __init__(self, layout: _Layout, plans: list[_WorkerPlan], cutting: _Cutting, shuffle: bool) -> None:
        super().__init__()
        self.layout, self.plans, self.cutting, self.shuffle = layout, plans, cutting, shuffle

    def __iter__(self) -> Iterator[_Columns | torch.Tensor | _WorkerError]:
        """``_Columns`` in the calling process; packed into one tensor each in a worker process."""
        info = get_worker_info()
        plan = self.plans[info.id if info is not None else 0]
        rng = np.random.default_rng(list(plan.seed)) if self.shuffle else None
        batches = _iter_worker(self.layout, plan.segments, self.cutting, rng, plan.skip)
        return batches if info is None else _packed(batches)


# ---- columns: which Parquet columns make a Batch, checked ---------------------------------------------

def _column_kinds(arrow_schema: pa.Schema, schema: Schema, where: str) -> dict[str, bool]:
    """Check that the schema's model columns are present with usable types; per sparse key, whether it is a
    list column (jagged) or a scalar one."""
    wanted = [(f.name, "dense feature") for f in schema.dense]
    wanted += [(f.name, "sparse feature") for f in schema.sparse]
    wanted += [(f.name, "sequence feature") for f in schema.sequences]
    wanted += [(label, "label") for label in schema.label_names]
    sequence_names = {f.name for f in schema.sequences}
    is_list: dict[str, bool] = {}
    for name, role in wanted:
        if arrow_schema.get_field_index(name) < 0:
            raise RecsysError(f"{where}: {role} column '{name}' is missing")
        dtype = arrow_schema.field(name).type
        if role in ("dense feature", "label"):
            ok = pa.types.is_floating(dtype) or pa.types.is_integer(dtype) or pa.types.is_boolean(dtype)
        else:
            listed = _is_list(dtype)
            ok = pa.types.is_integer(dtype.value_type if listed else dtype)
            ok = ok and (listed or name not in sequence_names)
            is_list[name] = listed
        if not ok:
            expected = "a number" if role in ("dense feature", "label") else (
                "a list of integers" if name in sequence_names else "an integer or a list of integers")
            raise RecsysError(f"{where}: {role} column '{name}' has type {dtype}, expected {expected}")
    return is_list


def _layout(files: tuple[str, ...], schema: Schema, is_list: dict[str, bool], arrow_schema: pa.Schema) -> _Layout:
    keys = tuple(schema.sparse_keys)
    dense, labels = tuple(f.name for f in schema.dense), tuple(schema.label_names)
    return _Layout(
        files=files,
        dense=dense,
        keys=keys,
        is_list=tuple(is_list[k] for k in keys),
        labels=labels,
        arrow_schema=pa.schema([arrow_schema.field(name) for name in [*dense, *keys, *labels]]),
    )


def _to_batch(columns: _Columns, keys: tuple[str, ...]) -> Batch:
    sparse = KeyedJaggedTensor(keys=list(keys), values=columns.values, lengths=columns.lengths)
    return Batch(dense=columns.dense, sparse=sparse, labels=columns.labels)


def table_batch(table: pa.Table, schema: Schema, where: str = "rows") -> Batch:
    """The rows of an Arrow table that holds the schema's model columns, as one Batch: what the reader yields
    for the same rows (full-ranking evaluation builds its catalogue and user batches from chosen rows this way).

    where: names the rows in errors (a file, a split).
    """
    layout = _layout((where,), schema, _column_kinds(table.schema, schema, where), table.schema)
    table = table.select(layout.columns)
    for name, column in zip(table.column_names, table.columns):
        listed = _is_list(column.type)
        if (column.null_count and not listed) or (listed and pc.list_flatten(column).null_count):
            raise RecsysError(f"{where}: column '{name}' has null values")
    return _to_batch(_Window(table, np.arange(table.num_rows), layout).take(slice(0, table.num_rows)), layout.keys)


# ---- the reader ------------------------------------------------------------------------------------

class ParquetReader:
    """Iterates one split of a prepared data set as ``Batch``es for one rank of a data-parallel job.

    Every row of the split is yielded once per epoch across the ``world_size``
    ranks (but for dropped partial batches), and every rank takes the same number of
    steps. The same (seed, epoch, rank, world_size, num_workers) gives the same
    batches; under ``partition="global"`` the global batches depend on (seed, epoch,
    num_workers, B * world_size) only. Call ``set_epoch`` before each epoch to
    reshuffle, and ``set_start`` to resume one mid-way.

    data_dir:       a prepared data directory (``schema.json``, ``train/``, ...).
    split:          ``train``, ``valid`` or ``test``.
    batch_size:     rows per batch B on this rank; only the last batch may be smaller.
    shuffle:        permute row groups per epoch and rows within windows of ``shuffle_buffer`` rows.
    drop_last:      drop the final partial batch ("rank": the rank's, after trimming ranks to
                    ``N // world_size`` rows; "global": the final partial global batch).
    num_workers:    reader processes per rank (0: read in the calling process).
    rank, world_size: this process's place in the data-parallel group.
    seed:           base seed of both shuffles.
    pin_memory:     pin batches (for asynchronous host-to-GPU copies).
    schema:         the schema to read by (default: the data directory's ``schema.json``).
    partition:      "rank": each rank reads its own slice of the epoch; "global": every rank reads
                    the epoch and keeps its B rows of each global batch of ``B * world_size`` rows,
                    so that training does not depend on the world size (see the module docstring).
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
        partition: str = "rank",
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
        if partition not in ("rank", "global"):
            raise RecsysError(f"partition must be 'rank' or 'global', got {partition!r}")
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
        self.rank, self.world_size, self.seed, self.partition = rank, world_size, seed, partition
        self.epoch = 0
        self._start = 0  # batches the next iteration skips (set_start)
        self._layout, self._units = self._scan(files)
        total = sum(unit.rows for unit in self._units)
        self.total_rows = total
        if partition == "rank":  # rows [_lo, _hi) of the epoch's global order are this rank's stream
            self._lo, self._hi = rank * total // world_size, (rank + 1) * total // world_size
            if drop_last:  # equal rows on every rank, hence equal step counts
                self._hi = self._lo + total // world_size
            stride, ranks, share_rank = batch_size, 1, 0
        else:  # every rank's stream is the whole epoch, cut into global batches
            self._lo, self._hi = 0, total
            stride, ranks, share_rank = batch_size * world_size, world_size, rank
        # Without shuffling a window only needs to hold a batch; conversion still runs per record batch.
        self._cutting = _Cutting(batch_size=stride, window_rows=max(shuffle_buffer, stride) if shuffle else stride,
                                 rank=share_rank, ranks=ranks, keep_partial=not drop_last)

    def _scan(self, files: list[Path]) -> tuple[_Layout, list[_Unit]]:
        """Check every file's footer against the schema and list its row groups."""
        is_list: dict[str, bool] = {}
        units: list[_Unit] = []
        first_row = 0
        first_schema = pa.schema([])
        for index, path in enumerate(files):
            try:
                parquet = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as exc:
                raise RecsysError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
            for name, listed in _column_kinds(parquet.schema_arrow, self.schema, str(path)).items():
                if is_list.setdefault(name, listed) != listed:
                    dtype = parquet.schema_arrow.field(name).type
                    raise RecsysError(f"{path}: column '{name}' is {dtype} here but not in {files[0].name}")
            metadata = parquet.metadata
            for row_group in range(metadata.num_row_groups):
                rows = metadata.row_group(row_group).num_rows
                if rows:
                    units.append(_Unit(index, row_group, rows, first_row))
                    first_row += rows
            if index == 0:
                first_schema = parquet.schema_arrow
        return _layout(tuple(str(p) for p in files), self.schema, is_list, first_schema), units

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """The KeyedJaggedTensor keys: ``schema.sparse_keys``."""
        return list(self._layout.keys)

    @property
    def rows(self) -> int:
        """This rank's rows per epoch. "rank": its slice of the epoch (before ``drop_last`` drops a partial
        batch); "global": the rows it yields, B per global batch and its share of a kept partial one."""
        if self.partition == "rank":
            return self._hi - self._lo
        full, rest = divmod(self.total_rows, self._cutting.batch_size)
        lo, hi = self._cutting.share(rest) if self._cutting.batches(rest) else (0, 0)
        return full * self.batch_size + hi - lo

    @property
    def num_batches(self) -> int:
        """Batches this rank yields per epoch: the same on every rank (under "global", the global batches)."""
        return self._cutting.batches(self._hi - self._lo)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle; call with the same value on every rank. Clears ``set_start``."""
        if epoch < 0:
            raise RecsysError(f"epoch must be 0 or more, got {epoch}")
        self.epoch, self._start = epoch, 0

    def set_start(self, batches: int) -> None:
        """Resume the epoch mid-way: the next iteration skips this rank's first ``batches`` batches (the first
        global batches under "global") and yields exactly what an uninterrupted one yields after them.

        For one iteration only: the one after starts the epoch again. Skipped batches are neither built nor
        sent, and rows that no later batch needs are not read. ``len()`` stays the whole epoch's count.
        """
        if not 0 <= batches <= self.num_batches:
            raise RecsysError(f"start must be between 0 and {self.num_batches} batches, got {batches}")
        self._start = batches

    # ---- iteration -----------------------------------------------------------------------------
    def _plans(self, start: int) -> list[_WorkerPlan]:
        """The workers' plans, in the order to hand them to DataLoader workers, for an iteration that starts
        at the rank's batch ``start``."""
        units = self._units
        if self.shuffle:  # the same permutation on every rank: it depends on (seed, epoch) only
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
            units = [units[i] for i in order]
        workers, size = max(self.num_workers, 1), self._cutting.batch_size
        # Deal whole batches (global ones under "global") to workers, so that only the last can be partial.
        batches = -(-(self._hi - self._lo) // size)
        segments, counts = [], []
        for worker in range(workers):
            first, last = worker * batches // workers, (worker + 1) * batches // workers
            lo = self._lo + first * size
            hi = min(self._lo + last * size, self._hi)
            segments.append(_segments(units, lo, hi) if lo < hi else [])
            counts.append(self._cutting.batches(max(hi - lo, 0)))
        skips, first_worker = _resume(counts, start)
        # Under "global" every rank draws rank 0's window permutations, so all cut the same global batches.
        rank = self.rank if self.partition == "rank" else 0
        plans = [_WorkerPlan(segments[w], (self.seed, self.epoch, rank, w), skips[w]) for w in range(workers)]
        return plans[first_worker:] + plans[:first_worker]

    def _iter_columns(self) -> Iterator[_Columns]:
        start, self._start = self._start, 0  # a start applies to one iteration
        if start == self.num_batches:  # nothing left of the epoch: no workers to start
            return
        dataset = _RankDataset(self._layout, self._plans(start), self._cutting, self.shuffle)
        if self.num_workers == 0:
            for columns in dataset:  # type: ignore[assignment]  # _Columns in the calling process
                yield _Columns(*(t.pin_memory() for t in columns)) if self.pin_memory else columns
            return
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)
        dims = (len(self._layout.dense), len(self._layout.keys), len(self._layout.labels))
        for packed in loader:
            if isinstance(packed, _WorkerError):
                raise RecsysError(packed.message)
            yield _unpack(packed, *dims)

    def _batch(self, columns: _Columns) -> Batch:
        return _to_batch(columns, self._layout.keys)

    def __iter__(self) -> Iterator[Batch]:
        for columns in self._iter_columns():
            yield self._batch(columns)

    def iter_with_row_ids(self) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Batches with each row's id, (B,) int64: its position in the unshuffled split (files in name
        order, rows in file order). For checking coverage and joining predictions back to rows."""
        for columns in self._iter_columns():
            yield self._batch(columns), columns.row_ids
