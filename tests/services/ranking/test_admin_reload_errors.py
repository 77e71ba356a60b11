"""``POST /admin/reload`` of an artifact that cannot be loaded answers 4xx with the reason, on a connection that
stays open, and the service keeps serving the model it had."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import torch

from tests.artifacts import edit_weights, unsealed_copy
from tests.services.ranking.conftest import API_KEY, OfflineRow, Server

ADMIN = {"X-API-Key": API_KEY}
TABLE = "sparse_arch.ebc.embedding_bags.C1.weight"


def _binary_schema(artifact: Path) -> Path:
    (artifact / "schema.json").write_bytes(bytes(range(256)) * 4)
    return artifact


def _fewer_rows(state: dict[str, torch.Tensor]) -> None:
    state[TABLE] = state[TABLE][:-1].clone()


def _nan(state: dict[str, torch.Tensor]) -> None:
    state[TABLE][0, 0] = float("nan")


def _local_port(response: httpx.Response) -> int:
    """The client's end of the TCP connection the response came on."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_unloadable_artifacts_are_4xx_on_a_kept_connection(server: Server, served_artifact: tuple[Path, Path],
                                                          offline: list[OfflineRow], tmp_path: Path) -> None:
    _, served = served_artifact
    cases = {
        "a name too long for the file system": (f"/{'a' * 300}/artifact", "File name too long"),
        "weights of other shapes": (edit_weights(shutil.copytree(served, tmp_path / "a"), _fewer_rows, resealed=False),
                                    "weights.safetensors: changed after export"),
        "weights of other shapes, no digests": (edit_weights(unsealed_copy(served, tmp_path / "b"), _fewer_rows),
                                                f"'{TABLE}' has shape"),
        "a binary schema.json": (_binary_schema(shutil.copytree(served, tmp_path / "c")), "schema.json: changed after export"),
        "a binary schema.json, no digests": (_binary_schema(unsealed_copy(served, tmp_path / "d")),
                                             "schema.json: not valid text: not UTF-8"),
        "NaN weights": (edit_weights(shutil.copytree(served, tmp_path / "e"), _nan), "NaN or infinite"),
    }
    row = offline[0]
    rank = {"user_id": row.user_id, "item_ids": [r.item_id for r in offline[:5]], "context": row.context}
    with server.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        serving, port = ready.json()["model_version"], _local_port(ready)
        for case, (artifact, reason) in cases.items():
            refused = client.post("/admin/reload", json={"artifact": str(artifact)}, headers=ADMIN)
            assert refused.status_code == 400, (case, refused.status_code, refused.text)
            assert reason in refused.json()["detail"], (case, refused.text)
            assert refused.headers.get("connection", "keep-alive").lower() != "close", case
            ranked = client.post("/v1/rank", json=rank)
            assert ranked.status_code == 200 and ranked.json()["model_version"] == serving, (case, ranked.text)
            assert _local_port(ranked) == port, f"{case}: the connection was dropped"
