"""The ``mc`` scheme: torchrec's managed collisions keep hot ids and evict cold ones; sharded on 2 gloo
processes, evicted rows are reset on a CPU; the artifact scores exactly as the sharded model did."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys import artifact as artifacts
from recsys.data.layout import load_schema
from recsys.data.reader import ParquetReader
from recsys.distributed.managed_collision import CpuEvictingManagedCollisionEmbeddingCollection
from recsys.distributed.sharding import sharders
from recsys.embeddings import LogicalTable, build_part
from recsys.embeddings.mc import ManagedCollisionModule, ManagedLookup
from recsys.errors import RecsysError
from recsys.system import free_port
from recsys.tasks import task_spec
from recsys.train.evaluate import evaluate
from tests.conftest import train_cli

HOT = [1_000, 2_000, 3_000]
FEATURE = "user_id__0"


def _lookup(rows: int, buckets: int = 1) -> ManagedLookup:
    table = LogicalTable("user_id", 1 << 20, 4, ("user_id",), per_id=False)
    part = build_part(table, {"scheme": "mc", "ratio": 1.0, "zch_size": rows, "buckets": buckets})
    return part.build_collection([FEATURE], torch.device("cpu"))  # type: ignore[operator]


def _module(lookup: ManagedLookup) -> ManagedCollisionModule:
    return lookup.collection._managed_collision_collection._managed_collision_modules["user_id__mc"]


def _ids(values: list[int]) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(keys=[FEATURE], values=torch.tensor(values), lengths=torch.ones(len(values),
                             dtype=torch.int64))


def _rows(lookup: ManagedLookup, values: list[int]) -> list[int]:
    """Each id's row, looked up only (no admission)."""
    module = _module(lookup)
    was = module.training
    module.eval()
    rows = module.remap({"t": _ids(values)[FEATURE]})["t"].values().tolist()
    module.train(was)
    return rows


def test_hot_ids_keep_their_rows_and_cold_ids_are_evicted() -> None:
    lookup = _lookup(8)  # 7 rows for ids, the last is the miss row
    lookup.train()
    miss = 7
    cold = [10_000 + k for k in range(12)]
    hot_rows = None
    for step, one in enumerate(cold):
        lookup(_ids(HOT * 5 + [one]))  # training forward: records the ids, admits and evicts
        rows = _rows(lookup, HOT)
        if hot_rows is None:
            hot_rows = rows
        assert rows == hot_rows, f"step {step}: a hot id moved"
    assert len(set(hot_rows)) == 3 and miss not in hot_rows
    recent = _rows(lookup, cold[-4:])
    assert miss not in recent and len(set(recent)) == 4 and not set(recent) & set(hot_rows)
    assert _rows(lookup, cold[:4]) == [miss] * 4  # the oldest cold ids lost their rows
    assert _rows(lookup, [999_999]) == [miss]  # never seen: the miss row, not a row of its own


def test_eval_only_looks_up() -> None:
    lookup = _lookup(8)
    lookup.eval()
    lookup(_ids(HOT))
    assert _rows(lookup, HOT) == [7, 7, 7]


def test_options_are_checked() -> None:
    table = LogicalTable("user_id", 1 << 20, 4, ("user_id",), per_id=False)
    with pytest.raises(RecsysError, match=r"embedding.tables.user_id \(scheme mc\): .*eviction"):
        build_part(table, {"scheme": "mc", "ratio": 1.0, "zch_size": 64, "eviction": "fifo"})
    assert build_part(table, {"scheme": "mc", "ratio": 1.0, "zch_size": 8, "buckets": 8}).physical[0].rows == 16
    assert build_part(table, {"scheme": "mc", "ratio": 4096.0}).physical[0].rows == 256
    assert build_part(table, {"scheme": "mc", "ratio": 1.0, "zch_size": 100, "buckets": 8}).physical[0].rows == 104


