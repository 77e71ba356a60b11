"""A retriever's dense layers stay the same on every process: torchrec wraps them in DDP with a static graph,
whose gradient all-reduce hangs off the tensors of the forward's output, so ``PairScores`` must expose its
tensors (a registered pytree). Two real gloo processes, the platform's sharding, different batches per rank."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.config import TrainConfig
from recsys.data.layout import load_schema
from recsys.data.reader import ParquetReader
from recsys.distributed import sharding
from recsys.distributed.env import DistEnv
from recsys.models import build_model
from recsys.tasks import task_spec
from recsys.train.step import train_step

CONFIG = TrainConfig.from_dict({"model": {"tower": [8, 4]}, "trainer": {"batch_size": 128}})


def _worker(rank: int, data: str, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    env = DistEnv(rank=rank, world_size=2, local_rank=rank, local_world_size=2, device=torch.device("cpu"),
                  backend="gloo")
    schema = load_schema(data)
    torch.manual_seed(0)
    model = build_model("two_tower", schema, CONFIG.model, CONFIG.embedding, embedding_device="meta")
    plan = sharding.plan(model, CONFIG, 2, 2, env.device, dist.group.WORLD)
    dmp = sharding.shard(model, CONFIG, env, plan)
    optimizer = sharding.optimizer(dmp, CONFIG)
    batches = iter(ParquetReader(data, "train", 64, rank=rank, world_size=2, partition="rank"))
    for _ in range(3):
        train_step(dmp, optimizer, next(batches), 2, task_spec(schema))
    dense = torch.cat([p.detach().flatten() for n, p in sorted(dmp.named_parameters()) if "tower" in n])
    gathered = [torch.empty_like(dense) for _ in range(2)]
    dist.all_gather(gathered, dense)
    if rank == 0:
        torch.save(torch.stack(gathered), out)
    dist.barrier()
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: under load, gloo's threads outliving the group can abort the
    # process there ("terminate called without an active exception") after the result is saved.
    os._exit(0)


def test_two_tower_dense_layers_agree_across_processes(small_implicit: Path, tmp_path: Path) -> None:
    out = tmp_path / "dense.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(small_implicit), str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    ranks = torch.load(out)
    assert ranks.shape[1] > 0
    torch.testing.assert_close(ranks[0], ranks[1], rtol=0, atol=0)
