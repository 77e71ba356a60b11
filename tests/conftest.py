"""Shared fixtures: paths, the real CLI as a subprocess, the shared real data sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def shared_dataset(relative: str) -> Path:
    """A file or folder under ../shared/datasets, or a clean skip when the checkout has none."""
    path = SHARED_DATASETS / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (the real data sets live in ../shared/datasets beside the repo)")
    return path


def run_cli(*args: str, cwd: Path = REPO_ROOT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``recsys ARGS`` as a user would, in a fresh interpreter."""
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "recsys.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
