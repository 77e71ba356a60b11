"""Two gloo processes train exactly like one: same global batches, same gradients, same losses.

Real ``recsys train`` runs (torch elastic starts the workers). Tolerance: the first
step's loss (before any update) agrees to 1e-5; later steps to 2e-3 absolute, the
room float reordering needs once row-wise Adagrad has amplified it for 8 steps
(the summed embedding gradients arrive from two processes in another order).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import train_cli

STEPS = ("trainer.max_steps=8", "trainer.log_every=1", "trainer.batch_size=256")


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if line["split"] == "train"]


def _train(data: Path, out: Path, nproc: int, sharding_type: str, *more: str,
           env: dict[str, str] | None = None) -> list[float]:
    result = train_cli(data, out, *STEPS, f"sharding.sharding_types=[{sharding_type}]", *more, nproc=nproc, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return _losses(out)


@pytest.fixture(scope="module")
def one_process(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    return _train(small_ctr, tmp_path_factory.mktemp("one") / "run", 1, "table_wise")


@pytest.mark.slow
@pytest.mark.parametrize("sharding_type", ["table_wise", "column_wise"])
def test_two_processes_match_one(sharding_type: str, one_process: list[float], small_ctr: Path,
                                 tmp_path: Path) -> None:
    # min_partition 8 splits every 16-wide table into two column shards, one per process.
    losses = _train(small_ctr, tmp_path / "run", 2, sharding_type, "sharding.min_partition=8")
    plan = (tmp_path / "run" / "plan.txt").read_text().splitlines()
    assert all(f": {sharding_type} kernel=fused" in line for line in plan)
    ranks_used = {rank for line in plan for rank in re.findall(r"rank (\d+) rows", line)}
    assert ranks_used == {"0", "1"}
    if sharding_type == "column_wise":
        assert all("cols 0+8; rank" in line and "cols 8+8" in line for line in plan), plan[:3]
    assert len(losses) == len(one_process) == 8
    assert losses[0] == pytest.approx(one_process[0], abs=1e-5)
    assert losses == pytest.approx(one_process, abs=2e-3)
    assert losses[-1] < losses[0] - 0.02  # it learned, so the comparison covers real updates


@pytest.mark.slow
def test_spawned_workers_train_as_forked_ones(one_process: list[float], small_ctr: Path, tmp_path: Path) -> None:
    """On CPU the workers are forked from the agent; ``RECSYS_WORKER_START=spawn`` (the CUDA default) trains
    the same steps, and a start method torch elastic has no name for is one line before any worker starts."""
    losses = _train(small_ctr, tmp_path / "run", 2, "table_wise", env={"RECSYS_WORKER_START": "spawn"})
    assert losses[0] == pytest.approx(one_process[0], abs=1e-5)
    assert losses == pytest.approx(one_process, abs=2e-3)
    refused = train_cli(small_ctr, tmp_path / "bad", *STEPS, nproc=2, env={"RECSYS_WORKER_START": "thread"})
    assert refused.returncode == 2, refused.stderr[-3000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "RECSYS_WORKER_START='thread'" in lines[0] and "spawn" in lines[0], lines
    assert not (tmp_path / "bad").exists()  # nothing written: the run folder a failed check created is removed


@pytest.mark.slow
def test_data_parallel_two_processes_match_one(small_ctr: Path, tmp_path: Path) -> None:
    # The item tables histories share are looked up un-pooled, which torchrec runs data-parallel only on GPUs.
    unpooled = [f"sharding.tables.{t}.sharding_types=[table_wise]" for t in ("item_id", "item_category")]
    settings = ("data_parallel", "sharding.compute_kernels=[dense, fused]", *unpooled)
    one = _train(small_ctr, tmp_path / "one", 1, *settings)
    two = _train(small_ctr, tmp_path / "two", 2, *settings)
    plan = (tmp_path / "two" / "plan.txt").read_text().splitlines()
    bags = [line for line in plan if ".ecs." not in line]
    assert bags and all(": data_parallel kernel=dense [ranks [0, 1]]" in line for line in bags)
    assert sum(": table_wise kernel=fused" in line for line in plan) == 2
    assert two[0] == pytest.approx(one[0], abs=1e-5)
    assert two == pytest.approx(one, abs=2e-3)  # the table-wise tables' summed gradients: see the docstring
    assert two[-1] < two[0]


def test_unpooled_tables_refuse_data_parallel_on_a_cpu(small_ctr: Path, tmp_path: Path) -> None:
    result = train_cli(small_ctr, tmp_path / "run", "trainer.max_steps=1", "sharding.sharding_types=[data_parallel]",
                       "sharding.compute_kernels=[dense]")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "table 'item_id' is looked up un-pooled" in result.stderr
    assert "--set 'sharding.tables.item_id.sharding_types=[table_wise]'" in result.stderr


@pytest.mark.slow
def test_sparse_dist_pipeline_takes_the_same_steps(one_process: list[float], small_ctr: Path,
                                                   tmp_path: Path) -> None:
    # The GPU default, run here on the CPU: it prefetches and distributes the next batch, same math.
    piped = _train(small_ctr, tmp_path / "run", 1, "table_wise", "trainer.pipeline=on")
    assert piped == pytest.approx(one_process, abs=1e-7)


@pytest.mark.slow
def test_a_mix_of_embedding_schemes_trains_alike_on_two_processes(small_ctr: Path, tmp_path: Path) -> None:
    """Compressed tables shard like full ones: QR everywhere, a hashed, two unified and a DSL table (its mask moved
    at step 4 from the gathered table), column-wise over two processes, take the steps one process takes."""
    settings = ("column_wise", "sharding.min_partition=8", "embedding.scheme=qr", "embedding.ratio=4",
                "embedding.tables.C2.scheme=hash", "embedding.tables.C3.scheme=unified",
                "embedding.tables.C4.scheme=unified", "embedding.tables.C5.scheme=dsl",
                "embedding.tables.C5.update_every=4")
    one = _train(small_ctr, tmp_path / "one", 1, *settings)
    two = _train(small_ctr, tmp_path / "two", 2, *settings)
    plan = (tmp_path / "two" / "plan.txt").read_text()
    assert "C1 (qr):" in plan and "C2 (hash):" in plan and "unified__all (shared by C3, C4):" in plan, plan
    assert "cols 0+8; rank 1" in plan or "cols 8+8" in plan, plan
    assert two[0] == pytest.approx(one[0], abs=1e-5)
    assert two == pytest.approx(one, abs=2e-3)
    assert two[-1] < two[0]
