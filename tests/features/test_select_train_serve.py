"""The loop the issue asks for, as a user runs it: rank → select a pruned schema → train on it → materialise →
serve over real HTTP with a real Redis, and the served scores are the pruned model's offline scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.schema import Schema
from services.feature_store.embedded import EmbeddedRedis
from tests.conftest import run_cli, train_cli
from tests.features.conftest import planted_truth
from tests.services.ranking.conftest import offline_rows, start_server


@pytest.fixture(scope="module")
def selected(planted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("selected") / "schema.json"
    result = run_cli("features", "select", "--data", str(planted), "--method", "outrank", "--sample", "30000",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kept" in result.stdout and str(out) in result.stdout.replace("\n", "")
    return out


def test_rank_writes_json_and_markdown_with_redundancy_and_the_planted_score(planted: Path, tmp_path: Path) -> None:
    result = run_cli("features", "rank", "--data", str(planted), "--method", "outrank", "--sample", "30000",
                     "--out", str(tmp_path / "rank"))
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads((tmp_path / "rank" / "ranking.json").read_text())
    markdown = (tmp_path / "rank" / "ranking.md").read_text()
    truth = planted_truth(planted)
    assert {row["field"] for row in document["fields"]} >= set(truth["noise"]) | set(truth["informative"])
    assert [row["rank"] for row in document["fields"]] == list(range(1, len(document["fields"]) + 1))
    flagged = {frozenset((p["a"], p["b"])) for p in document["redundant_pairs"]}
    assert flagged == {frozenset(pair) for pair in truth["redundant"].items()}
    assert document["planted"]["precision_at_k"] > 0.8 and document["seconds"] > 0
    assert "| 1 |" in markdown and "## Redundant pairs" in markdown and "precision@" in markdown
    assert "hist_item_id" in document["kept_unranked"]


def test_selection_drops_the_noise_and_trains_and_serves(planted: Path, selected: Path, tmp_path: Path) -> None:
    truth = planted_truth(planted)
    schema = Schema.load(selected)
    kept = {f.name for f in [*schema.dense, *schema.sparse]}
    assert len(set(truth["noise"]) - kept) >= 0.8 * len(truth["noise"])
    run = tmp_path / "run"
    result = train_cli(planted, run, "trainer.max_steps=40", extra=("--schema", str(selected)))
    assert result.returncode == 0, result.stderr[-3000:]
    artifact = run / "artifact"
    assert Schema.load(artifact / "schema.json") == schema
    server_redis = EmbeddedRedis.start(tmp_path / "redis")
    try:
        env_url = server_redis.url
        materialised = run_cli("features", "materialize", "--data", str(planted), "--artifact", str(artifact),
                               env={"REDIS_URL": env_url})
        assert materialised.returncode == 0, materialised.stderr[-2000:]
        server = start_server(artifact, env_url, tmp_path / "serve.log")
        try:
            rows = offline_rows(planted, artifact, limit=20)
            assert len(rows) == 20
            with server.client() as client:
                for row in rows:
                    response = client.post("/v1/rank", json={"user_id": row.user_id, "item_ids": [row.item_id],
                                                             "k": 1, "context": row.context})
                    assert response.status_code == 200, response.text
                    assert abs(response.json()["items"][0]["score"] - row.score) < 1e-5
                dropped = sorted(set(truth["noise"]) - kept)[0]
                refused = client.post("/v1/rank", json={"user_id": rows[0].user_id, "item_ids": [rows[0].item_id],
                                                        "context": {dropped: 1}})
                assert refused.status_code == 422 and dropped in refused.text
        finally:
            server.stop()
    finally:
        server_redis.kill()


def test_a_schema_with_an_unknown_column_is_a_one_line_error(planted: Path, selected: Path, tmp_path: Path) -> None:
    document = json.loads(selected.read_text())
    document["sparse"].append({"name": "no_such_column", "entity": "user"})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    result = train_cli(planted, tmp_path / "run", "trainer.max_steps=2", extra=("--schema", str(bad)))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "no_such_column" in last and "is not a column of the data set" in last


@pytest.mark.parametrize(("args", "message"), [
    (("select", "--method", "outrank", "--keep", "500"), "--keep 500: larger than the"),
    (("select", "--method", "outrank", "--budget", "1000000000000"), "covers all"),
    (("rank", "--method", "outrank", "--fields", "C1,no_such"), "'no_such' is not a column"),
    (("rank", "--method", "no_such_method"), "unknown feature method"),
    (("rank", "--method", "outrank", "--option", "no_such=1"), "no_such"),
    (("generate", "--method", "outrank"), "does not generate"),
])
def test_bad_input_is_one_line(planted: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli("features", *args, "--data", str(planted), "--out", str(tmp_path / "out.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "out.json").exists()


def test_a_label_free_data_set_is_one_line(small_implicit: Path, tmp_path: Path) -> None:
    result = run_cli("features", "rank", "--data", str(small_implicit), "--method", "outrank", "--out", str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "has no label" in result.stderr
