"""DLRM's dot interaction: the pairwise inner products of a sample's feature vectors.

``dot_interaction(x)`` with x (B, F, D) returns (B, F*(F-1)/2): for every pair
i < j (row-major over the upper triangle) the dot product <x[:, i], x[:, j]>.

Three implementations of that one contract:

- ``reference_dot_interaction`` is the spec: autograd through ``bmm`` and a
  triangle gather, as torchrec's ``InteractionArch`` does it.
- ``torch_dot_interaction`` (any device, dtype or tracer, and autocast): the same forward with
  its own backward. With S the (B, F, F) matrix holding the incoming gradient at
  the pairs, dX = (S + Sᵀ) X: one batched product where autograd through
  ``bmm(x, xᵀ)`` runs two plus a transpose and a sum.
- a native CPU kernel, which ``dot_interaction`` uses for float32/float64 CPU
  tensors when it builds. On CPU ``torch.bmm`` runs B tiny (F×D)·(D×F) GEMMs at
  a quarter of the sgemm peak, the forward computes the whole F×F gram to keep
  half of it, and the backward writes S to memory and reads it back. The kernel
  computes only the pairs, four at a time from one load of x_i, sums each with a
  shuffle tree, and forms dX = (S + Sᵀ) X one sample at a time in registers.
  At DLRM's Criteo shape (B=2048, F=27, D=64, 2 threads) forward and backward
  take ~3 ms where the torch path takes ~9.5 and the spec ~15; in a training
  step of ~80 ms that is 5 and 13 ms saved (``benchmarks/bench_train.py``).

``dlrm_interaction(dense, sparse)`` is the same product in the shape DLRM uses it
(torchrec's ``InteractionArch``): the top MLP's input [dense | pairs of (dense,
sparse...)], read from the two inputs where they lie and written once, so the
model needs no (B, F, D) stack, no concatenation, and the embeddings get a
contiguous gradient. ``reference_dlrm_interaction`` is its spec.

The kernel is C (GCC vector extensions, OpenMP) compiled at first use (~0.5 s)
with ``$CC`` (default ``cc``, ``-O3 -march=native``) into a cache directory
keyed by the source, the flags and the CPU's feature flags, and loaded with
ctypes. Its OpenMP team is torch's own intra-op pool (the libgomp torch loaded),
sized by ``torch.get_num_threads()``. No compiler (or one without GCC's vector
extensions), another architecture or ``RECSYS_NATIVE_KERNELS=0``: the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch


def _pairs(num_features: int, device: torch.device) -> torch.Tensor:
    """Flat indices i * F + j of the upper triangle (i < j), row-major: (P,)."""
    rows, cols = torch.triu_indices(num_features, num_features, offset=1, device=device)
    return rows * num_features + cols


def reference_dot_interaction(x: torch.Tensor) -> torch.Tensor:
    """The spec: (B, F, D) → (B, F*(F-1)/2) through plain autograd."""
    batch, num_features, _ = x.shape
    gram = torch.bmm(x, x.transpose(1, 2))  # (B, F, F)
    return gram.flatten(1)[:, _pairs(num_features, x.device)]  # (B, P)


class _TorchDotInteraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, pairs)
        gram = torch.bmm(x, x.transpose(1, 2))  # (B, F, F)
        return gram.flatten(1).index_select(1, pairs)  # (B, P)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        x, pairs = ctx.saved_tensors
        batch, num_features, _ = x.shape
        upper = grad.new_zeros(batch, num_features * num_features)
        upper.index_copy_(1, pairs, grad)  # (B, F*F), the pairs' gradient on the upper triangle
        upper = upper.view(batch, num_features, num_features)
        return torch.bmm(upper + upper.transpose(1, 2), x), None  # (B, F, D)


_PAIRS_CACHE: dict[tuple[int, torch.device], torch.Tensor] = {}


def torch_dot_interaction(x: torch.Tensor) -> torch.Tensor:
    """(B, F, D) → (B, F*(F-1)/2) in torch ops with the one-bmm backward; any device and dtype.

    Under autocast it runs as autocast runs ``bmm``: x cast to autocast's dtype, forward and backward in it
    (the backward, outside autocast, would otherwise meet a bf16 gradient with the saved fp32 x).
    """
    key = (x.shape[1], x.device)
    pairs = _PAIRS_CACHE.get(key)
    if pairs is None:
        pairs = _PAIRS_CACHE[key] = _pairs(x.shape[1], x.device)
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        with torch.autocast(kind, enabled=False):
            return _TorchDotInteraction.apply(x.to(torch.get_autocast_dtype(kind)), pairs)
    return _TorchDotInteraction.apply(x, pairs)


# ---- the native CPU kernel ------------------------------------------------------------------------

# One copy per scalar type: {T} the type, {I} the integer of its width, {L} lanes in a 64-byte
# vector (GCC lowers it to AVX-512, AVX2, SSE or NEON), {REDUCE4} the shuffle tree.
_SOURCE = r"""
#include <omp.h>
#include <stdlib.h>
#include <string.h>

