"""Shared fixtures: paths, the real CLI as a subprocess, the shared real data sets."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from recsys.system import cpu_share
from recsys.zygote import Zygote, ZygoteProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
FRESH_ENV = "RECSYS_TEST_FRESH"  # =1: every command in a fresh interpreter, none forked from the zygote
ZYGOTE = Zygote(REPO_ROOT, preload=("services.ranking.app",))  # one per pytest process, started at first use
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"

# Local state (the embedded Redis, the feature store's activation records) of this test run, never the
# user's ~/.local/state/recsys; tests that need a home of their own set RECSYS_HOME themselves.
if "RECSYS_HOME" not in os.environ:
    os.environ["RECSYS_HOME"] = tempfile.mkdtemp(prefix="recsys-tests-")
    atexit.register(shutil.rmtree, os.environ["RECSYS_HOME"], ignore_errors=True)


# Each xdist worker's share of the CPUs for OpenMP, in this process and every command it runs (before torch
# loads: libgomp reads it once): two workers of two threads each on two cores spin on each other's
# descheduled threads and run several times slower. Tests of the default thread policy unset it themselves.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(cpu_share(_WORKERS))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a ``long`` test first, then files by their number of tests (xdist's own order, which it
    keeps off in pyproject.toml): the longest work starts first and no worker ends alone on it. Each file's
    tests stay together and in order."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    order = sorted(files.values(), key=lambda tests: (not any(t.get_closest_marker("long") for t in tests),
                                                      -len(tests)))
    items[:] = [item for tests in order for item in tests]


def shared_dataset(relative: str) -> Path:
    """A file or folder under ../shared/datasets, or a clean skip when the checkout has none."""
    path = SHARED_DATASETS / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (the real data sets live in ../shared/datasets beside the repo)")
    return path


def _fresh(requested: bool = False) -> bool:
    """Whether to start a fresh interpreter instead of forking from the zygote."""
    return requested or os.environ.get(FRESH_ENV) == "1"


def run_cli(*args: str, cwd: Path = REPO_ROOT, timeout: float = 300, env: dict[str, str] | None = None,
            unset: tuple[str, ...] = (), fresh: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``recsys ARGS`` as a user would, in a process of its own (``env``: variables to add, ``unset``: to
    remove): forked from the pre-imported test zygote (recsys/zygote.py), or a fresh interpreter when ``fresh``
    or ``RECSYS_TEST_FRESH=1`` (for settings read at import)."""
    env = {**os.environ, "COLUMNS": "120", **(env or {})}
    for name in unset:
        env.pop(name, None)
    if _fresh(fresh):
        return subprocess.run([sys.executable, "-m", "recsys.cli.main", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    return ZYGOTE.run(list(args), cwd=cwd, env=env, timeout=timeout)


def run_python(code: str, *args: str, cwd: Path = REPO_ROOT, timeout: float = 300,
               env: dict[str, str] | None = None, fresh: bool = False, new_session: bool = False
               ) -> subprocess.CompletedProcess[str]:
    """``python -c CODE ARGS`` in a process that shares nothing with this one but imported modules (forked
    from the zygote; a fresh interpreter under ``RECSYS_TEST_FRESH=1``): what "a fresh process" means for a
    reloaded artifact. ``new_session``: as ``subprocess``'s ``start_new_session``."""
    env = {**os.environ, **(env or {})}
    if _fresh(fresh):
        return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout, start_new_session=new_session)
    return ZYGOTE.run(list(args), cwd=cwd, env=env, timeout=timeout, code=code, new_session=new_session)


def cli_process(args: list[str], *, env: dict[str, str], stdout: IO[bytes], cwd: Path = REPO_ROOT
                ) -> subprocess.Popen[bytes] | ZygoteProcess:
    """A long-running ``recsys ARGS`` (a server) writing stdout and stderr to ``stdout``; ``env`` is the whole
    environment. From the zygote, or a fresh interpreter under ``RECSYS_TEST_FRESH=1``."""
    if _fresh():
        return subprocess.Popen([sys.executable, "-m", "recsys.cli.main", *args], cwd=cwd, env=env,
                                stdout=stdout, stderr=subprocess.STDOUT)
    with open(os.devnull, "rb") as nothing:
        return ZYGOTE.popen(args, cwd=cwd, env=env, stdin=nothing, stdout=stdout, stderr=subprocess.STDOUT)


def train_cli(data: Path, out: Path, *settings: str, nproc: int = 1, extra: tuple[str, ...] = (),
              timeout: float = 600, model: str = "dlrm", env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """``recsys -q train --model MODEL`` with ``--set`` for each of ``settings``."""
    args = ["-q", "train", "--model", model, "--data", str(data), "--out", str(out), "--nproc", str(nproc)]
    for setting in ("trainer.progress=false", *settings):
        args += ["--set", setting]
    return run_cli(*args, *extra, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def small_ctr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12k-row synthetic CTR data set (9.6k train rows), shared by the training tests."""
    from recsys.data.pipeline import PrepareOptions
    from recsys.data.synth import CtrConfig, synth_ctr

    out = tmp_path_factory.mktemp("small_ctr") / "ctr"
    synth_ctr(CtrConfig(rows=12_000, seed=3), out, PrepareOptions(seed=3))
    return out


@pytest.fixture(scope="session")
def small_implicit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12k synthetic interactions of 400 users with 200 items (8 communities), identity-encoded, dim 16."""
    from recsys.data.pipeline import PrepareOptions
    from recsys.data.synth import ImplicitConfig, synth_implicit

    out = tmp_path_factory.mktemp("small_implicit") / "implicit"
    synth_implicit(ImplicitConfig(rows=12_000, seed=5, embedding_dim=16), out, PrepareOptions(seed=5))
    return out


@pytest.fixture(scope="module")
def contract_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Redis server (the embedded one) for a contract suite's served-over-HTTP tests."""
    from services.feature_store.embedded import EmbeddedRedis

    server = EmbeddedRedis.start(tmp_path_factory.mktemp("contract-redis"))
    yield server
    server.kill()
