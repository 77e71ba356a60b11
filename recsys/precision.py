"""Compute precision: fp32, or bf16 autocast over the dense layers with fp32 tables, loss and scores.

bf16 is ``torch.autocast(device, torch.bfloat16)`` around a model's forward: the ops
autocast lists (linear, matmul, bmm, conv) run in bf16, everything else in the
dtype of its inputs. The parameters stay fp32 (autocast casts a copy per op), so
optimizers, checkpoints and artifacts are the same as an fp32 run's, and the
backward runs each op in the dtype its forward chose. Embedding lookups are not
autocast ops: fbgemm's tables and pooled vectors stay fp32. Callers take outputs
back to fp32 (``to_fp32``) before the loss or the link. Two of our own ops follow
the same rule: ``kernels.interaction`` runs its pairs as autocast runs ``bmm``, and
graph propagation (``recsys.models.graph``), an aggregation of embeddings, stays fp32.

Support: a CUDA device says so itself; a CPU has native bf16 with AVX512-BF16 or
AMX-BF16. Elsewhere torch emulates bf16 in software: correct, but slower than
fp32 and no smaller, so ``auto`` takes fp32 there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, TypeVar

import torch

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

Requested = Literal["fp32", "bf16", "auto"]
Resolved = Literal["fp32", "bf16"]
_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names for native bf16 arithmetic
T = TypeVar("T")


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of the CPU from /proc/cpuinfo; empty where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "", frozenset()
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", ""), frozenset((fields.get("flags") or fields.get("Features", "")).split())


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch probes: absent is "no"
    if any(getattr(torch.cpu, probe, lambda: False)() for probe in probes):
        return True
    return any(flag in cpu_info()[1] for flag in _CPU_FLAGS)


def resolve(requested: Requested, device: torch.device, where: str = "trainer.precision") -> Resolved:
    """The precision to run at. ``auto``: bf16 where ``device`` supports it, else fp32 (logged either way).

    ``bf16`` on a device without native support runs emulated (same results, slower than fp32) with a warning:
    it is how a run is reproduced or tested on another machine.
    """
    if requested == "auto":
        chosen: Resolved = "bf16" if bf16_supported(device) else "fp32"
        log.info("%s auto: %s (%s %s native bf16)", where, chosen, _name(device),
                 "has" if chosen == "bf16" else "lacks")
        return chosen
    if requested == "bf16" and not bf16_supported(device):
        log.warning("%s bf16: %s lacks native bf16 (no %s); bf16 is emulated in software, SLOWER than fp32. "
                    "Use fp32 or auto on this machine", where, _name(device), " or ".join(_CPU_FLAGS))
    return requested


def require_bf16(device: torch.device, where: str) -> None:
    """A one-line RecsysError unless ``device`` computes bf16 natively (serving, where emulation only costs)."""
    if not bf16_supported(device):
        raise RecsysError(f"{where} bf16: {_name(device)} lacks native bf16 (no {' or '.join(_CPU_FLAGS)}); "
                          "emulated bf16 is slower than fp32: use fp32 here")


@contextlib.contextmanager
def autocast(precision: Resolved, device: torch.device) -> Iterator[None]:
    """bf16 autocast for ``device`` when ``precision`` is bf16; nothing otherwise."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def to_fp32(output: T) -> T:
    """A forward's output with its floating tensors in fp32: a logits tensor, or a dataclass of tensors (a
    retriever's ``PairScores``), for a loss computed in fp32."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output  # type: ignore[return-value]
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        tensors = {f.name: to_fp32(getattr(output, f.name)) for f in dataclasses.fields(output)
                   if f.init and isinstance(getattr(output, f.name), torch.Tensor)}
        return dataclasses.replace(output, **tensors)
    return output


def _name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"this CPU ({cpu_info()[0]})" if cpu_info()[0] else "this CPU"
    return str(device)
