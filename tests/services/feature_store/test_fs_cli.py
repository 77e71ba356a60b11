"""`recsys features materialize` then `recsys features upsert`, as separate processes on the embedded Redis and on
a Redis Cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data.layout import split_files
from recsys.schema import Entity, Schema
from services.feature_store.codec import RecordCodec
from services.feature_store.embedded import open_store
from services.feature_store.local_cluster import LocalRedisCluster
from services.feature_store.redis_store import RedisFeatureStore
from tests.conftest import run_cli


def _features(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("features", *args, env={"RECSYS_HOME": str(home), "COLUMNS": "200"}, unset=("REDIS_URL",),
                   timeout=120)


def test_materialize_then_upsert_in_separate_processes(served_artifact: tuple[Path, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, artifact_dir = served_artifact
    home = tmp_path / "home"
    done = _features(home, "materialize", "--data", str(data_dir), "--artifact", str(artifact_dir),
                     "--version", "cli1", "--popular-k", "20", "--chunk-rows", "500")
    assert done.returncode == 0, done.stderr
    assert "Materialised version cli1" in done.stdout and "is now active" in done.stdout
    assert (home / "redis" / "dump.rdb").is_file() and not (home / "redis" / "server.json").exists()

    train = pl.read_parquet(split_files(data_dir, "train")[0], columns=["user_key", "item_key", "item_id"])
    user, item, item_index = train.row(0)
    upserted = _features(home, "upsert", "--artifact", str(artifact_dir), "--user", user, "--event", item)
    assert upserted.returncode == 0, upserted.stderr
    assert f"user '{user}': appended item '{item}' in version cli1" in upserted.stdout

    failed = _features(home, "upsert", "--artifact", str(artifact_dir), "--user", user, "--event", "no-such-item")
    assert failed.returncode == 2
    assert "error: item 'no-such-item': not in the feature store" in failed.stderr
    assert "Traceback" not in failed.stderr
    usage = _features(home, "upsert", "--artifact", str(artifact_dir), "--item", item, "--event", user)
    assert usage.returncode == 2 and "--event ITEM_ID needs --user" in usage.stderr

    monkeypatch.setenv("RECSYS_HOME", str(home))  # a third process's view: the data came back from dump.rdb
    monkeypatch.delenv("REDIS_URL", raising=False)
    with open_store() as store:
        assert store.active_version() == "cli1"
        assert store.seen(user)[0] == item
        schema = Schema.load(artifact_dir / "schema.json")
        codec = RecordCodec(schema, Entity.USER)
        _, ids = codec.decode(store.get_users([user])[0])
        assert ids[codec.keys.index("hist_item_id")][0] == item_index
        assert len(store.popular(100)[1]) == 20


def test_upsert_refuses_blank_ids_and_non_finite_numbers(served_artifact: tuple[Path, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, artifact_dir = served_artifact
    home = tmp_path / "home"
    done = _features(home, "materialize", "--data", str(data_dir), "--artifact", str(artifact_dir),
                     "--version", "v1", "--chunk-rows", "2000")
    assert done.returncode == 0, done.stderr
    train = pl.read_parquet(split_files(data_dir, "train")[0], columns=["user_key", "item_key", "I5"])
    user, item, i5 = train.row(0)

    def refused(*args: str) -> str:
        result = _features(home, "upsert", "--artifact", str(artifact_dir), *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]  # after the embedded server's start-up line, if any
        assert last.startswith("error: "), (args, result.stderr)
        return last

    # prepare never keeps an empty or blank key, so such a record could never be served
    assert "--user '': an id may not be empty or blank" in refused("--user", "", "--event", item)
    assert "--user '  ': an id may not be empty or blank" in refused("--user", "  ", "--event", item)
    assert "--item '': an id may not be empty or blank" in refused("--item", "", "--set", "I5=1")
    assert "--event '\\t': an id may not be empty or blank" in refused("--user", user, "--event", "\t")
    # JSON reads 1e400 as inf; NaN and Infinity are Python's JSON extensions; a 401-digit int overflows a float
    for raw in ("1e400", "-1e400", "NaN", "Infinity", "1" + "0" * 400):
        assert refused("--item", item, "--set", f"I5={raw}").startswith("error: feature 'I5': ")

    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.delenv("REDIS_URL", raising=False)
    with open_store() as store:
        assert store.get_users([""]) == [None] and store.get_items([""]) == [None]
        codec = RecordCodec(Schema.load(artifact_dir / "schema.json"), Entity.ITEM)
        dense, _ = codec.decode(store.get_items([item])[0])
        position = [f.name for f in codec.dense_features].index("I5")
        assert dense[position] == np.float32(i5)  # as materialised


def test_materialize_upsert_and_versions_on_a_redis_cluster(served_artifact: tuple[Path, Path], tmp_path: Path,
                                                           fs_cluster: LocalRedisCluster) -> None:
    """The same commands with REDIS_URL naming a 3-master Redis Cluster (redis+cluster://); the password never
    shows."""
    data_dir, artifact_dir = served_artifact
    env = {"RECSYS_HOME": str(tmp_path / "home"), "COLUMNS": "200", "REDIS_URL": fs_cluster.url}

    def features(*args: str) -> subprocess.CompletedProcess[str]:
        done = run_cli("features", *args, env=env, timeout=120)
        assert fs_cluster.password not in done.stdout + done.stderr
        return done

    for version in ("clu1", "clu2"):
        done = features("materialize", "--data", str(data_dir), "--artifact", str(artifact_dir), "--version",
                        version, "--popular-k", "20")
        assert done.returncode == 0, done.stderr
        assert f"Materialised version {version}" in done.stdout and "is now active" in done.stdout
    train = pl.read_parquet(split_files(data_dir, "train")[0], columns=["user_key", "item_key"])
    user, item = train.row(0)
    upserted = features("upsert", "--artifact", str(artifact_dir), "--user", user, "--event", item)
    assert upserted.returncode == 0, upserted.stderr
    assert f"user '{user}': appended item '{item}' in version clu2" in upserted.stdout
    listed = features("versions")
    assert listed.returncode == 0, listed.stderr
    assert "clu2 *" in listed.stdout and "retired" in listed.stdout
    store = RedisFeatureStore.from_url(fs_cluster.url, activation_file=None)
    try:
        assert store.active_version() == "clu2" and store.seen(user)[0] == item
        assert len(store.popular(100)[1]) == 20
    finally:
        store.close()
