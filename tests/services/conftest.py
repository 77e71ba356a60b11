"""Fixtures shared by the service tests: a real redis-server, and a small trained artifact with its data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.feature_store.embedded import EmbeddedRedis
from tests.conftest import train_cli


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A fresh real redis-server of this test's own: ``.url``, ``.port``, ``.pid``, ``.kill()`` (SIGKILL),
    ``.stop(save=...)``, and ``.restart()`` on the same port and data directory."""
    server = EmbeddedRedis.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.kill()


@pytest.fixture(scope="session")
def served_artifact(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data_dir, artifact_dir): the 12k-row synthetic set and a DLRM trained on it for 10 steps."""
    out = tmp_path_factory.mktemp("served") / "run"
    result = train_cli(small_ctr, out, "trainer.max_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    return small_ctr, out / "artifact"
