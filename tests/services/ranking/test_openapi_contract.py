"""The OpenAPI document agrees with the server: schemathesis runs every operation of /openapi.json against a real
`recsys serve`, and the document's `context` follows the model being served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.schema import Entity, Schema
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.redis_store import RedisFeatureStore
from tests.artifacts import rewrite
from tests.services.ranking.conftest import API_KEY, Server, start_server

ADMIN = {"X-API-Key": API_KEY}
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
          "negative_data_rejection"]


@pytest.fixture(scope="module")
def contract_server(store: RedisFeatureStore, redis: EmbeddedRedis, served_artifact: tuple[Path, Path],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of this module's own: schemathesis calls the admin endpoints with the key."""
    server = start_server(served_artifact[1], redis.url, tmp_path_factory.mktemp("contract") / "serve.log")
    yield server
    server.stop()


def _schemathesis(server: Server, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` over the server's /openapi.json: every phase (examples, coverage, fuzzing), positive
    and negative cases, at most 30 per operation, deterministic (no seed, no example database; run in a fresh
    ``workdir``, where it keeps the failures it found, to replay them first next time)."""
    return subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json", "--header",
         f"X-API-Key: {API_KEY}", "--max-examples", "30", "--generation-deterministic", "--workers", "1",
         "--suppress-health-check", "all", "--warnings", "off", "--no-color", *args],
        capture_output=True, text=True, timeout=600, cwd=workdir)


def test_every_operation_conforms_to_the_openapi_document(contract_server: Server, tmp_path: Path) -> None:
    """No 5xx; status codes, content types and bodies as documented; invalid requests refused (4xx). The admin
    operations run with the key."""
    result = _schemathesis(contract_server, tmp_path, "--checks", ",".join(CHECKS))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_what_the_document_allows_the_ranking_routes_accept(contract_server: Server, tmp_path: Path) -> None:
    """A request the document calls valid is not refused: any `context` it allows is one the model takes."""
    result = _schemathesis(contract_server, tmp_path, "--include-tag", "ranking", "--mode", "positive", "--checks",
                           ",".join([*CHECKS, "positive_data_acceptance"]))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_the_context_schema_is_the_served_models_and_follows_a_swap(contract_server: Server,
                                                                      served_artifact: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    model_schema = Schema.load(served_artifact[1] / "schema.json")
    with contract_server.client() as client:
        context = client.get("/openapi.json").json()["components"]["schemas"]["Context"]
        assert context["additionalProperties"] is False
        assert set(context["properties"]) == set(model_schema.features_of(Entity.CONTEXT))
        assert "array" not in json.dumps(context["properties"]["C3"])  # one value
        assert client.post("/v1/rank", json={"user_id": "1", "item_ids": ["1"], "k": 1.0}).status_code == 200

        # Another artifact whose C3 is multi-valued ("a|b"): the swapped-in model's document says so.
        artifact = tmp_path / "artifact"
        shutil.copytree(served_artifact[1], artifact)
        raw = json.loads((artifact / "schema.json").read_text())
        next(f for f in raw["sparse"] if f["name"] == "C3")["separator"] = "|"
        rewrite(artifact, "schema.json", json.dumps(raw).encode())
        reloaded = client.post("/admin/reload", json={"artifact": str(artifact)}, headers=ADMIN)
        assert reloaded.status_code == 200, reloaded.text
        try:
            swapped = client.get("/openapi.json").json()["components"]["schemas"]["Context"]
            assert "array" in json.dumps(swapped["properties"]["C3"])
            assert client.post("/v1/rank", json={"user_id": "1", "item_ids": ["1"],
                                                 "context": {"C3": ["a", "b"]}}).status_code == 200
        finally:
            assert client.post("/admin/rollback", headers=ADMIN).status_code == 200
        assert client.get("/openapi.json").json()["components"]["schemas"]["Context"] == context
