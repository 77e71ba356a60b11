"""The process group: torchrun's environment when launched by it, a one-process group otherwise.

One process runs the same code as N: it joins a gloo group of size 1 on a free
loopback port, so DistributedModelParallel, the planner and the checkpoints take
the same path whatever the process count.
"""

from __future__ import annotations

import os
from datetime import timedelta
from dataclasses import dataclass

import torch
import torch.distributed as dist

from recsys.system import cpu_share, free_port


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def worker_threads(local_world_size: int) -> int:
    """torch threads of one of ``local_world_size`` CPU processes on this host: ``OMP_NUM_THREADS`` when set (the
    user's, or ``recsys.system.thread_policy``'s share), except the 1 that torchrun sets by itself when it starts
    several processes per host; else the available CPUs shared out (more threads than cores only thrash)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    share = cpu_share(local_world_size)
    if not value.isdigit() or int(value) < 1 or (value == "1" and local_world_size > 1):
        return share
    return int(value)


def init_distributed() -> DistEnv:
    """Join (or create) the default process group: nccl with one GPU per process, else gloo."""
    if not launched_by_torchrun():
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
        torch.set_num_threads(worker_threads(local_world_size))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return DistEnv(rank, world_size, local_rank, local_world_size, device, backend)


def shutdown(failed: bool = False) -> None:
    """Leave the process group. After a failure every process that reaches this point first waits (at most
    30 s, gloo's monitored barrier) for the others: a process that tore its group down while a peer was still
    inside the last collective made that peer's gloo thread abort the interpreter ("terminate called without
    an active exception") under load."""
    if not dist.is_initialized():
        return
    if failed and dist.get_world_size() > 1 and dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=30))
        except RuntimeError:  # a peer failed elsewhere or left: nothing to wait for
            pass
    dist.destroy_process_group()
