"""DLRM's dot interaction: the pairwise inner products of a sample's feature vectors.

``dot_interaction(x)`` with x (B, F, D) returns (B, F*(F-1)/2): for every pair
i < j (row-major over the upper triangle) the dot product <x[:, i], x[:, j]>.

Three implementations of that one contract:

- ``reference_dot_interaction`` is the spec: autograd through ``bmm`` and a
  triangle gather, as torchrec's ``InteractionArch`` does it.
- ``torch_dot_interaction``, the torch path (any device, dtype or tracer): the
  same forward with its own backward. With S the (B, F, F) matrix holding the
  incoming gradient at the pairs, dX = (S + Sᵀ) X: one batched product where
  autograd through ``bmm(x, xᵀ)`` runs two plus a transpose and a sum.
- a native CPU kernel (``interaction.cpp``) for float32/float64 CPU tensors. On
  CPU ``torch.bmm`` runs B tiny (F×D)·(D×F) GEMMs at a quarter of the sgemm
  peak, the forward computes the whole F×F gram to keep half of it, and the
  backward writes S to memory and reads it back. The kernel computes only the
  pairs, four at a time from one load of x_i, sums each with a shuffle tree,
  and forms dX = (S + Sᵀ) X one sample at a time in registers. At DLRM's
  Criteo shape (B=2048, F=27, D=64, 2 threads) forward and backward take ~3 ms
  where the torch path takes ~9.5 and the spec ~15; in a training step of
  ~80 ms that is 5 and 13 ms saved (``benchmarks/bench_train.py``).

``dlrm_interaction(dense, sparse)`` is the same product in the shape DLRM uses it
(torchrec's ``InteractionArch``): the top MLP's input [dense | pairs of (dense,
sparse...)], read from the two inputs where they lie and written once, so the
model needs no (B, F, D) stack, no concatenation, and the embeddings get a
contiguous gradient. ``reference_dlrm_interaction`` is its spec,
``torch_dlrm_interaction`` its torch path.

``dot_interaction`` and ``dlrm_interaction`` call the custom ops
``torch.ops.recsys.dot_interaction`` and ``torch.ops.recsys.dlrm_interaction``
(``torch.library``, with fake kernels and autograd formulas), so fx tracing,
torchrec's pipeline tracer and ``torch.compile`` see one op node whichever
kernel runs inside it. The op runs the native kernel where it applies and is
built, else the torch path.

The kernel is built at first use by ``torch.utils.cpp_extension`` (ninja and
``$CXX``, default ``c++``; ``-O3 -march=native``) into
``$XDG_CACHE_HOME/recsys/kernels`` (default ``~/.cache/recsys/kernels``), in a
folder keyed by the source, torch's version, the flags and the CPU's feature
flags; a file lock makes concurrent first uses build it once. Its threads are
torch's intra-op pool (``at::parallel_for``). ``RECSYS_NATIVE_KERNELS=0``, a
failed build (with a warning) or another architecture: the torch path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch.utils import cpp_extension


def _pairs(num_features: int, device: torch.device) -> torch.Tensor:
    """Flat indices i * F + j of the upper triangle (i < j), row-major: (P,)."""
    rows, cols = torch.triu_indices(num_features, num_features, offset=1, device=device)
    return rows * num_features + cols


def reference_dot_interaction(x: torch.Tensor) -> torch.Tensor:
    """The spec: (B, F, D) → (B, F*(F-1)/2) through plain autograd."""
    batch, num_features, _ = x.shape
    gram = torch.bmm(x, x.transpose(1, 2))  # (B, F, F)
    return gram.flatten(1)[:, _pairs(num_features, x.device)]  # (B, P)


def reference_dlrm_interaction(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """The spec of ``dlrm_interaction``, as torchrec's ``InteractionArch`` computes it."""
    pairs = reference_dot_interaction(torch.cat([dense.unsqueeze(1), sparse], dim=1))  # (B, P)
    return torch.cat([dense, pairs], dim=1)  # (B, D + P)


