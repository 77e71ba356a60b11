"""Training throughput: DLRM on a Criteo-shaped config, our engine in 1 and 2 processes against plain PyTorch.

Issue #4. Shapes: 13 dense and 26 sparse features, 26 tables of 100,000 rows of
dim 64, bottom MLP 13-512-256-64, top MLP 415-512-512-256-1, global batch 2048,
SGD (lr 0.01) everywhere. Everything below is measured in one run on one machine:

- plain: the yardstick, as the original DLRM does it: 26 ``nn.EmbeddingBag(sum,
  sparse=True)``, the two MLPs, the dot interaction through ``bmm`` and a
  triangle gather, BCE loss, ``torch.optim.SGD`` on every parameter (sparse
  gradients for the tables); 1 process, all threads.
- engine: ``build_model('dlrm')`` sharded by ``recsys.distributed`` (table-wise,
  fbgemm's fused kernel with SGD in the backward, dense SGD), stepped by
  ``recsys.train.step.train_step``; 1 process with all threads, and 2 processes
  (torchrun, gloo, 1 thread and 1024 rows each).
- what each change bought, in the same interleaved rounds: the engine with
  DLRM's forward as it was before ``dlrm_interaction`` (stack the vectors, dot
  interaction, concatenate), with the native kernel, its torch path (one-bmm
  backward) and its spec (torchrec's maths, autograd through bmm); and changes
  proposed for files this script does not own, applied here by patching: no DDP
  wrapper in a 1-process group (``recsys/distributed/sharding.py``), that with
  torchrec's MLP layers applying ReLU in place. After those
  rounds, glibc is told to keep freed memory (the ``mallopt`` proposed for
  ``recsys/distributed/env.py``) and the main variants run again.
- precision pairs: plain and engine at fp32, and both again at bf16 (the engine through
  ``trainer.precision=bf16``'s step, ``recsys.precision``; plain with the same autocast
  around its forward and the loss on fp32 logits), each compared with the other at the
  same precision. ``machine.native_bf16`` says whether the CPU has bf16 units
  (avx512_bf16/amx_bf16 in ``machine.cpu_flags``); without them bf16 is emulated and slow.
- the fp32 GEMM peak: a 4096³ ``torch.mm`` on the same threads.
- FLOPs per sample: forward = 2·Σ(in·out) over the MLP layers + 2·P·D for the
  P = F(F-1)/2 pairs of the interaction; a training step counts 3× forward
  (backward: one GEMM for the input gradient, one for the weights). Embedding
  lookups and element-wise ops are memory traffic, not counted.
- a torch.profiler breakdown of a step by part, for the plain model and the engine.

Batches are synthetic and generated in memory before any timing, so data loading
is not in the figures (``bench_data.py`` measures the reader; its figure is quoted
from results/data.json when present). One id per sparse feature per row, drawn
uniformly from [0, 100,000) (``--ids zipf`` draws them from a Zipf(1.1)-like law
instead: many repeats of hot rows, as in real click logs).

Timing: variants run in interleaved rounds (each round steps every variant
``--steps`` times, in rotating order), so a load change on a shared machine hits
them alike; the first step of each round and ``--warmup`` steps before the first
round are not counted; figures are medians over the counted steps. The load
average and the CPU pressure (share of time something waited for a CPU) before
and after are saved with the results: above a few percent the machine was shared
and the figures are low and noisy.

    .venv/bin/python benchmarks/bench_train.py            # ~3 min on an idle machine
    .venv/bin/python benchmarks/bench_train.py --quick    # ~40 s, a smoke check
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torchrec.modules.mlp import Perceptron
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import cpu_pressure, machine  # noqa: E402

import recsys.models.dlrm as dlrm_module  # noqa: E402
from kernels.interaction import (  # noqa: E402
    dot_interaction,
    native_enabled,
    reference_dot_interaction,
    torch_dot_interaction,
)
from recsys.config import TrainConfig  # noqa: E402
from recsys.distributed import sharding  # noqa: E402
from recsys.distributed.env import DistEnv, init_distributed, shutdown  # noqa: E402
from recsys.models import build_model  # noqa: E402
from recsys.precision import Resolved, autocast, bf16_supported  # noqa: E402
from recsys.schema import Schema  # noqa: E402
from recsys.tasks import task_named  # noqa: E402
from recsys.train.step import train_step  # noqa: E402
from recsys.types import Batch  # noqa: E402

HERE = Path(__file__).resolve().parent
LEARNING_RATE = 0.01


@dataclass(frozen=True)
class Shape:
    """The Criteo-shaped DLRM of issue #4."""

    batch_size: int = 2048
    rows: int = 100_000
    dim: int = 64
    dense: int = 13
    sparse: int = 26
    bottom_mlp: tuple[int, ...] = (512, 256, 64)
    top_mlp: tuple[int, ...] = (512, 512, 256, 1)

    @property
    def vectors(self) -> int:
        """Feature vectors in the interaction: the bottom MLP's output and one per sparse feature."""
        return self.sparse + 1

    @property
    def pairs(self) -> int:
        return self.vectors * (self.vectors - 1) // 2

    @property
    def top_input(self) -> int:
        return self.dim + self.pairs


