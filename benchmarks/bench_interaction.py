"""The dot interaction's forward + backward: the ``recsys::`` op (native kernel) against its torch path and the spec.

Issue 16. At DLRM's Criteo shape (batch 2048, the bottom MLP's vector and 26
pooled embeddings of dim 64: F = 27 vectors, P = 351 pairs), one timed call is
the forward and the backward with a fixed upstream gradient, for each of

- ``op``: ``dlrm_interaction`` / ``dot_interaction``, the ``recsys::`` custom
  ops running the native CPU kernel (Python dispatch, autograd formula included);
- ``torch``: ``torch_dlrm_interaction`` / ``torch_dot_interaction``, the torch
  path (``bmm``, one-bmm backward), which the op runs where the kernel is absent;
- ``spec``: ``reference_dlrm_interaction`` / ``reference_dot_interaction``,
  autograd through ``bmm`` and a triangle gather (torchrec's maths).

``dlrm`` is the shape DLRM calls (dense (B, D), sparse (B, 26, D)), ``dot`` the
stacked (B, 27, D) one. Variants run in interleaved rounds (every variant
``--calls`` times per round, in rotating order) so a load change hits them
alike; the first call of each round is dropped. Medians in milliseconds; the
machine (CPU model and flags, load, CPU pressure before and after) is saved with
the figures: above a few percent of pressure the machine was shared.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_interaction.py
    .venv/bin/python benchmarks/bench_interaction.py --quick --out /tmp/interaction.json   # a smoke check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import cpu_pressure, machine  # noqa: E402

from kernels.interaction import (  # noqa: E402
    dlrm_interaction,
    dot_interaction,
    native_available,
    native_preferred,
    reference_dlrm_interaction,
    reference_dot_interaction,
    torch_dlrm_interaction,
    torch_dot_interaction,
    use_native,
)

HERE = Path(__file__).resolve().parent
KERNELS = {
    "dlrm": {"op": dlrm_interaction, "torch": torch_dlrm_interaction, "spec": reference_dlrm_interaction},
    "dot": {"op": dot_interaction, "torch": torch_dot_interaction, "spec": reference_dot_interaction},
}


def inputs(form: str, batch: int, sparse: int, dim: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if form == "dlrm":
        shapes: list[tuple[int, ...]] = [(batch, dim), (batch, sparse, dim)]
    else:
        shapes = [(batch, sparse + 1, dim)]
    return [torch.randn(*shape, generator=generator).requires_grad_() for shape in shapes]


def timed_call(kernel: Callable[..., torch.Tensor], leaves: list[torch.Tensor], grad: torch.Tensor) -> float:
    """Seconds for one forward and backward."""
    for leaf in leaves:
        leaf.grad = None
    start = time.perf_counter()
    kernel(*leaves).backward(grad)
    return time.perf_counter() - start


def run(batch: int, sparse: int, dim: int, rounds: int, calls: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for form, kernels in KERNELS.items():
        leaves = inputs(form, batch, sparse, dim)
        with torch.no_grad():
            grad = torch.randn_like(kernels["spec"](*leaves))
        times: dict[str, list[float]] = {name: [] for name in kernels}
        names = list(kernels)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                round_times = [timed_call(kernels[name], leaves, grad) for _ in range(calls + 1)]
                times[name] += round_times[1:]  # the first call of a round warms caches
        medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        results[form] = {name: {"median_ms": round(ms, 3), "calls": len(times[name]),
                                "speedup_vs_op": round(ms / medians["op"], 2)} for name, ms in medians.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--sparse", type=int, default=26, help="pooled embeddings beside the dense vector")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per variant per round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 calls, for a smoke check")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "interaction.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 2, 3
    if not native_available():
        sys.exit("bench_interaction: the native kernel did not build here; nothing to compare")
    default_native = native_preferred()  # what the ops run here unless told: recorded with the figures
    use_native(True)  # "op" is the kernel, here even where the torch path is the default
    before = cpu_pressure()
    results: dict[str, Any] = {
        "benchmark": "interaction",
        "machine": {**machine(), "cpu_pressure_before": before, "native_is_the_default": default_native},
        "config": {"batch": args.batch, "sparse": args.sparse, "dim": args.dim, "vectors": args.sparse + 1,
                   "pairs": (args.sparse + 1) * args.sparse // 2, "rounds": args.rounds, "calls": args.calls,
                   "quick": args.quick, "timed": "forward + backward, float32"},
        "runs": run(args.batch, args.sparse, args.dim, args.rounds, args.calls),
    }
    results["machine"]["cpu_pressure_after"] = cpu_pressure()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for form, runs in results["runs"].items():
        line = "  ".join(f"{name} {r['median_ms']:.2f} ms (×{r['speedup_vs_op']:.2f})" for name, r in runs.items())
        print(f"{form:5s} fwd+bwd, median: {line}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