typedef {T} vec_{T} __attribute__((vector_size(64)));
typedef {T} uvec_{T} __attribute__((vector_size(64), aligned(sizeof({T}))));
typedef {I} mask_{T} __attribute__((vector_size(64)));
#define LOAD_{T}(p) (*(const uvec_{T} *)(p))
#define STORE_{T}(p, v) (*(uvec_{T} *)(p) = (v))

/* The lane sums of four vectors into out[0..3]: halves, then quarters, then within a quarter. */
static inline void reduce4_{T}(vec_{T} a, vec_{T} b, vec_{T} c, vec_{T} d, {T} *out) {
{REDUCE4}
}

static inline {T} dot1_{T}(const {T} *a, const {T} *b, int D) {
  vec_{T} s = {0};
  int d = 0;
  for (; d + {L} <= D; d += {L}) s += LOAD_{T}(a + d) * LOAD_{T}(b + d);
  vec_{T} z = {0};
  {T} r[4];
  reduce4_{T}(s, z, z, z, r);
  for (; d < D; ++d) r[0] += a[d] * b[d];
  return r[0];
}

/* A sample's F vectors: vector 0 of sample b at first + b * first_stride, vectors 1..F-1 at
   rest + b * rest_stride + (i - 1) * D. One layout serves a (B, F, D) tensor (first = x,
   rest = x + D, both strides F * D) and DLRM's dense vector beside its (B, F - 1, D) pooled
   embeddings, with no copy into one tensor. */

/* out[b * out_stride + p] = <v_i, v_j> over pairs i < j row-major, rows b0 <= b < b1.
   Four pairs (i, j..j+3) share each load of v_i; a row's last group of four overlaps the one
   before it rather than falling back to single pairs. */
static void forward_rows_{T}(const {T} *first, long first_stride, const {T} *rest, long rest_stride,
                             {T} *out, long out_stride, long b0, long b1, int F, int D) {
  for (long b = b0; b < b1; ++b) {
    const {T} *fb = first + b * first_stride;
    const {T} *rb = rest + b * rest_stride - D;  /* rb + j * D is vector j >= 1 */
    {T} *ob = out + b * out_stride;
    for (int i = 0; i < F; ++i) {
      const {T} *xi = i == 0 ? fb : rb + (long)i * D;
      const int n = F - 1 - i;
      if (n < 4) {
        for (int j = i + 1; j < F; ++j) *ob++ = dot1_{T}(xi, rb + (long)j * D, D);
        continue;
      }
      for (int k = 0; k < n; k += 4) {
        if (k + 4 > n) k = n - 4;
        const {T} *xj = rb + (long)(i + 1 + k) * D;
        vec_{T} s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        int d = 0;
        for (; d + {L} <= D; d += {L}) {
          vec_{T} a = LOAD_{T}(xi + d);
          s0 += a * LOAD_{T}(xj + d);
          s1 += a * LOAD_{T}(xj + D + d);
          s2 += a * LOAD_{T}(xj + 2 * D + d);
          s3 += a * LOAD_{T}(xj + 3 * D + d);
        }
        {T} r[4];
        reduce4_{T}(s0, s1, s2, s3, r);
        for (; d < D; ++d) {
          r[0] += xi[d] * xj[d];
          r[1] += xi[d] * xj[D + d];
          r[2] += xi[d] * xj[2 * D + d];
          r[3] += xi[d] * xj[3 * D + d];
        }
        memcpy(ob + k, r, sizeof r);
      }
      ob += n;
    }
  }
}