def criteo_schema(shape: Shape) -> Schema:
    return Schema.from_dict({
        "dense": [{"name": f"int_{i}", "entity": "context", "transform": "none"} for i in range(shape.dense)],
        "sparse": [{"name": f"cat_{i}", "entity": "context"} for i in range(shape.sparse)],
        "tables": [{"name": f"cat_{i}", "encoding": "identity", "cardinality": shape.rows, "embedding_dim": shape.dim}
                   for i in range(shape.sparse)],
        "labels": [{"name": "label"}],
    })


def make_batches(shape: Shape, count: int, batch_size: int, ids: str, seed: int) -> list[Batch]:
    """``count`` batches of ``batch_size`` rows, one id per sparse feature per row."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        if ids == "zipf":
            # Inverse-CDF draw of a power law with exponent 1.1 over the rows, hot rows spread by a fixed permutation.
            u = torch.rand(shape.sparse, batch_size, generator=generator, dtype=torch.float64)
            rank = (shape.rows ** (1 - 1.1 * u)).long().clamp(max=shape.rows) - 1  # skewed toward 0
            values = (rank * 7919 + torch.arange(shape.sparse).unsqueeze(1) * 104_729) % shape.rows  # (S, B)
        else:
            values = torch.randint(0, shape.rows, (shape.sparse, batch_size), generator=generator)  # (S, B)
        sparse = KeyedJaggedTensor(keys=[f"cat_{i}" for i in range(shape.sparse)], values=values.flatten(),
                                   lengths=torch.ones(shape.sparse * batch_size, dtype=torch.int32))
        batches.append(Batch(dense=torch.randn(batch_size, shape.dense, generator=generator), sparse=sparse,
                             labels=torch.randint(0, 2, (batch_size,), generator=generator).float()))
    return batches


# ---- the yardstick ---------------------------------------------------------------------------------

def mlp(sizes: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if last_relu or index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PlainEmbeddings(nn.Module):
    """One ``nn.EmbeddingBag(sum, sparse=True)`` per sparse feature; one id per feature per row."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(shape.rows, shape.dim, mode="sum", sparse=True)
                                    for _ in range(shape.sparse))

    def forward(self, sparse: KeyedJaggedTensor) -> list[torch.Tensor]:
        ids = sparse.values().view(len(self.tables), -1)  # (S, B)
        offsets = torch.arange(ids.shape[1])
        return [table(ids[k], offsets) for k, table in enumerate(self.tables)]  # S × (B, D)


