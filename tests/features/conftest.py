"""A planted synthetic data set shared by the feature-method tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60k rows of the ctr generator with 24 noise fields, 6 redundant copies and the planted cross."""
    from recsys.data.pipeline import PrepareOptions
    from recsys.data.synth import CtrConfig, synth_ctr

    out = tmp_path_factory.mktemp("planted") / "ctr"
    synth_ctr(CtrConfig(rows=60_000, seed=11, noise_fields=24, redundant_fields=6, planted_cross=True), out,
              PrepareOptions(seed=11))
    return out


def planted_truth(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "stats.json").read_text())["planted"]
