"""`recsys serve` with a bad artifact or store prefix: one `error:` line and exit 2 before uvicorn starts, not a
traceback from inside the workers' startup."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from services.feature_store.embedded import EmbeddedRedis
from tests.artifacts import edit_weights, rewrite
from tests.conftest import run_cli

GARBAGE = bytes(range(256)) * 20


def _weights(artifact: Path) -> None:
    rewrite(artifact, "weights.safetensors", GARBAGE)


def _vocabulary(artifact: Path) -> None:
    rewrite(artifact, "vocab/C3.parquet", GARBAGE)  # a context feature's table: read at load


def _config(artifact: Path) -> None:
    rewrite(artifact, "config.yaml", b"model: [unclosed\n")


def _shapes(artifact: Path) -> None:
    # Weights of another architecture: the first MLP layer 32 wide where the config builds 64.
    layer = "dense_arch.model._mlp.0._linear.weight"
    edit_weights(artifact, lambda state: state.update({layer: state[layer][:32]}))


BREAK: dict[str, tuple[Callable[[Path], None], str]] = {
    "unreadable weights": (_weights, "weights.safetensors"),
    "unreadable vocabulary": (_vocabulary, "C3.parquet"),
    "invalid config": (_config, "config.yaml"),
    "shape mismatch": (_shapes, "weights.safetensors"),
}


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("fault", list(BREAK))
def test_a_broken_artifact_is_one_line(fault: str, served_artifact: tuple[Path, Path], redis: EmbeddedRedis,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(served_artifact[1], artifact)
    breaks, named = BREAK[fault]
    breaks(artifact)
    monkeypatch.setenv("REDIS_URL", redis.url)  # a server that started anyway would start no embedded Redis
    result = run_cli("serve", "--artifact", str(artifact), "--port", "0", timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert named in _one_error_line(result.stderr)


def test_a_bad_redis_prefix_is_one_line(served_artifact: tuple[Path, Path], redis: EmbeddedRedis,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis.url)
    result = run_cli("serve", "--artifact", str(served_artifact[1]), "--port", "0", "--redis-prefix", "has space",
                     timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "prefix 'has space'" in _one_error_line(result.stderr)
