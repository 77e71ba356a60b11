"""The dot interaction's fast paths against the spec: values and gradients, float32 and float64."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kernels import interaction
from kernels.interaction import (
    dlrm_interaction,
    dot_interaction,
    native_available,
    reference_dlrm_interaction,
    reference_dot_interaction,
    torch_dot_interaction,
)

# (B, F, D): the smallest pair, a one-wide vector, a batch one row past a thread split, widths that
# are not a multiple of the vector length, rows with fewer than four pairs, DLRM's Criteo shape.
SHAPES = [(1, 2, 1), (5, 2, 1), (3, 3, 7), (129, 5, 16), (17, 6, 33), (64, 9, 70), (2, 27, 64), (130, 27, 64)]
FAST_PATHS = {"dispatch": dot_interaction, "torch": torch_dot_interaction}


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


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dlrm_interaction_matches_reference(shape: tuple[int, int, int]) -> None:
    generator = torch.Generator().manual_seed(sum(shape) + 1)
    batch, features, dim = shape
    dense = torch.randn(batch, dim, generator=generator)
    sparse = torch.randn(batch, features - 1, dim, generator=generator)
    grad = torch.randn(batch, dim + features * (features - 1) // 2, generator=generator)
    fast = _values_and_grads(dlrm_interaction, [dense, sparse], grad)
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


def test_the_native_kernel_is_used_on_this_machine() -> None:
    if not native_available():
        pytest.skip("no C compiler here: the torch path runs (tested above)")
    x = torch.randn(4, 3, 8, requires_grad=True)
    assert type(dot_interaction(x).grad_fn).__name__ == "_NativeDotInteractionBackward"
    assert type(dlrm_interaction(x[:, 0], x[:, 1:]).grad_fn).__name__ == "_NativeDLRMInteractionBackward"


@pytest.mark.parametrize("path", FAST_PATHS)
def test_gradcheck_float64(path: str) -> None:
    x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FAST_PATHS[path], (x,))


def test_dlrm_interaction_gradcheck_float64() -> None:
    dense = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    sparse = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dlrm_interaction, (dense, sparse))


def test_without_a_compiler_the_torch_path_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(interaction, "_library", None)
    monkeypatch.setattr(interaction, "_unavailable", False)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: it must build
    with pytest.warns(UserWarning, match="native kernel unavailable"):
        assert not interaction.native_available()
    x = torch.randn(4, 3, 8)
    torch.testing.assert_close(dot_interaction(x), reference_dot_interaction(x))
    torch.testing.assert_close(dlrm_interaction(x[:, 0], x[:, 1:]), reference_dlrm_interaction(x[:, 0], x[:, 1:]))


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