# ---- the torch path -------------------------------------------------------------------------------

_PAIRS_CACHE: dict[tuple[int, torch.device], torch.Tensor] = {}


def _cached_pairs(num_features: int, device: torch.device) -> torch.Tensor:
    key = (num_features, device)
    pairs = _PAIRS_CACHE.get(key)
    if pairs is None:
        pairs = _PAIRS_CACHE[key] = _pairs(num_features, device)
    return pairs


def _torch_forward(x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    gram = torch.bmm(x, x.transpose(1, 2))  # (B, F, F)
    return gram.flatten(1).index_select(1, pairs)  # (B, P)


def _torch_backward(grad: torch.Tensor, x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    batch, num_features, _ = x.shape
    upper = grad.new_zeros(batch, num_features * num_features)
    upper.index_copy_(1, pairs, grad)  # (B, F*F), the pairs' gradient on the upper triangle
    upper = upper.view(batch, num_features, num_features)
    return torch.bmm(upper + upper.transpose(1, 2), x)  # (B, F, D)


class _TorchDotInteraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, pairs)
        return _torch_forward(x, pairs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        x, pairs = ctx.saved_tensors
        return _torch_backward(grad, x, pairs), None


def torch_dot_interaction(x: torch.Tensor) -> torch.Tensor:
    """(B, F, D) → (B, F*(F-1)/2) in torch ops with the one-bmm backward; any device and dtype."""
    return _TorchDotInteraction.apply(x, _cached_pairs(x.shape[1], x.device))


def torch_dlrm_interaction(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """``dlrm_interaction`` in torch ops: stack, ``torch_dot_interaction``, concatenate."""
    pairs = torch_dot_interaction(torch.cat([dense.unsqueeze(1), sparse], dim=1))  # (B, P)
    return torch.cat([dense, pairs], dim=1)  # (B, D + P)


# ---- the native build -----------------------------------------------------------------------------

_SOURCE = Path(__file__).with_name("interaction.cpp")
_NAME = "recsys_interaction"
# -ffp-contract=fast: fused multiply-adds, as GNU C's default (ISO C++ turns them off)
_CFLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-Wno-psabi")
_LDFLAGS = ("-fopenmp",)  # libgomp.so.1: the loader reuses the one torch loaded, so the team is torch's pool


def _cpu_flags() -> str:
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor()


def native_build_dir() -> Path:
    """The kernel's build folder for this source, torch, compiler, flags and CPU (-march=native code must
    never run on another CPU)."""
    key = hashlib.sha256("\0".join([
        _SOURCE.read_text(), torch.__version__, sys.implementation.cache_tag, os.environ.get("CXX", "c++"),
        *_CFLAGS, *_LDFLAGS, platform.machine(), _cpu_flags()]).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recsys" / "kernels"
    return cache / f"interaction-{key.hexdigest()[:16]}"


def _build() -> None:
    """Load the kernel's library, compiling it first unless cached; raises on a failed build."""
    build_dir = native_build_dir()
    library = build_dir / f"{_NAME}.so"
    build_dir.mkdir(parents=True, exist_ok=True)
    # One builder at a time; the others wait, then load its library. The lock is released by the kernel
    # when a builder dies, where torch's own baton file (build_dir/lock) would stay and hang the next one.
    with open(build_dir.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = build_dir / "loaded"  # written once a build has loaded: a library is never half-written
        if not done.exists():
            (build_dir / "lock").unlink(missing_ok=True)  # a dead builder's baton: we hold the lock
            # copies: load() appends its own flags to the lists it is given
            cpp_extension.load(_NAME, [str(_SOURCE)], extra_cflags=list(_CFLAGS), extra_ldflags=list(_LDFLAGS),
                               build_directory=str(build_dir), is_python_module=False)
            done.touch()
            return
    torch.ops.load_library(str(library))


_lock = threading.Lock()
_built = False
_unavailable = False  # the build failed or is switched off; never retried in this process
_choice: bool | None = None  # use_native's; None: RECSYS_NATIVE_KERNELS, then where the kernel is faster


def native_available() -> bool:
    """Whether the native kernel is (or can be) built here; builds it on the first call."""
    global _built, _unavailable
    if _built or _unavailable:  # every op call asks: no lock once decided
        return _built
    with _lock:
        if not _built and not _unavailable:
            if os.environ.get("RECSYS_NATIVE_KERNELS") == "0" or platform.machine() not in ("x86_64", "aarch64"):
                _unavailable = True
            else:
                try:
                    _build()
                    _built = True
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    warnings.warn(f"kernels.interaction: native kernel unavailable ({str(exc)[-500:]}); using the "
                                  "torch path (RECSYS_NATIVE_KERNELS=0 chooses it without a build)", stacklevel=2)
                    _unavailable = True
        return _built


def native_preferred() -> bool:
    """Whether the ops run the native kernel by default here. ``RECSYS_NATIVE_KERNELS=1`` or ``0`` decides;
    unset, where it measured faster than the torch path (``benchmarks/bench_interaction.py``, DLRM's Criteo
    shape, forward + backward): x86 with AVX-512, about 3× faster; not on AVX2-only x86, where its 64-byte
    vectors run out of registers and it is about 3× slower; aarch64, as before the measurement."""
    setting = os.environ.get("RECSYS_NATIVE_KERNELS")
    if setting in ("0", "1"):
        return setting == "1"
    if platform.machine() == "x86_64":
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return platform.machine() == "aarch64"


def use_native(enabled: bool | None) -> None:
    """Choose the ops' path in this process: True the native kernel (where it builds), False the torch path,
    None the default (``native_preferred``). For tests and benchmarks that compare the two."""
    global _choice
    _choice = enabled


def native_enabled() -> bool:
    """Whether the ops run the native kernel in this process now (building it on first use)."""
    chosen = native_preferred() if _choice is None else _choice
    return chosen and native_available()


def _native(*tensors: torch.Tensor) -> bool:
    return (all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
            and len({t.dtype for t in tensors}) == 1 and native_enabled())


# ---- the ops --------------------------------------------------------------------------------------

def _check_dot(x: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"dot_interaction: x (B, F, D) expected, got {tuple(x.shape)}")


def _check_dlrm(dense: torch.Tensor, sparse: torch.Tensor) -> None:
    if dense.dim() != 2 or sparse.dim() != 3 or dense.shape != (sparse.shape[0], sparse.shape[2]):
        raise ValueError(f"dlrm_interaction: dense (B, D) and sparse (B, S, D) expected, "
                         f"got {tuple(dense.shape)} and {tuple(sparse.shape)}")


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` if each sample (all dims but the first) is contiguous, as the kernel reads it; samples may lie
    apart (a slice of a wider tensor needs no copy)."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:]), strict=True):
        if size != 1 and stride != expected:
            return t.contiguous()
        expected *= size
    return t


@torch.library.custom_op("recsys::dot_interaction", mutates_args=())
def _dot_interaction(x: torch.Tensor) -> torch.Tensor:
    _check_dot(x)
    if x.shape[1] >= 2 and _native(x):
        return torch.ops.recsys_kernels.dot_forward(x.contiguous())
    return _torch_forward(x, _cached_pairs(x.shape[1], x.device))


@_dot_interaction.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    _check_dot(x)
    return x.new_empty(x.shape[0], x.shape[1] * (x.shape[1] - 1) // 2)


@torch.library.custom_op("recsys::dot_interaction_backward", mutates_args=())
def _dot_interaction_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] >= 2 and _native(grad, x):
        return torch.ops.recsys_kernels.dot_backward(_rows_contiguous(grad), x.contiguous())
    return _torch_backward(grad, x, _cached_pairs(x.shape[1], x.device))


@_dot_interaction_backward.register_fake
def _(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape)


def _dot_setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0])


def _dot_grad(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
    return torch.ops.recsys.dot_interaction_backward(grad, x)


_dot_interaction.register_autograd(_dot_grad, setup_context=_dot_setup)


@torch.library.custom_op("recsys::dlrm_interaction", mutates_args=())
def _dlrm_interaction(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    _check_dlrm(dense, sparse)
    if _native(dense, sparse):
        return torch.ops.recsys_kernels.dlrm_forward(_rows_contiguous(dense), _rows_contiguous(sparse))
    vectors = torch.cat([dense.unsqueeze(1), sparse], dim=1)  # (B, S + 1, D)
    return torch.cat([dense, _torch_forward(vectors, _cached_pairs(vectors.shape[1], vectors.device))], dim=1)


@_dlrm_interaction.register_fake
def _(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    _check_dlrm(dense, sparse)
    vectors = sparse.shape[1] + 1
    return dense.new_empty(dense.shape[0], dense.shape[1] + vectors * (vectors - 1) // 2,
                           dtype=torch.promote_types(dense.dtype, sparse.dtype))


@torch.library.custom_op("recsys::dlrm_interaction_backward", mutates_args=())
def _dlrm_interaction_backward(grad: torch.Tensor, dense: torch.Tensor, sparse: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    if _native(grad, dense, sparse):
        return torch.ops.recsys_kernels.dlrm_backward(_rows_contiguous(grad), _rows_contiguous(dense),
                                                      _rows_contiguous(sparse))
    dim = dense.shape[1]
    vectors = torch.cat([dense.unsqueeze(1), sparse], dim=1).to(grad.dtype)  # (B, S + 1, D)
    d_vectors = _torch_backward(grad[:, dim:], vectors, _cached_pairs(vectors.shape[1], vectors.device))
    d_dense = d_vectors[:, 0] + grad[:, :dim]  # the dense vector also reaches the output directly
    return d_dense.to(dense.dtype), d_vectors[:, 1:].to(sparse.dtype, memory_format=torch.contiguous_format)


@_dlrm_interaction_backward.register_fake
def _(grad: torch.Tensor, dense: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return dense.new_empty(dense.shape), sparse.new_empty(sparse.shape)


def _dlrm_setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[torch.Tensor, torch.Tensor],
                output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _dlrm_grad(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dense, sparse = ctx.saved_tensors  # type: ignore[attr-defined]
    return torch.ops.recsys.dlrm_interaction_backward(grad, dense, sparse)


_dlrm_interaction.register_autograd(_dlrm_grad, setup_context=_dlrm_setup)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """Autocast's dtype where it is on for x's device (trainer.precision=bf16), else None. The ops run as autocast
    runs ``bmm``: inputs cast to its dtype (their gradients come back in their own), forward and backward in it;
    a custom op is not on autocast's lists, and its backward would otherwise meet a bf16 gradient beside fp32
    inputs."""
    if not isinstance(x, torch.Tensor):  # an fx proxy: the traced graph holds the op itself
        return None
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def dot_interaction(x: torch.Tensor) -> torch.Tensor:
    """(B, F, D) → (B, F*(F-1)/2): pairwise dot products, i < j, row-major; the fastest path for x."""
    autocast = _autocast_dtype(x)
    if autocast is not None:
        with torch.autocast(x.device.type, enabled=False):
            return torch.ops.recsys.dot_interaction(x.to(autocast))
    return torch.ops.recsys.dot_interaction(x)


def dlrm_interaction(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """(B, D), (B, S, D) → (B, D + P): DLRM's top-MLP input, the dense vector then the dot products of
    the S + 1 vectors [dense, sparse...] (i < j, row-major), as torchrec's ``InteractionArch``.

    The native path reads both inputs where they lie and writes one output: no (B, S+1, D) stack,
    no concatenation, and contiguous gradients for both inputs (the embedding backward would
    otherwise copy its slice of the stack's gradient).
    """
    autocast = _autocast_dtype(dense)
    if autocast is not None:
        with torch.autocast(dense.device.type, enabled=False):
            return torch.ops.recsys.dlrm_interaction(dense.to(autocast), sparse.to(autocast))
    return torch.ops.recsys.dlrm_interaction(dense, sparse)
