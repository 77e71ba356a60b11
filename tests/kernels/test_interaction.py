"""The dot interaction against its spec, as the ``recsys::`` ops (native kernel inside) and as the torch path.

The native kernel must build wherever there is a C++ compiler and ninja: a machine without them fails
``test_the_native_kernel_is_built_here`` and the other tests marked with the ``native`` fixture.
``RECSYS_NATIVE_KERNELS=0`` opts out explicitly; those tests then skip. The ops run it here even where it is
not the default (``native_preferred``: x86 without AVX-512), so every machine tests it; the torch path is
tested on its own, through ``torch_*`` and in fresh interpreters that opt out.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from kernels import interaction
from kernels.interaction import (
    dlrm_interaction,
    dot_interaction,
    native_available,
    reference_dlrm_interaction,
    reference_dot_interaction,
    torch_dlrm_interaction,
    torch_dot_interaction,
)
from recsys.config import EmbeddingConfig
from recsys.models import build_model
from tests.conftest import REPO_ROOT
from tests.models.schemas import small_schema, three_rows

# (B, F, D): the smallest pair, a one-wide vector, a batch one row past a thread split, widths that
# are not a multiple of the vector length, rows with fewer than four pairs, DLRM's Criteo shape.
SHAPES = [(1, 2, 1), (5, 2, 1), (3, 3, 7), (129, 5, 16), (17, 6, 33), (64, 9, 70), (2, 27, 64), (130, 27, 64)]
FAST_PATHS = {"op": dot_interaction, "torch": torch_dot_interaction}
DLRM_PATHS = {"op": dlrm_interaction, "torch": torch_dlrm_interaction}
OPTED_OUT = os.environ.get("RECSYS_NATIVE_KERNELS") == "0"


@pytest.fixture(autouse=True, scope="module")
def _ops_run_the_native_kernel() -> Iterator[None]:
    """The ops' "op" paths below test the kernel even where the torch path is the default."""
    interaction.use_native(None if OPTED_OUT else True)
    yield
    interaction.use_native(None)


@pytest.fixture
def native() -> None:
    """The native kernel, built (or loaded from the cache) in this process; fails where it cannot build."""
    if OPTED_OUT:
        pytest.skip("RECSYS_NATIVE_KERNELS=0: the torch path was chosen explicitly")
    assert native_available(), ("the native interaction kernel did not build (it needs a C++ compiler and "
                                "ninja; see the warning above); set RECSYS_NATIVE_KERNELS=0 to opt out")


def _values_and_grads(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor],
                      grad: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad)
    return out.detach(), [leaf.grad for leaf in leaves]