class PlainInteraction(nn.Module):
    """The original DLRM's dot interaction: the full gram by bmm, its strict lower triangle gathered."""

    def __init__(self, vectors: int) -> None:
        super().__init__()
        rows, cols = torch.tril_indices(vectors, vectors, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(vectors, vectors.transpose(1, 2))  # (B, F, F)
        return gram[:, self.rows, self.cols]  # (B, P)


class PlainDLRM(nn.Module):
    """The same shapes in plain PyTorch, parts named as in ``recsys.models.dlrm`` so one profile split fits both."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.sparse_arch = PlainEmbeddings(shape)
        self.dense_arch = mlp([shape.dense, *shape.bottom_mlp], last_relu=True)
        self.interaction = PlainInteraction(shape.vectors)
        self.over_arch = mlp([shape.top_input, *shape.top_mlp], last_relu=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        pooled = self.sparse_arch(batch.sparse)  # S × (B, D)
        dense = self.dense_arch(batch.dense)  # (B, D)
        vectors = torch.stack([dense, *pooled], dim=1)  # (B, F, D)
        pairs = self.interaction(vectors)  # (B, P)
        return self.over_arch(torch.cat([dense, pairs], dim=1)).squeeze(1)  # (B,)


def plain_stepper(shape: Shape) -> tuple[PlainDLRM, dict[Resolved, Callable[[Batch], None]]]:
    """The plain model and its step at each precision (bf16: autocast forward, loss on fp32 logits)."""
    torch.manual_seed(0)
    model = PlainDLRM(shape)
    # Two SGDs with one rate are one SGD; apart, the profile can tell the table update from the dense one.
    tables = torch.optim.SGD(model.sparse_arch.parameters(), lr=LEARNING_RATE)
    dense = torch.optim.SGD([p for name, p in model.named_parameters() if not name.startswith("sparse_arch")],
                            lr=LEARNING_RATE)

    def step(batch: Batch, precision: Resolved) -> None:
        with record_function("bench::dense_optimizer"):
            dense.zero_grad()
        with record_function("bench::embedding_bwd_optimizer"):
            tables.zero_grad()
        with autocast(precision, batch.labels.device):
            logits = model(batch)
        with record_function("bench::loss"):
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels)
        loss.backward()
        with record_function("bench::embedding_bwd_optimizer"):
            tables.step()
        with record_function("bench::dense_optimizer"):
            dense.step()
    return model, {p: (lambda batch, p=p: step(batch, p)) for p in ("fp32", "bf16")}


# ---- the engine, and the changes proposed for files outside this one -------------------------------

def engine_config(shape: Shape, global_batch: int) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"bottom_mlp": list(shape.bottom_mlp), "top_mlp": list(shape.top_mlp)},
        "embedding": {"dim": shape.dim},
        "optimizer": {"sparse": {"name": "sgd", "lr": LEARNING_RATE}, "dense": {"name": "sgd", "lr": LEARNING_RATE}},
        "sharding": {"sharding_types": ["table_wise"], "compute_kernels": ["fused"]},
        "trainer": {"batch_size": global_batch},
    }, where="bench_train")


@contextmanager
def no_ddp_wrapper(enabled: bool) -> Iterator[None]:
    """While enabled, ``sharding.shard`` leaves the dense part unwrapped: the proposal for a 1-process group."""
    original = sharding.SumDataParallelWrapper.wrap
    if enabled:
        sharding.SumDataParallelWrapper.wrap = lambda self, dmp, env, device: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        sharding.SumDataParallelWrapper.wrap = original  # type: ignore[method-assign]


def engine_stepper(shape: Shape, env: DistEnv, global_batch: int, ddp: bool = True
                   ) -> tuple[nn.Module, dict[Resolved, Callable[[Batch], None]]]:
    """The sharded model and its ``train_step`` at each precision."""
    config = engine_config(shape, global_batch)
    torch.manual_seed(0)
    model = build_model("dlrm", criteo_schema(shape), config.model, config.embedding, "meta")
    plan = sharding.plan(model, config, env.world_size, env.local_world_size, env.device, dist.group.WORLD)
    with no_ddp_wrapper(not ddp):
        dmp = sharding.shard(model, config, env, plan)
    optimizer = sharding.optimizer(dmp, config)
    task = task_named("ctr")
    return dmp, {p: (lambda batch, p=p: train_step(dmp, optimizer, batch, env.world_size, task, p))
                 for p in ("fp32", "bf16")}


def previous_dlrm_forward(kernel: Callable[[torch.Tensor], torch.Tensor]
                          ) -> Callable[[dlrm_module.DLRM, Batch], torch.Tensor]:
    """``DLRM.forward`` as it was before ``dlrm_interaction`` (dense case): stack, ``kernel``, concatenate."""
    def forward(self: dlrm_module.DLRM, batch: Batch) -> torch.Tensor:
        pooled = self.sparse_arch(batch.sparse).pooled.values()  # (B, F * D)
        sparse = pooled.view(pooled.shape[0], self.num_sparse, self.dim)  # (B, F, D)
        dense = self.dense_arch(batch.dense)  # (B, D)
        vectors = torch.cat([dense.unsqueeze(1), sparse], dim=1)  # (B, F + 1, D)
        with record_function("bench::interaction_fwd"):  # for the profile; free otherwise
            pairs = kernel(vectors)  # (B, P)
        return self.over_arch(torch.cat([dense, pairs], dim=1)).squeeze(1)  # (B,)
    return forward


@contextmanager
def dlrm_forward(forward: Callable[[dlrm_module.DLRM, Batch], torch.Tensor]) -> Iterator[None]:
    original = dlrm_module.DLRM.forward
    dlrm_module.DLRM.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        dlrm_module.DLRM.forward = original  # type: ignore[method-assign]


@contextmanager
def inplace_relu(model: nn.Module) -> Iterator[None]:
    """torchrec's MLP layers apply ReLU in place on their Linear's fresh output (an optional proposal)."""
    layers = [m for m in model.modules() if isinstance(m, Perceptron) and m._activation_fn is torch.relu]
    for layer in layers:
        layer._activation_fn = torch.relu_
    try:
        yield
    finally:
        for layer in layers:
            layer._activation_fn = torch.relu


# glibc returns freed blocks above its (adaptive) mmap threshold and the heap's top beyond its trim threshold
# to the kernel; a training step frees and reallocates the same tens of MiB each time, and the pages come back
# one fault at a time (thousands a step). These keep them in the heap.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """The proposed process setting: glibc keeps freed memory for reuse (no page faults on the next step)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


# ---- timing ----------------------------------------------------------------------------------------

@dataclass
class Variant:
    key: str
    label: str
    step: Callable[[Batch], None]
    patch: Callable[[], AbstractContextManager[Any]] = nullcontext


def interleaved(variants: list[Variant], batches: list[Batch], rounds: int, steps: int,
                warmup: int) -> dict[str, list[float]]:
    """Seconds per counted step of each variant, stepped round-robin (see the module docstring)."""
    times: dict[str, list[float]] = {v.key: [] for v in variants}
    for variant in variants:
        with variant.patch():
            for k in range(warmup):
                variant.step(batches[k % len(batches)])
    for r in range(rounds):
        for variant in variants[r % len(variants):] + variants[:r % len(variants)]:
            with variant.patch():
                for k in range(steps + 1):
                    batch = batches[(r * steps + k) % len(batches)]
                    start = time.perf_counter()
                    variant.step(batch)
                    if k:  # the first step after switching variants refills the caches
                        times[variant.key].append(time.perf_counter() - start)
    return times


def summary(step_times: list[float], global_batch: int) -> dict[str, Any]:
    median = statistics.median(step_times)
    quartiles = statistics.quantiles(step_times, n=4) if len(step_times) > 1 else [median] * 3
    return {"step_ms": 1e3 * median, "step_ms_q1": 1e3 * quartiles[0], "step_ms_q3": 1e3 * quartiles[2],
            "samples_per_s": global_batch / median, "steps": len(step_times)}


def gemm_peak(threads: int, size: int, repeats: int) -> dict[str, Any]:
    """fp32 GFLOP/s of a size³ torch.mm on ``threads`` threads: median and best of ``repeats``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(2):
        torch.mm(a, b, out=out)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        seconds.append(time.perf_counter() - start)
    torch.set_num_threads(previous)
    flops = 2 * size ** 3
    return {"size": size, "threads": threads, "gflops": flops / statistics.median(seconds) / 1e9,
            "gflops_best": flops / min(seconds) / 1e9, "repeats": repeats}


def flops_per_sample(shape: Shape) -> dict[str, float]:
    """Forward and training FLOPs of one sample; the formula is in the module docstring."""
    def layers(sizes: list[int]) -> int:
        return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    bottom = layers([shape.dense, *shape.bottom_mlp])
    top = layers([shape.top_input, *shape.top_mlp])
    interaction = 2 * shape.pairs * shape.dim
    forward = bottom + top + interaction
    return {"bottom_mlp_forward": bottom, "top_mlp_forward": top, "interaction_forward": interaction,
            "forward": forward, "train_step": 3 * forward}


# ---- where the time goes ---------------------------------------------------------------------------

CATEGORIES = ["embedding lookup fwd", "embedding bwd + sparse optimizer", "input/output dist",
              "MLP fwd", "MLP bwd", "interaction fwd", "interaction bwd", "loss", "dense optimizer",
              "DDP gradient sync", "other (cat/stack glue, autograd)"]

# An op's time goes to the nearest enclosing range that names a part: the ranges this script opens
# around the forward of each part, torchrec's own ranges, and in the backward the autograd node.
_SCOPES = {"bench::embedding_fwd": "embedding lookup fwd", "bench::mlp_fwd": "MLP fwd",
           "bench::interaction_fwd": "interaction fwd", "bench::loss": "loss",
           "aten::binary_cross_entropy_with_logits": "loss", "bench::dense_optimizer": "dense optimizer",
           "bench::embedding_bwd_optimizer": "embedding bwd + sparse optimizer"}
_BACKWARD_NODES = [
    (("SplitLookupFunction", "EmbeddingBag"), "embedding bwd + sparse optimizer"),
    (("All2All", "AllToAll", "Awaitable"), "input/output dist"),
    (("Addmm", "MmBackward", "ReluBackward", "Threshold", "TBackward", "AccumulateGrad"), "MLP bwd"),
    (("Interaction", "BmmBackward", "IndexBackward"), "interaction bwd"),
    (("BinaryCrossEntropy", "MulBackward", "SqueezeBackward"), "loss"),
]


def _category(name: str, own: bool) -> str | None:
    """The part an op belongs to by its own name (``own``) or by the name of a range around it."""
    if name in _SCOPES:
        return _SCOPES[name]
    if name.startswith("[lookup]"):
        return "embedding lookup fwd"
    if name.startswith(("[input_dist]", "[splits_dist]", "[output_dist]", "## ")):
        return "input/output dist"
    if name.startswith(("c10d::", "torch::distributed::reducer")) or (own and name.startswith("DistributedDataPar")):
        return "DDP gradient sync"  # DDP's forward range encloses the whole model: only its own time is DDP's
    if name.startswith(("Optimizer.step#CombinedOptimizer", "Optimizer.zero_grad#CombinedOptimizer")):
        return "dense optimizer"  # the engine's; the fused sparse optimizer has no step of its own
    if name.startswith(("autograd::engine::evaluate_function:", "torch::autograd::")):
        for needles, category in _BACKWARD_NODES:
            if any(needle in name for needle in needles):
                return category
    return None


@contextmanager
def profiled_parts(model: nn.Module) -> Iterator[None]:
    """Profiler ranges around the forward of the model's named parts and of its interaction kernel."""
    inner = getattr(model, "module", model)  # DMP keeps the model at .module
    parts = {"sparse_arch": "bench::embedding_fwd", "dense_arch": "bench::mlp_fwd", "over_arch": "bench::mlp_fwd",
             "interaction": "bench::interaction_fwd"}
    handles, open_ranges = [], []
    for attribute, label in parts.items():
        part = getattr(inner, attribute, None)
        if isinstance(part, nn.Module):
            def enter(module: nn.Module, args: Any, label: str = label) -> None:
                open_ranges.append(record_function(label).__enter__())

            def leave(module: nn.Module, args: Any, output: Any) -> None:
                open_ranges.pop().__exit__(None, None, None)
            handles += [part.register_forward_pre_hook(enter), part.register_forward_hook(leave)]
    originals = {name: getattr(dlrm_module, name) for name in ("dot_interaction", "dlrm_interaction")
                 if hasattr(dlrm_module, name)}

    def ranged(kernel: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def call(*args: torch.Tensor) -> torch.Tensor:
            with record_function("bench::interaction_fwd"):
                return kernel(*args)
        return call
    for name, kernel in originals.items():
        setattr(dlrm_module, name, ranged(kernel))
    try:
        yield
    finally:
        for name, kernel in originals.items():
            setattr(dlrm_module, name, kernel)
        for handle in handles:
            handle.remove()


def breakdown(model: nn.Module, step: Callable[[Batch], None], patch: Callable[[], AbstractContextManager[Any]],
              batches: list[Batch], steps: int) -> dict[str, Any]:
    """Milliseconds per step by part (self CPU time of each op, charged to its nearest categorised range)."""
    with patch():
        for batch in batches[:2]:
            step(batch)
        with profiled_parts(model), profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for batch in batches[2:2 + steps]:
                step(batch)
            wall = time.perf_counter() - start
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        category, node = _category(event.name, own=True), event.cpu_parent
        while node is not None and category is None:
            category = _category(node.name, own=False)
            node = node.cpu_parent
        totals[category or CATEGORIES[-1]] += event.self_cpu_time_total / 1e3 / steps
    profiled = sum(totals.values())
    return {"ms_per_step": {c: totals.get(c, 0.0) for c in CATEGORIES},
            "share": {c: totals.get(c, 0.0) / profiled for c in CATEGORIES},
            "profiled_ms_per_step": profiled, "wall_ms_per_step_under_profiler": 1e3 * wall / steps, "steps": steps}


# ---- the 2-process run -----------------------------------------------------------------------------

def worker(args: argparse.Namespace) -> None:
    """One torchrun process: the engine on its share of the global batch; rank 0 writes the step times."""
    env = init_distributed()
    shape = Shape(batch_size=args.batch_size)
    local = shape.batch_size // env.world_size
    model, steps = engine_stepper(shape, env, shape.batch_size)
    step = steps["fp32"]
    batches = make_batches(shape, args.batch_count, local, args.ids, seed=1 + env.rank)
    for k in range(args.warmup):
        step(batches[k % len(batches)])
    seconds = []
    dist.barrier()
    for k in range(args.rounds * args.steps):
        start = time.perf_counter()
        step(batches[k % len(batches)])
        seconds.append(time.perf_counter() - start)
    parts = breakdown(model, step, nullcontext, batches, args.profile_steps)  # every rank steps: collectives
    if env.is_main:
        Path(args.worker_out).write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads(),
                                                     "world_size": env.world_size, "rows_per_process": local,
                                                     "profile_rank_0": parts}))
    shutdown()


