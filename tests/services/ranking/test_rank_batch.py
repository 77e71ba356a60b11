"""The service's Batch is ParquetReader's Batch, and the micro-batcher scores queued requests together."""

from __future__ import annotations

import asyncio
import queue
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from recsys.data.layout import split_files
from recsys.data.reader import ParquetReader
from recsys.schema import Entity
from recsys.tasks import task_named
from services.feature_store.materialize import encode_records
from services.ranking.batcher import MicroBatcher
from services.ranking.features import EncodedContext, RowBlock, merge
from services.ranking.served import ServedModel


def test_blocks_from_records_equal_the_parquet_readers_batch(served_artifact: tuple[Path, Path]) -> None:
    data_dir, artifact_dir = served_artifact
    served = ServedModel.load(artifact_dir)
    layout, schema = served.features, served.schema
    batch, row_ids = next(ParquetReader(data_dir, "test", batch_size=96, schema=schema).iter_with_row_ids())
    frame = pl.read_parquet(split_files(data_dir, "test"))[row_ids.numpy()]
    users = encode_records(layout.user, frame)  # each row's own user and item record, as materialise packs them
    items = encode_records(layout.item, frame)
    context_dense = [f.name for f in schema.dense if f.entity is Entity.CONTEXT]
    blocks = []  # one request per row (its user, its item, its context), batched together as the batcher does
    for r in range(frame.height):
        context = EncodedContext(np.array([frame[r, name] for name in context_dense], dtype=np.float32),
                                 [np.atleast_1d(np.asarray(frame[r, key], dtype=np.int64))
                                  for key in layout.context_keys])
        blocks.append(layout.block(users[r], [items[r]], context))
    built = merge(blocks, layout.keys)
    assert torch.equal(built.dense, batch.dense)
    assert built.sparse.keys() == batch.sparse.keys()
    assert torch.equal(built.sparse.lengths(), batch.sparse.lengths())
    assert torch.equal(built.sparse.values(), batch.sparse.values())
    with torch.inference_mode():
        assert torch.allclose(served.model(built), served.model(batch), atol=1e-6)

    # One request of many candidates (user and context repeated per row) is the same rows one by one.
    context = EncodedContext(np.arange(len(context_dense), dtype=np.float32),
                             [np.array([k + 1], np.int64) for k in range(len(layout.context_keys))])
    many = merge([layout.block(users[0], items[:20], context)], layout.keys)
    one_by_one = merge([layout.block(users[0], [item], context) for item in items[:20]], layout.keys)
    assert torch.equal(many.dense, one_by_one.dense)
    assert torch.equal(many.sparse.lengths(), one_by_one.sparse.lengths())
    assert torch.equal(many.sparse.values(), one_by_one.sparse.values())


def test_one_user_many_items_repeats_the_user_and_context(served_artifact: tuple[Path, Path]) -> None:
    _, artifact_dir = served_artifact
    layout = ServedModel.load(artifact_dir).features
    block = layout.dummy(5)
    assert block.dense.shape == (5, len(layout.schema.dense)) and block.lengths.shape == (len(layout.keys), 5)
    sequences = {f.name for f in layout.schema.sequences}
    for key, lengths, values in zip(layout.keys, block.lengths, block.values, strict=True):
        assert (lengths == (0 if key in sequences else 1)).all()  # unknown entities: OOV ids, empty histories
        assert len(values) == lengths.sum() and (values == 0).all()


class _Gate:
    """Holds the first forward pass of the models sharing it until ``release`` is set (``busy`` says it is held):
    the jobs submitted meanwhile queue up, and are taken together when it ends."""

    def __init__(self) -> None:
        self.busy, self.release = threading.Event(), threading.Event()
        self.passes = 0

    def enter(self) -> None:
        self.passes += 1  # only the model thread runs passes
        if self.passes == 1:
            self.busy.set()
            assert self.release.wait(60), "the test never released the first pass"


class _Sum(nn.Module):
    """Sums each row's dense features, plus an offset that tells models apart."""

    def __init__(self, offset: float, gate: _Gate | None) -> None:
        super().__init__()
        self.offset, self.gate = offset, gate

    def forward(self, batch: object) -> torch.Tensor:
        if self.gate is not None:
            self.gate.enter()
        return batch.dense.sum(dim=1) + self.offset  # type: ignore[attr-defined]


class _Model:
    def __init__(self, offset: float, gate: _Gate | None = None) -> None:
        self.model, self.keys, self.task = _Sum(offset, gate), ["f"], task_named("ctr")

    def probabilities(self, batch: object) -> torch.Tensor:  # as ServedModel's, at fp32
        return self.task.link(self.model(batch))


def _block(rows: int, value: float) -> RowBlock:
    return RowBlock(np.full((rows, 2), value, np.float32), np.ones((1, rows), np.int32), [np.zeros(rows, np.int64)])


async def _queued(batcher: MicroBatcher, jobs: int) -> None:
    """Once ``jobs`` jobs wait in the batcher's queue (the submitting tasks run at this loop's next turns)."""
    while batcher._queue.qsize() < jobs:
        await asyncio.sleep(0)