def test_cpu_eviction_resets_the_rows_optimizer_state() -> None:
    """fbgemm-gpu-cpu has no reset_weight_momentum kernel; the sharder's module resets rows with tensor ops."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = _lookup(16, buckets=1)
        table = "user_id__mc"
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"), constraints={
            table: ParameterConstraints(sharding_types=["row_wise"], compute_kernels=["fused"])})
        plan = planner.plan(model, sharders())
        from torch.distributed.optim import _apply_optimizer_in_backward
        from torchrec.optim.rowwise_adagrad import RowWiseAdagrad
        _apply_optimizer_in_backward(RowWiseAdagrad, model.parameters(), {"lr": 0.5})
        dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=sharders())
        sharded = dmp.module.collection
        assert isinstance(sharded, CpuEvictingManagedCollisionEmbeddingCollection)
        for _ in range(3):  # admits the hot ids (an eviction of empty rows each time: it must not raise)
            dmp(_ids(HOT))[FEATURE].values().sum().backward()
        tbe, index = sharded._table_to_tbe_and_index[table]
        (state,) = tbe.split_optimizer_states()[int(index)]
        weight = sharded._embedding_module.embeddings.get_parameter(f"{table}.weight")
        trained = state.nonzero().flatten()
        assert trained.numel() == 3
        before = weight.detach().clone()
        sharded._evict({table: trained[:1]})
        (state,) = tbe.split_optimizer_states()[int(index)]
        assert float(state[trained[0]]) == 0.0 and bool((state[trained[1:]] > 0).all())
        assert not torch.equal(weight[trained[0]], before[trained[0]])
        assert torch.equal(weight[trained[1:]], before[trained[1:]])
        bound = (1.0 / 16) ** 0.5
        assert bool((weight[trained[0]].abs() <= bound).all())  # re-drawn by the table's init
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_and_the_artifact_scores_the_same(small_ctr: Path, tmp_path: Path) -> None:
    """user_id (241 ids) in 64 rows: misses and evictions happen; item_id shares its mc table with the
    history (per-id lookups of two features in one managed collection)."""
    out = tmp_path / "run"
    result = train_cli(small_ctr, out, "trainer.max_steps=20", "trainer.batch_size=256",
                       "embedding.tables.user_id.scheme=mc", "embedding.tables.user_id.zch_size=64",
                       "embedding.tables.item_id.scheme=mc", "embedding.tables.item_id.zch_size=64",
                       "embedding.tables.item_id.eviction=lru", nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = (out / "plan.txt").read_text()
    for table in ("user_id", "item_id"):
        line = next(line for line in plan.splitlines() if f".{table}__mc:" in line)
        assert "row_wise kernel=fused" in line and set(re.findall(r"rank (\d+) rows", line)) == {"0", "1"}
    loaded = artifacts.load(out / "artifact")
    state = loaded.model.state_dict()
    raw = next(v for k, v in state.items() if k.endswith("user_id__mc._mch_sorted_raw_ids"))
    admitted = raw[raw != torch.iinfo(torch.int64).max]
    assert admitted.numel() >= 60 and bool((admitted > 0).all())  # both shards' ids, gathered as int64
    metrics = json.loads((out / "artifact" / "metrics.json").read_text())
    reloaded = evaluate(loaded.model, ParquetReader(small_ctr, "test", 1024), torch.device("cpu"),
                        task_spec(load_schema(small_ctr)))
    for key in ("auc", "logloss"):
        assert reloaded[key] == pytest.approx(metrics[f"test.{key}"], abs=1e-6), key


@pytest.mark.slow
def test_resume_on_another_process_count_keeps_the_remapping(small_ctr: Path, tmp_path: Path) -> None:
    """A 2-process checkpoint resumed on 1 process: the shards' remapping merges into one; the artifact then
    records the 1-process layout (torchrec's own copy of it is overwritten by the load) and scores the same."""
    out = tmp_path / "run"
    mc = ("embedding.tables.user_id.scheme=mc", "embedding.tables.user_id.zch_size=64")
    first = train_cli(small_ctr, out, "trainer.max_steps=10", "trainer.checkpoint_every=10",
                      "trainer.batch_size=256", *mc, nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = train_cli(small_ctr, out, "trainer.max_steps=20", nproc=1, extra=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    loaded = artifacts.load(out / "artifact")
    segments = next(v for k, v in loaded.model.state_dict().items()
                    if k.endswith("user_id__mc._output_segments_tensor"))
    assert segments[:3].tolist() == [0, 64, -1]
    metrics = json.loads((out / "artifact" / "metrics.json").read_text())
    reloaded = evaluate(loaded.model, ParquetReader(small_ctr, "test", 1024), torch.device("cpu"),
                        task_spec(load_schema(small_ctr)))
    assert reloaded["auc"] == pytest.approx(metrics["test.auc"], abs=1e-6)