/* dv[b] = (S + S^T) v[b] with S holding grad[b * grad_stride + p] at the pairs, rows b0 <= b < b1,
   written in the vectors' layout (dfirst, drest as first, rest): four rows of dv times four
   vectors of D in registers, one pass over v[b] per four rows. S is F x F scratch with its rows
   padded to a multiple of 4 by zeros. */
static void backward_rows_{T}(const {T} *grad, long grad_stride, const {T} *first, long first_stride,
                              const {T} *rest, long rest_stride, {T} *dfirst, long dfirst_stride, {T} *drest,
                              long drest_stride, long b0, long b1, int F, int D, {T} *S) {
  for (long b = b0; b < b1; ++b) {
    const {T} *gb = grad + b * grad_stride;
    const {T} *fb = first + b * first_stride, *rb = rest + b * rest_stride - D;
    {T} *dfb = dfirst + b * dfirst_stride, *drb = drest + b * drest_stride - D;
    long p = 0;
    for (int i = 0; i < F; ++i)
      for (int j = i + 1; j < F; ++j) S[i * F + j] = S[j * F + i] = gb[p++];
    int d0 = 0;
    for (; d0 + 4 * {L} <= D; d0 += 4 * {L}) {
      for (int i = 0; i < F; i += 4) {
        vec_{T} acc[4][4] = {{{0}}};
        for (int j = 0; j < F; ++j) {
          const {T} *xj = (j == 0 ? fb : rb + (long)j * D) + d0;
          const vec_{T} v0 = LOAD_{T}(xj), v1 = LOAD_{T}(xj + {L}),
                        v2 = LOAD_{T}(xj + 2 * {L}), v3 = LOAD_{T}(xj + 3 * {L});
          for (int r = 0; r < 4; ++r) {
            const {T} s = S[(i + r) * F + j];
            acc[r][0] += s * v0; acc[r][1] += s * v1; acc[r][2] += s * v2; acc[r][3] += s * v3;
          }
        }
        for (int r = 0; r < 4 && i + r < F; ++r) {
          {T} *o = (i + r == 0 ? dfb : drb + (long)(i + r) * D) + d0;
          STORE_{T}(o, acc[r][0]); STORE_{T}(o + {L}, acc[r][1]);
          STORE_{T}(o + 2 * {L}, acc[r][2]); STORE_{T}(o + 3 * {L}, acc[r][3]);
        }
      }
    }
    for (int i = 0; d0 < D && i < F; ++i) {
      {T} *di = i == 0 ? dfb : drb + (long)i * D;
      for (int d = d0; d < D; ++d) di[d] = 0;
      for (int j = 0; j < F; ++j) {
        const {T} s = S[i * F + j];
        const {T} *xj = j == 0 ? fb : rb + (long)j * D;
        for (int d = d0; d < D; ++d) di[d] += s * xj[d];
      }
    }
  }
}

