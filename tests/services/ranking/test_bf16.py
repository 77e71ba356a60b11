"""``recsys serve --precision bf16`` over real uvicorn: fp32 tables, the dense forward under bf16 autocast, float32
scores close to fp32's; refused in one line on a CPU without native bf16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recsys import precision
from recsys.errors import RecsysError
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.redis_store import RedisFeatureStore
from services.ranking.served import ServedModel
from tests.conftest import run_cli
from tests.services.ranking.conftest import OfflineRow, Server, start_server

NATIVE = precision.bf16_supported(torch.device("cpu"))
# Largest |score − fp32 score| allowed (scores are click probabilities). Measured on DLRMs of small_ctr trained
# 10 and 37 steps, over the whole test split: 9.0e-4 and 1.0e-3 (mean 2.9e-4). Bound: about 6x that.
BOUND = 6e-3


def _scores(payload: dict[str, Any]) -> dict[str, float]:
    return {item["item_id"]: item["score"] for item in payload["items"]}


def _bodies(offline: list[OfflineRow], users: int = 10, items: int = 40) -> list[dict[str, Any]]:
    return [{"user_id": row.user_id, "item_ids": [r.item_id for r in offline[:items]], "k": items,
             "context": row.context} for row in offline[:users]]


@pytest.mark.skipif(not NATIVE, reason="this CPU lacks native bf16 (avx512_bf16/amx_bf16): `recsys serve "
                    "--precision bf16` refuses it")
def test_bf16_scores_are_float32_and_close_to_fp32(server: Server, store: RedisFeatureStore, redis: EmbeddedRedis,
                                                   served_artifact: tuple[Path, Path], offline: list[OfflineRow],
                                                   tmp_path: Path) -> None:
    _, artifact_dir = served_artifact
    bodies = _bodies(offline)
    with server.client() as client:
        fp32 = [_scores(client.post("/v1/rank", json=body).json()) for body in bodies]
    bf16_server = start_server(artifact_dir, redis.url, tmp_path / "serve.log", "--precision", "bf16",
                               "--max-candidates", "600")
    try:
        with bf16_server.client() as client:
            assert client.get("/readyz").json()["precision"] == "bf16"
            bf16 = [_scores(client.post("/v1/rank", json=body).json()) for body in bodies]
    finally:
        bf16_server.stop()
    errors = np.array([abs(b[i] - a[i]) for a, b in zip(fp32, bf16, strict=True) for i in a])
    print(f"DLRM bf16 vs fp32 |score difference|: mean {errors.mean():.2e}, max {errors.max():.2e}")
    assert 0 < errors.max() < BOUND  # computed in bf16, and close
    scores = torch.tensor([s for row in bf16 for s in row.values()], dtype=torch.float64)
    off_bf16_grid = (scores - scores.to(torch.bfloat16).double()).abs() > 1e-5 * scores.abs()
    assert bool(off_bf16_grid.any())  # float32 scores, not bf16-rounded ones (bf16's spacing is 2^-8 relative)


@pytest.mark.skipif(NATIVE, reason="this CPU has native bf16: nothing is refused")
def test_bf16_is_refused_in_one_line_on_a_cpu_without_it(served_artifact: tuple[Path, Path]) -> None:
    _, artifact_dir = served_artifact
    result = run_cli("serve", "--artifact", str(artifact_dir), "--precision", "bf16", "--port", "0", timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "lacks native bf16" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(RecsysError, match="lacks native bf16"):  # what an /admin/reload to bf16 meets
        ServedModel.load(artifact_dir, "bf16")