def test_requests_queued_while_the_model_is_busy_share_a_pass_and_keep_their_model() -> None:
    passes: list[tuple[int, int]] = []
    batcher = MicroBatcher(max_rows=64, observe=lambda rows, requests: passes.append((rows, requests)))
    batcher.start()
    gate = _Gate()
    old, new = _Model(0.0, gate), _Model(10.0, gate)

    async def run() -> list:
        first = asyncio.create_task(batcher.score(old, _block(1, 0.0)))
        assert await asyncio.to_thread(gate.busy.wait, 60)  # the first pass is running: the next ones queue up
        rest = [asyncio.create_task(batcher.score(old if i % 2 else new, _block(i + 1, i / 10))) for i in range(6)]
        await _queued(batcher, len(rest))
        gate.release.set()
        return [await first, *await asyncio.gather(*rest)]

    try:
        results = asyncio.run(run())
    finally:
        batcher.stop()
    for i, scored in enumerate(results[1:]):
        offset = 0.0 if i % 2 else 10.0
        expected = 1 / (1 + np.exp(-(2 * i / 10 + offset)))
        assert scored.scores.shape == (i + 1,)
        np.testing.assert_allclose(scored.scores, expected, rtol=1e-6)
    # 1 pass for the first request, then the six queued ones in one pass per model
    assert passes[0] == (1, 1) and sorted(passes[1:]) == [(9, 3), (12, 3)]


class _WatchedQueue(queue.SimpleQueue):
    """The batcher's queue, noting how the model thread takes from it: (block, timeout) of every take."""

    def __init__(self) -> None:
        self.takes: list[tuple[bool, float | None]] = []

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        self.takes.append((block, timeout))
        return super().get(block, timeout)

    def get_nowait(self) -> object:
        self.takes.append((False, None))
        return super().get_nowait()


def test_a_lone_request_does_not_wait_and_big_takes_are_split() -> None:
    passes: list[tuple[int, int]] = []
    batcher = MicroBatcher(max_rows=4, observe=lambda rows, requests: passes.append((rows, requests)))
    batcher._queue = watched = _WatchedQueue()
    batcher.start()
    model = _Model(0.0)

    async def run() -> None:
        scored = await batcher.score(model, _block(3, 0.0))
        assert (scored.batch_rows, scored.batch_requests) == (3, 1)
        # It was taken, then the queue only looked at (no timed wait for companions) before its pass ran.
        assert watched.takes[:2] == [(True, None), (False, None)] and all(t is None for _, t in watched.takes)
        await asyncio.gather(*(batcher.score(model, _block(3, 0.0)) for _ in range(3)))

    try:
        asyncio.run(run())
    finally:
        batcher.stop()
    assert all(rows <= 4 for rows, _ in passes) and sum(r for r, _ in passes) == 12


class _Poisoned(nn.Module):
    """Sums each row's dense features, but raises on a row holding ``POISON``; its first pass waits for ``release``
    (signalling ``busy``), so that the jobs submitted meanwhile queue up and are taken together."""

    POISON = -7.0

    def __init__(self) -> None:
        super().__init__()
        self.busy, self.release = threading.Event(), threading.Event()
        self.passes: list[int] = []

    def forward(self, batch: object) -> torch.Tensor:
        dense = batch.dense  # type: ignore[attr-defined]
        if not self.passes:
            self.busy.set()
            assert self.release.wait(60), "the test never released the first pass"
        self.passes.append(dense.shape[0])
        if (dense == self.POISON).any():
            raise ValueError("cannot score a poisoned row")
        return dense.sum(dim=1)


def test_a_failing_request_fails_alone_not_its_batch() -> None:
    passes: list[tuple[int, int]] = []
    batcher = MicroBatcher(max_rows=64, observe=lambda rows, requests: passes.append((rows, requests)))
    batcher.start()
    model = _Model(0.0)
    model.model = _Poisoned()
    values = [0.1, 0.2, _Poisoned.POISON, 0.3, 0.4]

    async def run() -> list[object]:
        first = asyncio.create_task(batcher.score(model, _block(1, 0.0)))
        await asyncio.to_thread(model.model.busy.wait, 60)  # the model thread is inside the first pass
        rest = [asyncio.create_task(batcher.score(model, _block(i + 1, v))) for i, v in enumerate(values)]
        await _queued(batcher, len(values))  # every job is queued before the first pass ends
        model.model.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    try:
        results = asyncio.run(run())
    finally:
        batcher.stop()
    for i, (value, scored) in enumerate(zip(values, results[1:], strict=True)):
        if value == _Poisoned.POISON:
            assert isinstance(scored, ValueError) and "poisoned" in str(scored)
        else:
            assert not isinstance(scored, BaseException), scored
            np.testing.assert_allclose(scored.scores, np.full(i + 1, 1 / (1 + np.exp(-2 * value))), rtol=1e-6)
    # The five queued jobs were taken together (15 rows); that pass failed, so each was scored on its own.
    assert model.model.passes == [1, 15, 1, 2, 3, 4, 5]
    assert passes == [(1, 1), (1, 1), (2, 1), (4, 1), (5, 1)]


@pytest.mark.parametrize("rows", [1, 300])
def test_int8_model_scores_close_to_fp32(served_artifact: tuple[Path, Path], rows: int) -> None:
    data_dir, artifact_dir = served_artifact
    fp32, int8 = ServedModel.load(artifact_dir, "fp32"), ServedModel.load(artifact_dir, "int8")
    assert type(int8.model.sparse_arch.ebc).__module__ == "torchrec.quant.embedding_modules"
    batch = next(iter(ParquetReader(data_dir, "test", batch_size=rows, schema=fp32.schema)))
    with torch.inference_mode():
        exact, quantized = torch.sigmoid(fp32.model(batch)), torch.sigmoid(int8.model(batch))
    relative = ((quantized - exact).abs() / exact).max().item()
    assert relative < 0.02, relative  # measured ~0.2% on the synthetic artifact