/* The entry points split the B rows evenly over an OpenMP team of `threads`. */
void dot_forward_{T}(const {T} *first, long first_stride, const {T} *rest, long rest_stride, {T} *out,
                     long out_stride, long B, int F, int D, int threads) {
  #pragma omp parallel num_threads(threads)
  {
    const long t = omp_get_thread_num(), n = omp_get_num_threads();
    forward_rows_{T}(first, first_stride, rest, rest_stride, out, out_stride, B * t / n, B * (t + 1) / n, F, D);
  }
}

/* Returns 0, or -1 when a thread could not allocate its scratch. */
int dot_backward_{T}(const {T} *grad, long grad_stride, const {T} *first, long first_stride, const {T} *rest,
                     long rest_stride, {T} *dfirst, long dfirst_stride, {T} *drest, long drest_stride,
                     long B, int F, int D, int threads) {
  int failed = 0;
  #pragma omp parallel num_threads(threads)
  {
    const long t = omp_get_thread_num(), n = omp_get_num_threads();
    {T} *S = calloc((size_t)((F + 3) / 4 * 4) * F, sizeof({T}));
    if (S == NULL) {
      #pragma omp atomic write
      failed = 1;
    } else {
      backward_rows_{T}(grad, grad_stride, first, first_stride, rest, rest_stride, dfirst, dfirst_stride, drest,
                        drest_stride, B * t / n, B * (t + 1) / n, F, D, S);
      free(S);
    }
  }
  return failed ? -1 : 0;
}
"""


def _mask(name: str, lanes: list[int]) -> str:
    return f"  const mask_{{T}} {name} = {{{', '.join(map(str, lanes))}}};"


def _reduce4_body(lanes: int) -> str:
    """C statements: a..d (``lanes`` wide) → out[0..3], their lane sums, in log2(lanes) shuffle steps."""
    half, quarter = lanes // 2, lanes // 4
    lo1 = [*range(half), *range(lanes, lanes + half)]
    lo2 = [k for block in range(4) for k in range(block * half, block * half + quarter)]
    lines = [
        _mask("lo1", lo1), _mask("hi1", [k + half for k in lo1]),
        _mask("lo2", lo2), _mask("hi2", [k + quarter for k in lo2]),
        "  vec_{T} ab = __builtin_shuffle(a, b, lo1) + __builtin_shuffle(a, b, hi1);  /* a | b, halves */",
        "  vec_{T} cd = __builtin_shuffle(c, d, lo1) + __builtin_shuffle(c, d, hi1);",
        "  vec_{T} q = __builtin_shuffle(ab, cd, lo2) + __builtin_shuffle(ab, cd, hi2);  /* a | b | c | d */",
    ]
    step = quarter // 2
    while step:
        lines.append(_mask(f"swap{step}", [k ^ step for k in range(lanes)]))
        lines.append(f"  q += __builtin_shuffle(q, swap{step});")
        step //= 2
    lines.append("  " + " ".join(f"out[{k}] = q[{k * quarter}];" for k in range(4)))
    return "\n".join(lines)


def _source() -> str:
    parts = []
    for scalar, int_type, size in (("float", "int", 4), ("double", "long long", 8)):
        text = _SOURCE.replace("{REDUCE4}", _reduce4_body(64 // size))
        parts.append(text.replace("{T}", scalar).replace("{I}", int_type).replace("{L}", str(64 // size)))
    return "\n".join(parts)


# -fopenmp links libgomp.so.1; the loader reuses the one torch loaded, so the team is torch's pool.
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=gnu11", "-shared", "-fPIC"]
_KERNELS: dict[torch.dtype, str] = {torch.float32: "float", torch.float64: "double"}


def _cpu_flags() -> str:
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor()


def _build() -> ctypes.CDLL:
    """Compile (or reuse the cached) shared library; raises OSError or SubprocessError on failure."""
    compiler = os.environ.get("CC", "cc")
    source = _source()
    # -march=native code must never run on another CPU: the key holds the CPU's features.
    key = hashlib.sha256("\0".join([source, compiler, *_FLAGS, platform.machine(), _cpu_flags()]).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recsys" / "kernels"
    library = cache / f"interaction-{key.hexdigest()[:16]}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as work:
            (Path(work) / "interaction.c").write_text(source)
            subprocess.run([compiler, *_FLAGS, "interaction.c", "-o", "interaction.so"], cwd=work, check=True,
                           capture_output=True, timeout=120)
            os.replace(Path(work) / "interaction.so", library)  # atomic: concurrent builders all succeed
    lib = ctypes.CDLL(str(library))
    pointer, stride = ctypes.c_void_p, ctypes.c_long
    sizes = [ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_int]  # B, F, D, threads
    for scalar in _KERNELS.values():
        forward, backward = getattr(lib, f"dot_forward_{scalar}"), getattr(lib, f"dot_backward_{scalar}")
        forward.argtypes = [pointer, stride, pointer, stride, pointer, stride, *sizes]  # first, rest, out
        forward.restype = None
        backward.argtypes = [pointer, stride] * 5 + sizes  # grad, first, rest, dfirst, drest
        backward.restype = ctypes.c_int
    return lib


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_unavailable = False  # the build failed or is switched off; never retried in this process


def native_available() -> bool:
    """Whether the native kernel is (or can be) built here; builds it on the first call."""
    global _library, _unavailable
    with _lock:
        if _library is None and not _unavailable:
            if os.environ.get("RECSYS_NATIVE_KERNELS", "1") == "0" or platform.machine() not in ("x86_64", "aarch64"):
                _unavailable = True
            else:
                try:
                    _library = _build()
                except (OSError, subprocess.SubprocessError) as exc:
                    detail = getattr(exc, "stderr", b"") or b""
                    warnings.warn(f"kernels.interaction: native kernel unavailable ({exc} "
                                  f"{detail.decode(errors='replace')[-300:]}); using the torch path", stacklevel=3)
                    _unavailable = True
        return _library is not None


_MIN_ROWS_PER_THREAD = 64  # below this, waking a thread costs more than it saves


def _threads(batch: int) -> int:
    return max(1, min(torch.get_num_threads(), batch // _MIN_ROWS_PER_THREAD))


def _kernel(name: str, dtype: torch.dtype) -> Callable[..., int | None]:
    assert _library is not None
    return getattr(_library, f"dot_{name}_{_KERNELS[dtype]}")


def _at(tensor: torch.Tensor, offset: int) -> int:
    """Address of the element ``offset`` elements past the start of ``tensor``'s data."""
    return tensor.data_ptr() + offset * tensor.element_size()