def _assert_same(fast: tuple[torch.Tensor, list[torch.Tensor]], spec: tuple[torch.Tensor, list[torch.Tensor]],
                 dim: int, features: int) -> None:
    torch.testing.assert_close(fast[0], spec[0], rtol=1e-5, atol=1e-5 * dim)
    for got, expected in zip(fast[1], spec[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * features)


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dot_interaction_matches_reference(path: str, shape: tuple[int, int, int]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    batch, features, dim = shape
    x = torch.randn(batch, features, dim, generator=generator)
    grad = torch.randn(batch, features * (features - 1) // 2, generator=generator)
    fast = _values_and_grads(FAST_PATHS[path], [x], grad)
    assert fast[0].shape == (batch, features * (features - 1) // 2)
    _assert_same(fast, _values_and_grads(reference_dot_interaction, [x], grad), dim, features)


@pytest.mark.parametrize("path", DLRM_PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dlrm_interaction_matches_reference(path: str, shape: tuple[int, int, int]) -> None:
    generator = torch.Generator().manual_seed(sum(shape) + 1)
    batch, features, dim = shape
    dense = torch.randn(batch, dim, generator=generator)
    sparse = torch.randn(batch, features - 1, dim, generator=generator)
    grad = torch.randn(batch, dim + features * (features - 1) // 2, generator=generator)
    fast = _values_and_grads(DLRM_PATHS[path], [dense, sparse], grad)
    _assert_same(fast, _values_and_grads(reference_dlrm_interaction, [dense, sparse], grad), dim, features)


def test_pair_order_is_row_major_upper_triangle() -> None:
    x = torch.randn(2, 4, 3)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = torch.stack([(x[:, i] * x[:, j]).sum(-1) for i, j in pairs], dim=1)
    torch.testing.assert_close(dot_interaction(x), expected)
    torch.testing.assert_close(dlrm_interaction(x[:, 0], x[:, 1:]), torch.cat([x[:, 0], expected], dim=1))


def test_strided_inputs_and_gradients() -> None:
    x = torch.randn(8, 16, 5).transpose(1, 2)  # (8, 5, 16), strided
    grad = torch.randn(8, 3 + 10 + 4)[:, 3:13]  # (8, 10), rows apart: a slice of a wider gradient
    _assert_same(_values_and_grads(dot_interaction, [x], grad),
                 _values_and_grads(reference_dot_interaction, [x], grad), 16, 5)
    wide = torch.randn(8, 40)
    dense, sparse = wide[:, 3:19], torch.randn(8, 16, 4).transpose(1, 2)  # rows apart; (8, 4, 16) strided
    grad = torch.randn(8, 16 + 10)
    _assert_same(_values_and_grads(dlrm_interaction, [dense, sparse], grad),
                 _values_and_grads(reference_dlrm_interaction, [dense, sparse], grad), 16, 5)


def test_dlrm_interaction_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="dense \\(B, D\\) and sparse \\(B, S, D\\)"):
        dlrm_interaction(torch.randn(4, 8), torch.randn(5, 3, 8))
    with pytest.raises(ValueError):
        dlrm_interaction(torch.randn(4, 8), torch.randn(4, 3, 7))


def test_mixed_dtypes_promote_as_torch_cat_does() -> None:
    dense = torch.randn(4, 8, requires_grad=True)
    sparse = torch.randn(4, 3, 8, dtype=torch.float64, requires_grad=True)
    out = dlrm_interaction(dense, sparse)
    torch.testing.assert_close(out, reference_dlrm_interaction(dense.double(), sparse))
    out.sum().backward()
    assert (dense.grad.dtype, sparse.grad.dtype) == (torch.float32, torch.float64)


@pytest.mark.parametrize("path", FAST_PATHS)
def test_gradcheck_float64(path: str) -> None:
    x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FAST_PATHS[path], (x,))


@pytest.mark.parametrize("path", DLRM_PATHS)
def test_dlrm_interaction_gradcheck_float64(path: str) -> None:
    dense = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    sparse = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(DLRM_PATHS[path], (dense, sparse))




def test_the_native_kernel_is_built_here(native: None) -> None:
    x = torch.randn(70, 6, 20)
    dense, sparse = x[:, 0], x[:, 1:]
    # the ops run it: bit for bit the kernel's own output
    assert torch.equal(dot_interaction(x), torch.ops.recsys_kernels.dot_forward(x))
    assert torch.equal(dlrm_interaction(dense, sparse), torch.ops.recsys_kernels.dlrm_forward(dense, sparse))


# each op's arguments as (shape, requires_grad): 70 rows are two threads' worth; D = 20 is no multiple of the
# vector length
OP_ARGS = {
    "dot_interaction": [((70, 6, 20), True)],
    "dot_interaction_backward": [((70, 15), False), ((70, 6, 20), False)],
    "dlrm_interaction": [((70, 20), True), ((70, 5, 20), True)],
    "dlrm_interaction_backward": [((70, 35), False), ((70, 20), False), ((70, 5, 20), False)],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", OP_ARGS)
def test_opcheck(name: str, dtype: torch.dtype) -> None:
    """Schema, fake kernel, autograd registration and AOT dispatch of each op agree with its real kernel."""
    args = tuple(torch.randn(*shape, dtype=dtype, requires_grad=grad) for shape, grad in OP_ARGS[name])
    results = torch.library.opcheck(getattr(torch.ops.recsys, name).default, args)
    assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("dense", [3, 0])
def test_fx_trace_of_dlrm_shows_the_op(dense: int) -> None:
    """torchrec's pipeline tracer and torch.compile see one op node, not a Python function to wrap."""
    schema = small_schema(dense)
    model = build_model("dlrm", schema, {"bottom_mlp": [8, 4], "top_mlp": [8, 1]}, EmbeddingConfig())
    traced = torch.fx.symbolic_trace(model)
    targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    op = torch.ops.recsys.dlrm_interaction if dense else torch.ops.recsys.dot_interaction
    assert targets.count(op) == 1, targets
    batch = three_rows(schema)
    torch.testing.assert_close(traced(batch), model(batch))


class _Interactions(nn.Module):
    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return dlrm_interaction(dense, sparse).sum(1) + dot_interaction(sparse).square().sum(1)  # (B,)


@pytest.mark.slow
def test_torch_compile_fullgraph_keeps_the_ops() -> None:
    from torch._inductor.compile_fx import compile_fx

    graphs: list[torch.fx.GraphModule] = []

    def inductor_recording(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., object]:
        graphs.append(graph)
        return compile_fx(graph, example_inputs)

    module = _Interactions()
    compiled = torch.compile(module, fullgraph=True, backend=inductor_recording)
    dense, sparse = torch.randn(70, 16), torch.randn(70, 5, 16)
    grad = torch.randn(70)
    eager = _values_and_grads(module, [dense, sparse], grad)
    _assert_same(_values_and_grads(compiled, [dense, sparse], grad), eager, 16, 6)
    targets = {node.target for graph in graphs for node in graph.graph.nodes if node.op == "call_function"}
    assert {torch.ops.recsys.dlrm_interaction, torch.ops.recsys.dot_interaction} <= targets, targets


# ---- the build: fresh interpreters, as a user's processes --------------------------------------------------

_CHILD = """
import sys, time
from pathlib import Path
import torch
from kernels import interaction

ready, children = Path(sys.argv[1]), int(sys.argv[2])
ready.touch()
deadline = time.monotonic() + 300
while len(list(ready.parent.glob("ready-*"))) < children:  # every child started: their builds overlap
    assert time.monotonic() < deadline, "the other child never started"
    time.sleep(0.05)
assert interaction.native_available()
x = torch.randn(33, 6, 20, dtype=torch.float64)
torch.testing.assert_close(interaction.dot_interaction(x), interaction.reference_dot_interaction(x))
assert torch.equal(interaction.dot_interaction(x), torch.ops.recsys_kernels.dot_forward(x))
print("native ok")
"""


def _children(count: int, work: Path, env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """``count`` interpreters running _CHILD at once."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "RECSYS_NATIVE_KERNELS": "1", **env}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(work / f"ready-{i}"), str(count)], cwd=REPO_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(count)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _compiles(build_dir: Path) -> int:
    """Times ninja compiled the source in ``build_dir`` (its log keeps one line per command run)."""
    log = build_dir / ".ninja_log"
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(line.split("\t")[3] == "interaction.o" for line in lines if not line.startswith("#"))


def _library(build_dir: Path) -> Path:
    (library,) = build_dir.glob("*.so")
    return library


def test_a_second_process_reuses_the_cached_build(native: None, tmp_path: Path) -> None:
    build_dir = interaction.native_build_dir()
    library, compiles = _library(build_dir), _compiles(build_dir)
    stamp = library.stat().st_mtime_ns
    (child,) = _children(1, tmp_path, {})
    assert child.returncode == 0 and "native ok" in child.stdout, child.stderr[-3000:]
    assert _compiles(build_dir) == compiles and library.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_concurrent_first_builds_compile_once(native: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes meet an empty cache at once (and a baton a killed builder left): one compiles, both load."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    build_dir = interaction.native_build_dir()
    build_dir.mkdir(parents=True)
    (build_dir / "lock").touch()  # torch's baton file: alone, it makes cpp_extension wait forever
    for child in _children(2, tmp_path, {"XDG_CACHE_HOME": str(cache)}):
        assert child.returncode == 0 and "native ok" in child.stdout, child.stderr[-3000:]
    assert _compiles(build_dir) == 1
    stamp = _library(build_dir).stat().st_mtime_ns
    (again,) = _children(1, tmp_path, {"XDG_CACHE_HOME": str(cache)})
    assert again.returncode == 0 and "native ok" in again.stdout, again.stderr[-3000:]
    assert _compiles(build_dir) == 1 and _library(build_dir).stat().st_mtime_ns == stamp


_TORCH_PATH_CHILD = """
import warnings
import torch
from kernels import interaction

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    available = interaction.native_available()
print("available", available, "|", " ".join(str(w.message) for w in caught if "kernels.interaction" in str(w.message)))
x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
dense, sparse = x[:, 0].detach().requires_grad_(), x[:, 1:].detach().requires_grad_()
assert torch.autograd.gradcheck(interaction.dot_interaction, (x,))
assert torch.autograd.gradcheck(interaction.dlrm_interaction, (dense, sparse))
torch.testing.assert_close(interaction.dot_interaction(x), interaction.reference_dot_interaction(x))
torch.testing.assert_close(interaction.dlrm_interaction(dense, sparse),
                           interaction.reference_dlrm_interaction(dense, sparse))
print("torch path ok")
"""


def _torch_path_child(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _TORCH_PATH_CHILD], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **env},
                          timeout=600)


def test_the_opt_out_selects_the_torch_path_without_a_build(tmp_path: Path) -> None:
    child = _torch_path_child({"RECSYS_NATIVE_KERNELS": "0", "XDG_CACHE_HOME": str(tmp_path)})
    assert child.returncode == 0 and "torch path ok" in child.stdout, child.stderr[-3000:]
    assert "available False | \n" in child.stdout  # no warning: the choice was explicit
    assert not (tmp_path / "recsys").exists()


def test_without_a_compiler_the_ops_warn_and_run_the_torch_path(tmp_path: Path) -> None:
    child = _torch_path_child({"CXX": str(tmp_path / "no-such-compiler"), "XDG_CACHE_HOME": str(tmp_path)})
    assert child.returncode == 0 and "torch path ok" in child.stdout, child.stderr[-3000:]
    assert "available False | kernels.interaction: native kernel unavailable" in child.stdout


def test_under_bf16_autocast_it_runs_as_the_spec_does() -> None:
    """Under autocast (trainer.precision=bf16) DLRM meets a bf16 dense vector beside fp32 embeddings: the pairs
    come out bf16 like the spec's bmm, with the spec's values, and each input gets a gradient of its own dtype."""
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(33, 16, generator=generator).bfloat16()
    sparse = torch.randn(33, 5, 16, generator=generator)
    grad = torch.randn(33, 16 + 15, generator=generator).bfloat16()

    def forward_autocast(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def run(*inputs: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):  # the backward runs outside, as in training
                return fn(*inputs)
        return run

    fast = _values_and_grads(forward_autocast(dlrm_interaction), [dense, sparse], grad)
    spec = _values_and_grads(forward_autocast(reference_dlrm_interaction), [dense, sparse], grad)
    assert fast[0].dtype == spec[0].dtype == torch.bfloat16
    assert [g.dtype for g in fast[1]] == [torch.bfloat16, torch.float32]
    torch.testing.assert_close(fast[0], spec[0], rtol=1e-2, atol=1e-2)
    for got, expected in zip(fast[1], spec[1], strict=True):
        torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=5e-2)


def test_the_default_is_the_kernel_where_it_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_NATIVE_KERNELS", raising=False)
    capability = torch.backends.cpu.get_cpu_capability()
    expected = capability.startswith("AVX512") if platform.machine() == "x86_64" else platform.machine() == "aarch64"
    assert interaction.native_preferred() is expected
    monkeypatch.setenv("RECSYS_NATIVE_KERNELS", "1")
    assert interaction.native_preferred() is True
    monkeypatch.setenv("RECSYS_NATIVE_KERNELS", "0")
    assert interaction.native_preferred() is False
