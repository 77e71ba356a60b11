"""Plan, shard and optimise: torchrec's planner and DistributedModelParallel around an unsharded model.

The model arrives with its embedding tables on the ``meta`` device; the planner
chooses a sharding per table within the configured constraints; fbgemm's fused
optimizers are attached to the embedding parameters before wrapping (they run
inside the backward, so no embedding gradient is ever materialised); the dense
parameters get a torch optimizer.

Gradient scaling. Each process's loss is its local mean divided by the world
size W, so that a sharded table, whose gradients from all processes are summed by
the backward all-to-all, receives the gradient of the global-batch mean. The
data-parallel part (MLPs, data-parallel tables) is all-reduced with a SUM hook
instead of DDP's average, so it receives the same. One process and W processes
then take the same steps on the same global batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.mc_embedding import ManagedCollisionEmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.types import PlannerError
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from recsys.config import (ComputeKernel, DenseOptimizer, ShardingConfig, ShardingType, SparseOptimizer,
                           SparseOptimizerConfig, TrainConfig)
from recsys.distributed.env import DistEnv
from recsys.distributed.managed_collision import ManagedCollisionSharder
from recsys.embeddings import embedding_modules, embedding_tables, logical_of, table_names, table_users
from recsys.errors import RecsysError

_GIB = 1024 ** 3


# Sharding types torchrec cannot run for un-pooled tables (EmbeddingCollection) on a CPU: its data-parallel
# lookup returns pooled rows there (checked with gloo, torchrec 1.8), and table-column-wise is bags-only.
_UNPOOLED_CPU_REFUSED = {ShardingType.DATA_PARALLEL, ShardingType.TABLE_COLUMN_WISE, ShardingType.TABLE_ROW_WISE}


def _managed_tables(model: nn.Module) -> set[str]:
    """Tables in a managed-collision collection (the ``mc`` scheme's), which torchrec shards only row-wise with
    the fused kernel."""
    return {table for module in model.modules() if isinstance(module, ManagedCollisionEmbeddingCollection)
            for table in table_names(module)}


def _unpooled_tables(model: nn.Module) -> set[str]:
    return {table for _, module in embedding_modules(model) if isinstance(module, EmbeddingCollection)
            for table in table_names(module)}


def constraints(model: nn.Module, config: ShardingConfig, device: torch.device | None = None
                ) -> dict[str, ParameterConstraints]:
    """Per-table planner constraints: the config's defaults, overridden per table. ``sharding.tables`` names a
    logical table (a schema table: the override covers every physical table its scheme creates) or one physical
    table. On a CPU, un-pooled tables (the item table a history shares) drop the sharding types torchrec cannot
    run for them there. Managed-collision tables are row-wise with the fused kernel, whatever the config says."""
    tables = table_names(model)
    managed = _managed_tables(model)
    logical = logical_of(model)
    unpooled = _unpooled_tables(model) if device is not None and device.type == "cpu" else set()
    unknown = sorted(set(config.tables) - set(tables) - set(logical.values()))
    if unknown:
        raise RecsysError(f"sharding.tables: unknown table '{unknown[0]}'; tables: "
                          f"{', '.join(dict.fromkeys([*logical.values(), *tables]))}")
    out = {}
    for table in tables:
        override = config.tables.get(table) or config.tables.get(logical[table])
        types = (override.sharding_types if override and override.sharding_types else config.sharding_types)
        if table in unpooled:
            types = [t for t in types if t not in _UNPOOLED_CPU_REFUSED]
            if not types:
                raise RecsysError(
                    f"sharding: table '{logical[table]}' is looked up un-pooled (a history uses it, or its "
                    "embedding scheme combines vectors per id), which torchrec shards on a CPU only table_wise, "
                    "column_wise or row_wise; allow one for it with "
                    f"--set 'sharding.tables.{logical[table]}.sharding_types=[table_wise]'")
        kernels = (override.compute_kernels if override and override.compute_kernels else config.compute_kernels)
        min_partition = override.min_partition if override and override.min_partition else config.min_partition
        if table in managed:
            types, kernels = [ShardingType.ROW_WISE], [ComputeKernel.FUSED]
        out[table] = ParameterConstraints(sharding_types=[t.value for t in types],
                                          compute_kernels=[k.value for k in kernels], min_partition=min_partition)
    return out


def topology(config: ShardingConfig, world_size: int, local_world_size: int, device: torch.device) -> Topology:
    top = config.topology
    kwargs: dict[str, Any] = {}
    if top.hbm_cap_gib is not None:
        kwargs["hbm_cap"] = int(top.hbm_cap_gib * _GIB)
    if top.ddr_cap_gib is not None:
        kwargs["ddr_cap"] = int(top.ddr_cap_gib * _GIB)
    return Topology(world_size=world_size, compute_device=device.type,
                    local_world_size=top.local_world_size or local_world_size, **kwargs)


def sharders() -> list[ModuleSharder[nn.Module]]:
    """torchrec's default sharders, the managed-collision one replaced by ours (evicted rows reset on CPUs)."""
    return [ManagedCollisionSharder() if isinstance(sharder, ManagedCollisionEmbeddingCollectionSharder)
            else sharder for sharder in get_default_sharders()]  # type: ignore[misc]


def plan(model: nn.Module, config: TrainConfig, world_size: int, local_world_size: int, device: torch.device,
         group: dist.ProcessGroup | None = None) -> ShardingPlan:
    """torchrec's plan for the model's tables; with a process group, agreed on by every rank."""
    planner = EmbeddingShardingPlanner(
        topology=topology(config.sharding, world_size, local_world_size, device),
        batch_size=max(1, config.trainer.batch_size // world_size),
        constraints=constraints(model, config.sharding, device),
    )
    try:
        if group is not None:
            return planner.collective_plan(model, sharders(), group)
        return planner.plan(model, sharders())
    except (PlannerError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())
        if isinstance(exc, RuntimeError) and not reason.startswith("No available sharding type"):
            raise
        reason = reason.split(" To debug")[0]
        raise RecsysError(f"sharding: no valid plan for {world_size} process(es) on {device.type} with "
                          f"sharding types {[t.value for t in config.sharding.sharding_types]}: {reason[:300]}") from None


def plan_text(sharding_plan: ShardingPlan, model: nn.Module | None = None) -> str:
    """One line per table: sharding type, kernel and each shard's rank, offsets and sizes. With the (unsharded)
    model, tables are listed under the logical table they embed, with its scheme, when a scheme created them."""
    lines: dict[str, list[str]] = {}
    for module_path, module_plan in sharding_plan.plan.items():
        for table, parameter in module_plan.items():  # type: ignore[union-attr]
            shards = parameter.sharding_spec.shards if parameter.sharding_spec is not None else []
            where = "; ".join(f"rank {s.placement.rank()} rows {s.shard_offsets[0]}+{s.shard_sizes[0]} "
                              f"cols {s.shard_offsets[1]}+{s.shard_sizes[1]}" for s in shards) \
                or f"ranks {parameter.ranks}"
            lines.setdefault(table, []).append(f"{module_path}.{table}: {parameter.sharding_type} "
                                               f"kernel={parameter.compute_kernel} [{where}]")
    if model is None:
        return "".join(line + "\n" for group in lines.values() for line in group)
    users = table_users(model)
    schemes = {name: scheme for m in model.modules() for name, scheme in (getattr(m, "schemes", None) or {}).items()}
    groups: dict[str, list[str]] = {}  # heading → physical tables
    for table in lines:
        owners = users.get(table, [table])
        heading = (f"{table} (shared by {', '.join(owners)})" if len(owners) > 1
                   else f"{owners[0]} ({schemes.get(owners[0], 'standard')})")
        groups.setdefault(heading, []).append(table)
    out: list[str] = []
    for heading, physical in groups.items():
        if len(physical) == 1 and users.get(physical[0], [physical[0]]) == physical:
            out += lines[physical[0]]  # a full table: one line, as without schemes
            continue
        out.append(heading + ":")
        out += [f"  {line}" for t in physical for line in lines[t]]
    return "".join(line + "\n" for line in out)


def check_sparse_optimizer(config: TrainConfig, device: torch.device) -> None:
    """fbgemm's CPU kernels fuse Adagrad, row-wise Adagrad and SGD; Adam only runs on GPUs."""
    if device.type == "cpu" and config.optimizer.sparse.name is SparseOptimizer.ADAM:
        raise RecsysError("optimizer.sparse.name: 'adam' is fused by fbgemm on GPUs only; on a CPU use "
                          "rowwise_adagrad, adagrad or sgd")


def _sparse_optimizer(config: SparseOptimizerConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    if config.name is SparseOptimizer.ROWWISE_ADAGRAD:
        return RowWiseAdagrad, {"lr": config.lr, "eps": config.eps, "weight_decay": config.weight_decay}
    if config.name is SparseOptimizer.ADAGRAD:
        return torch.optim.Adagrad, {"lr": config.lr, "eps": config.eps, "weight_decay": config.weight_decay}
    if config.name is SparseOptimizer.ADAM:
        return torch.optim.Adam, {"lr": config.lr, "eps": config.eps, "weight_decay": config.weight_decay}
    return torch.optim.SGD, {"lr": config.lr, "weight_decay": config.weight_decay}


def _dense_optimizer(config: TrainConfig) -> Any:
    dense = config.optimizer.dense
    if dense.name is DenseOptimizer.ADAM:
        return lambda params: torch.optim.Adam(params, lr=dense.lr, eps=dense.eps, weight_decay=dense.weight_decay)
    if dense.name is DenseOptimizer.ADAGRAD:
        return lambda params: torch.optim.Adagrad(params, lr=dense.lr, eps=dense.eps, weight_decay=dense.weight_decay)
    return lambda params: torch.optim.SGD(params, lr=dense.lr, weight_decay=dense.weight_decay)


def _allreduce_sum(group, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations here
    """DDP comm hook: sum the bucket over ranks (DDP's default averages; see the module docstring)."""
    return dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future().then(lambda f: f.value()[0])


class SumDataParallelWrapper(DefaultDataParallelWrapper):
    """torchrec's DDP wrapping of the dense part, with gradients summed rather than averaged."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        # A model whose every parameter is a sharded table (mf) has nothing to all-reduce, and DDP refuses it.
        sharded = set(DistributedModelParallel._sharded_parameter_names(dmp._dmp_wrapped_module))
        if not any(p.requires_grad and name not in sharded
                   for name, p in dmp._dmp_wrapped_module.named_parameters()):
            dmp._dmp_wrapped_module.to(device)
            return
        super().wrap(dmp, env, device)
        if isinstance(dmp._dmp_wrapped_module, DistributedDataParallel):
            dmp._dmp_wrapped_module.register_comm_hook(env.process_group, _allreduce_sum)


def _replicated_lookups(dmp: DistributedModelParallel) -> list[DistributedDataParallel]:
    """The DDP-wrapped lookups torchrec builds for data-parallel tables (kept in a plain list, not as modules)."""
    found = []
    for module in dmp.modules():
        for lookup in getattr(module, "_lookups", None) or []:
            if isinstance(lookup, DistributedDataParallel):
                found.append(lookup)
    return found


def replicated_tables(sharding_plan: ShardingPlan, tables: dict[str, tuple[str, str]]) -> set[str]:
    """Parameter names (``tables``: ``embedding_tables`` of the unsharded model) of the tables the plan
    replicates (data-parallel)."""
    return {name for name, (module_path, table) in tables.items()
            if _planned(sharding_plan, module_path)[table].sharding_type  # type: ignore[index]
            == ShardingType.DATA_PARALLEL.value}


def _planned(sharding_plan: ShardingPlan, module_path: str) -> Any:
    """The plan of a collection; one inside a managed-collision collection (``<path>._embedding_module``) is
    planned as part of it."""
    if module_path not in sharding_plan.plan and module_path.endswith("._embedding_module"):
        module_path = module_path.removesuffix("._embedding_module")
    return sharding_plan.plan[module_path]


def shard(model: nn.Module, config: TrainConfig, env: DistEnv, sharding_plan: ShardingPlan) -> DistributedModelParallel:
    """Attach the fused sparse optimizer to the sharded tables, then wrap the model by the plan.

    Data-parallel tables are dense parameters: torchrec's DDP around their lookup
    all-reduces them (summed, as everywhere here) and the dense optimizer steps them;
    the fused in-backward optimizers never reach that lookup's flat weight.
    """
    check_sparse_optimizer(config, env.device)
    optimizer_class, kwargs = _sparse_optimizer(config.optimizer.sparse)
    replicated = replicated_tables(sharding_plan, embedding_tables(model))
    for path, module in embedding_modules(model):
        fused = [p for name, p in module.named_parameters(prefix=path) if name not in replicated]
        if fused:
            _apply_optimizer_in_backward(optimizer_class, fused, kwargs)
    dmp = DistributedModelParallel(
        module=model,
        device=env.device,
        plan=sharding_plan,
        sharders=sharders(),
        data_parallel_wrapper=SumDataParallelWrapper(),
    )
    for lookup in _replicated_lookups(dmp):
        lookup.register_comm_hook(dist.group.WORLD, _allreduce_sum)
    return dmp


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DistributedModelParallel and its data-parallel wrapper, its tables still sharded: to call
    a method other than forward (a retriever's ``user_vectors``); the model itself when not wrapped."""
    return model.module if isinstance(model, DistributedModelParallel) else model


def optimizer(dmp: DistributedModelParallel, config: TrainConfig) -> CombinedOptimizer:
    """The fused sparse optimizers and a keyed torch optimizer over the remaining (dense) parameters."""
    # A data-parallel table shows up as a view of its lookup's flat weight: step the flat weight instead.
    dense = {name: p for name, p in in_backward_optimizer_filter(dmp.named_parameters()) if p.is_leaf}
    for i, lookup in enumerate(_replicated_lookups(dmp)):
        dense |= {f"replicated_lookup_{i}.{name}": p for name, p in lookup.module.named_parameters()}
    parts: list[Any] = [dmp.fused_optimizer]
    if dense:
        parts.append(KeyedOptimizerWrapper(dense, _dense_optimizer(config)))
    return CombinedOptimizer(parts)


def base_learning_rates(combined: CombinedOptimizer, config: TrainConfig) -> list[float]:
    """The configured rate of each param group (fused sparse groups, then dense), before any schedule factor."""
    rates = []
    for _, part in combined.optimizers:
        rate = config.optimizer.dense.lr if isinstance(part, KeyedOptimizerWrapper) else config.optimizer.sparse.lr
        rates += [rate] * len(part.param_groups)
    return rates


@torch.no_grad()
def sync_norm_statistics(dmp: nn.Module) -> None:
    """Rank 0's moving statistics of every normalisation layer (BatchNorm, DIN's Dice) on every process.

    torchrec's DDP wrapper does not broadcast buffers, so each process would keep the statistics of its own
    batches: evaluation would use a different model per process and the export rank 0's. Collective.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for module in dmp.modules():
        if isinstance(module, _NormBase):
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


def loss_scale(world_size: int) -> float:
    """Factor on each process's mean loss; see the module docstring."""
    return 1.0 / world_size


def schedule_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Learning-rate factor at 0-based ``step``: linear warm-up, then the configured decay."""
    schedule = config.optimizer.schedule
    if schedule.warmup_steps and step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.decay.value == "none" or total_steps <= schedule.warmup_steps:
        return 1.0
    progress = min(1.0, (step - schedule.warmup_steps) / max(1, total_steps - schedule.warmup_steps))
    low = schedule.min_factor
    if schedule.decay.value == "linear":
        return 1.0 - (1.0 - low) * progress
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