class _NativeDotInteraction(torch.autograd.Function):
    """x (B, F, D) as one tensor: vector 0 at x[b, 0], vectors 1.. right after it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        batch, num_features, dim = x.shape
        ctx.save_for_backward(x)
        out = x.new_empty(batch, num_features * (num_features - 1) // 2)  # (B, P)
        row = num_features * dim
        _kernel("forward", x.dtype)(x.data_ptr(), row, _at(x, dim), row, out.data_ptr(), out.shape[1],
                                    batch, num_features, dim, _threads(batch))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        batch, num_features, dim = x.shape
        if grad.stride(1) != 1:
            grad = grad.contiguous()  # (B, P); rows may stay apart
        dx = torch.empty_like(x)  # (B, F, D)
        row = num_features * dim
        if _kernel("backward", x.dtype)(grad.data_ptr(), grad.stride(0), x.data_ptr(), row, _at(x, dim), row,
                                        dx.data_ptr(), row, _at(dx, dim), row, batch, num_features, dim,
                                        _threads(batch)):
            raise MemoryError("kernels.interaction: out of memory in the backward kernel")
        return dx


class _NativeDLRMInteraction(torch.autograd.Function):
    """dense (B, D) and sparse (B, S, D) where they lie; the output (B, D + P) is [dense | pairs]."""

    @staticmethod
    def forward(ctx, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        batch, num_sparse, dim = sparse.shape
        vectors = num_sparse + 1
        ctx.save_for_backward(dense, sparse)
        out = dense.new_empty(batch, dim + vectors * (vectors - 1) // 2)  # (B, D + P)
        out[:, :dim] = dense
        _kernel("forward", dense.dtype)(dense.data_ptr(), dense.stride(0), sparse.data_ptr(), sparse.stride(0),
                                        _at(out, dim), out.shape[1], batch, vectors, dim, _threads(batch))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        dense, sparse = ctx.saved_tensors
        batch, num_sparse, dim = sparse.shape
        if grad.stride(1) != 1:
            grad = grad.contiguous()  # (B, D + P)
        d_dense = torch.empty_like(dense, memory_format=torch.contiguous_format)  # (B, D)
        d_sparse = torch.empty_like(sparse, memory_format=torch.contiguous_format)  # (B, S, D)
        if _kernel("backward", dense.dtype)(_at(grad, dim), grad.stride(0), dense.data_ptr(), dense.stride(0),
                                            sparse.data_ptr(), sparse.stride(0), d_dense.data_ptr(), dim,
                                            d_sparse.data_ptr(), num_sparse * dim, batch, num_sparse + 1, dim,
                                            _threads(batch)):
            raise MemoryError("kernels.interaction: out of memory in the backward kernel")
        d_dense += grad[:, :dim]  # the dense vector also reaches the output directly
        return d_dense, d_sparse


def _native(*tensors: torch.Tensor) -> bool:
    """Whether the native kernel takes these tensors: fp32/fp64 CPU ones of one dtype, outside autocast (whose
    bf16 the torch path keeps)."""
    return (all(t.device.type == "cpu" and t.dtype in _KERNELS for t in tensors)
            and len({t.dtype for t in tensors}) == 1 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and native_available())


def dot_interaction(x: torch.Tensor) -> torch.Tensor:
    """(B, F, D) → (B, F*(F-1)/2): pairwise dot products, i < j, row-major; the fastest path for x."""
    if x.dim() == 3 and x.shape[1] >= 2 and _native(x):
        return _NativeDotInteraction.apply(x.contiguous())
    return torch_dot_interaction(x)


def reference_dlrm_interaction(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """The spec of ``dlrm_interaction``, as torchrec's ``InteractionArch`` computes it."""
    pairs = reference_dot_interaction(torch.cat([dense.unsqueeze(1), sparse], dim=1))  # (B, P)
    return torch.cat([dense, pairs], dim=1)  # (B, D + P)