def two_processes(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "worker.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   str(Path(__file__).resolve()), "--worker", "--worker-out", str(out),
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--rounds", str(args.rounds),
                   "--warmup", str(args.warmup), "--ids", args.ids, "--batch-count", str(args.batch_count),
                   "--profile-steps", str(args.profile_steps)]
        completed = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        if completed.returncode != 0 or not out.exists():
            raise RuntimeError(f"2-process run failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
        result = json.loads(out.read_text())
    return {**summary(result["seconds"], args.batch_size), "threads_per_process": result["threads"],
            "rows_per_process": result["rows_per_process"], "processes": result["world_size"],
            "profile_rank_0": result["profile_rank_0"]}


def data_loading_figure() -> dict[str, Any] | None:
    """The reader's throughput as ``bench_data.py`` last measured it (not remeasured here)."""
    path = HERE / "results" / "data.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    reader = min(data.get("reader", []), key=lambda r: r["num_workers"], default=None)
    if reader is None:
        return None
    return {"source": "results/data.json (bench_data.py)", "date": data["machine"]["date"],
            "num_workers": reader["num_workers"], "batch_size": reader["batch_size"],
            "steady_rows_per_s": reader["steady_rows_per_s"],
            "main_cpu_ms_per_batch": reader["main_cpu_ms_per_batch"]}


# ---- report ----------------------------------------------------------------------------------------

_CHANGES = [  # (what, step without it, step with it), all from the same interleaved rounds
    ("native interaction kernel, against the spec (torchrec's maths)", "engine_stacked_spec", "engine_stacked"),
    ("native interaction kernel, against the torch path", "engine_stacked_torch", "engine_stacked"),
    ("dlrm_interaction: no stack, no concatenation", "engine_stacked", "engine"),
    ("proposed: no DDP wrapper in 1 process", "engine", "engine_no_ddp"),
    ("optional: in-place ReLU in the MLPs, on top of no DDP", "engine_no_ddp", "engine_no_ddp_inplace_relu"),
    ("glibc keeps freed memory, engine", "engine", "engine_keep_freed_memory"),
    ("glibc keeps freed memory, engine without DDP", "engine_no_ddp", "engine_no_ddp_keep_freed_memory"),
    ("glibc keeps freed memory, plain", "plain", "plain_keep_freed_memory"),
]


def changes(runs: dict[str, Any]) -> list[dict[str, Any]]:
    """Milliseconds per step each change saves (negative: costs)."""
    return [{"change": what, "from": before, "to": after,
             "saved_ms": runs[before]["step_ms"] - runs[after]["step_ms"],
             "speedup": runs[before]["step_ms"] / runs[after]["step_ms"]}
            for what, before, after in _CHANGES if before in runs and after in runs]


def print_report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"\n{m['cpu']} · {m['nproc']} cpus · {m['memory_gib']} GiB · torch {m['torch']} · torchrec {m['torchrec']}"
          f" · load {m['load_average']} → {m['load_average_end']} · cpu pressure {m['cpu_pressure']}% → "
          f"{m['cpu_pressure_end']}%")
    peak = results["gemm_peak"]
    print(f"fp32 GEMM peak: {peak['gflops']:.0f} GFLOP/s ({peak['size']}³ mm, {peak['threads']} threads; "
          f"best {peak['gflops_best']:.0f}) · {results['flops']['train_step'] / 1e6:.2f} MFLOP per sample per step")
    print(f"\n{'run':<64}{'step ms':>9}{'samples/s':>11}{'× plain':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for row in results["runs"].values():
        print(f"{row['label']:<64}{row['step_ms']:>9.1f}{row['samples_per_s']:>11,.0f}{row['vs_plain']:>9.2f}"
              f"{row['gflops']:>9.1f}{row['fraction_of_peak']:>9.0%}")
    print(f"\n{'precision':<12}{'plain samples/s':>17}{'engine samples/s':>18}{'engine × plain':>16}"
          f"   (native bf16: {m.get('native_bf16')})")
    for name, pair in results.get("precision_pairs", {}).items():
        print(f"{name:<12}{pair['plain_samples_per_s']:>17,.0f}{pair['engine_samples_per_s']:>18,.0f}"
              f"{pair['engine_vs_plain']:>16.2f}")
    print(f"\n{'change':<64}{'saved ms':>9}{'speed-up':>9}")
    for change in results["changes"]:
        print(f"{change['change']:<64}{change['saved_ms']:>9.1f}{change['speedup']:>9.2f}")
    print("\nwhere a step's time goes, ms (torch.profiler, self time of each op by part)")
    columns = list(results["profile"])
    width = max(len(c) for c in columns) + 2
    print(f"{'part':<36}" + "".join(f"{c:>{width}}" for c in columns))
    for category in CATEGORIES:
        print(f"{category:<36}" + "".join(f"{results['profile'][c]['ms_per_step'][category]:>{width}.1f}"
                                          for c in columns))
    print(f"{'total profiled':<36}" + "".join(f"{results['profile'][c]['profiled_ms_per_step']:>{width}.1f}"
                                             for c in columns))
    if results.get("data_loading"):
        d = results["data_loading"]
        print(f"\ndata loading (not in the figures): the reader gives {d['steady_rows_per_s']:,.0f} rows/s, "
              f"{d['main_cpu_ms_per_batch']:.1f} ms of main-process CPU per batch of {d['batch_size']} "
              f"({d['source']}, {d['date']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train.json")
    parser.add_argument("--batch-size", type=int, default=2048, help="global batch")
    parser.add_argument("--steps", type=int, default=10, help="counted steps per variant per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=4, help="steps per variant before the first round")
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--ids", choices=["uniform", "zipf"], default="uniform")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (~1 min), for a smoke check")
    parser.add_argument("--no-two-processes", action="store_true", help="skip the torchrun run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--batch-count", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup, args.profile_steps = 3, 3, 2, 3
    if args.worker:
        worker(args)
        return

    results: dict[str, Any] = {"benchmark": "train", "machine": {
        **machine(), "cpu_pressure": cpu_pressure(), "native_bf16": bf16_supported(torch.device("cpu"))}}
    shape = Shape(batch_size=args.batch_size)
    results["config"] = {**asdict(shape), "ids": args.ids, "optimizer": f"SGD lr {LEARNING_RATE} (tables and dense)",
                         "steps_per_round": args.steps, "rounds": args.rounds, "warmup": args.warmup,
                         "native_interaction_kernel": native_enabled()}
    print("… fp32 GEMM peak", file=sys.stderr, flush=True)
    results["gemm_peak"] = gemm_peak(torch.get_num_threads(), 4096, 3 if args.quick else 7)
    results["flops"] = flops_per_sample(shape)

    print("… building the plain model and the engine", file=sys.stderr, flush=True)
    env = init_distributed()  # one process: a gloo group of 1, all threads
    plain, plain_steps = plain_stepper(shape)
    engine, engine_steps = engine_stepper(shape, env, shape.batch_size)
    bare, bare_steps = engine_stepper(shape, env, shape.batch_size, ddp=False)
    plain_step, engine_step, bare_step = plain_steps["fp32"], engine_steps["fp32"], bare_steps["fp32"]
    batches = make_batches(shape, args.batch_count, shape.batch_size, args.ids, seed=0)
    stacked = lambda kernel: lambda: dlrm_forward(previous_dlrm_forward(kernel))  # noqa: E731
    variants = [
        Variant("plain", "plain PyTorch (EmbeddingBag sparse + SGD)", plain_step),
        Variant("engine", "engine, 1 process", engine_step),
        Variant("engine_stacked", "engine, forward before dlrm_interaction (stack, cat)", engine_step,
                stacked(dot_interaction)),
        Variant("engine_stacked_torch", "  … and the torch-path interaction (one-bmm backward)", engine_step,
                stacked(torch_dot_interaction)),
        Variant("engine_stacked_spec", "  … and the spec interaction (torchrec's maths)", engine_step,
                stacked(reference_dot_interaction)),
        Variant("engine_no_ddp", "engine + proposed: no DDP wrapper in 1 process", bare_step),
        Variant("engine_no_ddp_inplace_relu", "engine + no DDP + in-place ReLU in the MLPs", bare_step,
                lambda: inplace_relu(bare)),
        Variant("plain_bf16", "plain PyTorch, bf16 (autocast forward, fp32 loss)", plain_steps["bf16"]),
        Variant("engine_bf16", "engine, 1 process, trainer.precision=bf16", engine_steps["bf16"]),
    ]
    print(f"… {len(variants)} variants × {args.rounds} rounds × {args.steps} steps", file=sys.stderr, flush=True)
    times = interleaved(variants, batches, args.rounds, args.steps, args.warmup)
    runs = {v.key: {"label": v.label, **summary(times[v.key], shape.batch_size)} for v in variants}
    results["per_round_ratio_vs_plain"] = {key: [
        statistics.median(times["plain"][r * args.steps:(r + 1) * args.steps])
        / statistics.median(times[key][r * args.steps:(r + 1) * args.steps]) for r in range(args.rounds)]
        for key in ("engine", "engine_no_ddp")}

    print("… profiling", file=sys.stderr, flush=True)
    results["profile"] = {"plain": breakdown(plain, plain_step, nullcontext, batches, args.profile_steps),
                          "engine": breakdown(engine, engine_step, nullcontext, batches, args.profile_steps),
                          "engine, no DDP": breakdown(bare, bare_step, nullcontext, batches, args.profile_steps)}

    print("… the main variants again, glibc keeping freed memory", file=sys.stderr, flush=True)
    results["config"]["keep_freed_memory_applied"] = keep_freed_memory()
    again = [v for v in variants if v.key in ("plain", "engine", "engine_no_ddp")]
    times = interleaved(again, batches, args.rounds, args.steps, args.warmup)
    for v in again:
        runs[f"{v.key}_keep_freed_memory"] = {"label": f"{v.label}, glibc keeps freed memory",
                                              **summary(times[v.key], shape.batch_size)}
    del plain, engine, bare
    shutdown()

    if not args.no_two_processes:
        print("… engine, 2 processes (torchrun)", file=sys.stderr, flush=True)
        two = two_processes(args)
        results["profile"]["engine, 2 proc, rank 0"] = two.pop("profile_rank_0")
        runs["engine_2_processes"] = {"label": "engine, 2 processes × 1 thread", **two}

    for key, row in runs.items():  # each against plain at its own precision and memory setting
        yardstick = runs["plain_keep_freed_memory" if key.endswith("keep_freed_memory")
                         else "plain_bf16" if key.endswith("_bf16") else "plain"]
        row["vs_plain"] = yardstick["step_ms"] / row["step_ms"]
        row["gflops"] = results["flops"]["train_step"] * row["samples_per_s"] / 1e9
        row["fraction_of_peak"] = row["gflops"] / results["gemm_peak"]["gflops"]
    results["runs"] = runs
    results["changes"] = changes(runs)
    pairs = (("fp32", "plain", "engine"), ("bf16", "plain_bf16", "engine_bf16"))  # same precision on both sides
    results["precision_pairs"] = {p: {"plain_samples_per_s": runs[base]["samples_per_s"],
                                      "engine_samples_per_s": runs[eng]["samples_per_s"],
                                      "engine_vs_plain": runs[eng]["vs_plain"]} for p, base, eng in pairs}
    results["headline"] = {
        "plain_samples_per_s": runs["plain"]["samples_per_s"],
        "engine_1_process_samples_per_s": runs["engine"]["samples_per_s"],
        "engine_2_processes_samples_per_s": runs.get("engine_2_processes", {}).get("samples_per_s"),
        "engine_vs_plain": runs["engine"]["vs_plain"],
        "engine_without_ddp_vs_plain": runs["engine_no_ddp"]["vs_plain"],
        "engine_vs_plain_bf16": runs["engine_bf16"]["vs_plain"],
        "engine_bf16_vs_engine_fp32": runs["engine"]["step_ms"] / runs["engine_bf16"]["step_ms"],
        "gemm_peak_gflops": results["gemm_peak"]["gflops"],
        "engine_gflops": runs["engine"]["gflops"], "engine_fraction_of_peak": runs["engine"]["fraction_of_peak"]}
    results["data_loading"] = data_loading_figure()
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["machine"]["cpu_pressure_end"] = cpu_pressure()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
