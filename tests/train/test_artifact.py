"""The exported artifact loads in a fresh process, without torch.distributed or pickle, and scores as trained."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from recsys import artifact
from recsys.errors import RecsysError
from tests.conftest import run_python, train_cli

# Runs in a fresh interpreter: forbid every unpickling path, load, score the test split.
SCORE = """
import json, pickle, sys
import torch
def refuse(*args, **kwargs):
    raise AssertionError("the artifact tried to unpickle something")
class RefusingUnpickler(pickle.Unpickler):
    def load(self):
        refuse()
pickle.load = pickle.loads = torch.load = refuse
pickle.Unpickler = RefusingUnpickler
import numpy as np
from sklearn.metrics import log_loss, roc_auc_score
from recsys.artifact import load
from recsys.data.reader import ParquetReader
loaded = load(sys.argv[1])
assert not torch.distributed.is_initialized()
scores, labels = [], []
with torch.inference_mode():
    for batch in ParquetReader(sys.argv[2], "test", batch_size=1000, schema=loaded.schema):
        scores.append(torch.sigmoid(loaded.model(batch)).numpy())
        labels.append(batch.labels.numpy())
scores, labels = np.concatenate(scores), np.concatenate(labels)
print(json.dumps({"auc": roc_auc_score(labels, scores), "logloss": log_loss(labels, scores),
                  "model": loaded.model_name, "rows": len(labels), "training": loaded.model.training}))
"""


@pytest.fixture(scope="module")
def trained(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "run"
    result = train_cli(small_ctr, out, "trainer.batch_size=128", nproc=2)  # sharded over 2: gathered on export
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "artifact"


@pytest.mark.slow
def test_artifact_scores_in_a_fresh_process_as_the_trained_model(trained: Path, small_ctr: Path) -> None:
    result = run_python(SCORE, str(trained), str(small_ctr))
    assert result.returncode == 0, result.stderr[-3000:]
    scored = json.loads(result.stdout.strip().splitlines()[-1])
    metrics = json.loads((trained / "metrics.json").read_text())
    assert scored["model"] == "dlrm" and scored["training"] is False
    assert scored["rows"] == metrics["test.rows"]
    # The trainer's metrics came from the sharded model over 2 processes; these from the unsharded weights.
    assert scored["auc"] == pytest.approx(metrics["test.auc"], abs=1e-6)
    assert scored["logloss"] == pytest.approx(metrics["test.logloss"], abs=1e-5)


def test_artifact_holds_what_serving_needs(trained: Path) -> None:
    files = {p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file()}
    assert {"weights.safetensors", "schema.json", "config.yaml", "metrics.json", "manifest.json"} <= files
    assert any(name.startswith("vocab/") for name in files)
    assert not any(name.endswith((".pt", ".pth", ".pkl", ".bin")) for name in files)
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["model"] == "dlrm" and manifest["world_size"] == 2
    assert len(manifest["git_sha"]) >= 7 and manifest["created_at"].startswith("20")
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("test.auc", "test.logloss", "test.ne", "valid.auc", "train.samples_per_s"):
        assert isinstance(metrics[key], float) and metrics[key] == metrics[key]


def test_missing_or_corrupt_artifact_is_a_one_line_error(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="artifact directory not found"):
        artifact.load(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(trained), str(broken)], check=True)
    weights = broken / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(RecsysError, match="weights.safetensors: changed after export") as error:
        artifact.load(broken)
    assert "\n" not in str(error.value)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["sha256"]  # as an earlier recsys exported it: the file itself is found unreadable
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecsysError, match="weights.safetensors: unreadable weights") as error:
        artifact.load(broken)
    assert "\n" not in str(error.value)
    (broken / "metrics.json").unlink()
    with pytest.raises(RecsysError, match="metrics.json: missing from the artifact"):
        artifact.load(broken)