def dlrm_interaction(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """(B, D), (B, S, D) → (B, D + P): DLRM's top-MLP input, the dense vector then the dot products of
    the S + 1 vectors [dense, sparse...] (i < j, row-major), as torchrec's ``InteractionArch``.

    The native path reads both inputs where they lie and writes one output: no (B, S+1, D) stack,
    no concatenation, and contiguous gradients for both inputs (the embedding backward would
    otherwise copy its slice of the stack's gradient).
    """
    if dense.dim() != 2 or sparse.dim() != 3 or dense.shape != (sparse.shape[0], sparse.shape[2]):
        raise ValueError(f"dlrm_interaction: dense (B, D) and sparse (B, S, D) expected, "
                         f"got {tuple(dense.shape)} and {tuple(sparse.shape)}")
    if _native(dense, sparse):
        dense = dense if dense.stride(1) == 1 else dense.contiguous()  # rows may stay apart
        sparse = sparse if sparse.stride()[1:] == (sparse.shape[2], 1) else sparse.contiguous()
        return _NativeDLRMInteraction.apply(dense, sparse)
    pairs = torch_dot_interaction(torch.cat([dense.unsqueeze(1), sparse], dim=1))  # (B, P)
    return torch.cat([dense, pairs], dim=1)  # (B, D + P)
