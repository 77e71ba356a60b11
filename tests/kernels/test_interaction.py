"""The dot interaction's fast paths against the spec: values and gradients, float32 and float64."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernels import interaction
from kernels.interaction import dot_interaction, native_available, reference_dot_interaction, torch_dot_interaction

# (B, F, D): the smallest pair, a one-wide vector, a batch one row past a thread split, widths that
# are not a multiple of the vector length, a row with fewer than four pairs, and DLRM's Criteo shape.
SHAPES = [(1, 2, 1), (5, 2, 1), (3, 3, 7), (129, 5, 16), (17, 6, 33), (64, 9, 70), (2, 27, 64), (130, 27, 64)]
FAST_PATHS = {"dispatch": dot_interaction, "torch": torch_dot_interaction}


def _values_and_grads(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fast_path_matches_reference(path: str, shape: tuple[int, int, int]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    batch, features, dim = shape
    x = torch.randn(batch, features, dim, generator=generator)
    grad = torch.randn(batch, features * (features - 1) // 2, generator=generator)
    expected, expected_grad = _values_and_grads(reference_dot_interaction, x, grad)
    out, out_grad = _values_and_grads(FAST_PATHS[path], x, grad)
    assert out.shape == (batch, features * (features - 1) // 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * dim)
    torch.testing.assert_close(out_grad, expected_grad, rtol=1e-5, atol=1e-5 * features)


def test_pair_order_is_row_major_upper_triangle() -> None:
    x = torch.randn(2, 4, 3)
    out = dot_interaction(x)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = torch.stack([(x[:, i] * x[:, j]).sum(-1) for i, j in pairs], dim=1)
    torch.testing.assert_close(out, expected)


def test_strided_input_and_gradient() -> None:
    x = torch.randn(8, 16, 5).transpose(1, 2)  # (8, 5, 16), strided
    wide = torch.randn(8, 3 + 10 + 4)
    grad = wide[:, 3:13]  # (8, 10): rows apart, as DLRM's slice of the top MLP's input gradient
    expected, expected_grad = _values_and_grads(reference_dot_interaction, x, grad)
    out, out_grad = _values_and_grads(dot_interaction, x, grad)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out_grad, expected_grad)


def test_the_native_kernel_is_used_on_this_machine() -> None:
    if not native_available():
        pytest.skip("no C compiler here: dot_interaction runs the torch path (tested above)")
    x = torch.randn(4, 3, 8, requires_grad=True)
    assert type(dot_interaction(x).grad_fn).__name__ == "_NativeDotInteractionBackward"


@pytest.mark.parametrize("path", FAST_PATHS)
def test_gradcheck_float64(path: str) -> None:
    x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FAST_PATHS[path], (x,))


def test_without_a_compiler_the_torch_path_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(interaction, "_library", None)
    monkeypatch.setattr(interaction, "_unavailable", False)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: it must build
    with pytest.warns(UserWarning, match="native kernel unavailable"):
        assert not interaction.native_available()
    x = torch.randn(4, 3, 8)
    torch.testing.assert_close(interaction.dot_interaction(x), reference_dot_interaction(x))
