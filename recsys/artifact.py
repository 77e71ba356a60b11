"""The artifact: everything needed to score with a trained model, and nothing that is unpickled.

``RUN/artifact/``::

    manifest.json        model name, recsys/torch versions, git sha, created-at, files
    weights.safetensors  unsharded state dict (full tables, MLPs)
    schema.json          the Schema the model was trained on
    config.yaml          the resolved training config
    metrics.json         test.*, valid.*, train.* figures
    vocab/<table>.parquet  the vocabularies serving needs to encode raw ids

``load(path)`` rebuilds the model from schema and config (no torch.distributed)
and fills it from the safetensors file: ready for inference in a fresh process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from recsys import __version__
from recsys.config import TrainConfig
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.schema import Schema

MANIFEST, WEIGHTS, SCHEMA, CONFIG, METRICS, VOCAB = (
    "manifest.json", "weights.safetensors", "schema.json", "config.yaml", "metrics.json", "vocab")


@dataclass
class Artifact:
    path: Path
    model: nn.Module  # in eval mode, on the CPU
    model_name: str
    schema: Schema
    config: TrainConfig
    metrics: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        """A short identity for the artifact: model name, creation time and weights digest."""
        return str(self.manifest.get("version", self.model_name))


def git_sha() -> str:
    """The commit of the recsys checkout, with ``-dirty`` for uncommitted changes; ``unknown`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def save(out: Path, *, model_name: str, state: dict[str, torch.Tensor], schema: Schema, config: TrainConfig,
         metrics: dict[str, Any], data_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the artifact atomically: into a hidden sibling, renamed into place when complete."""
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS))
    schema.save(tmp / SCHEMA)
    (tmp / CONFIG).write_text(config.to_yaml())
    (tmp / METRICS).write_text(json.dumps(metrics, indent=1, sort_keys=True))
    vocab = data_dir / VOCAB
    if vocab.is_dir():
        shutil.copytree(vocab, tmp / VOCAB)
    created = datetime.now(UTC)
    manifest = {
        "model": model_name,
        "version": f"{model_name}-{created.strftime('%Y%m%dT%H%M%SZ')}",
        "created_at": created.isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "recsys_version": __version__,
        "torch_version": torch.__version__,
        "data_dir": str(data_dir.resolve()),
        "files": sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()),
        **(extra or {}),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise RecsysError(f"{path}: missing from the artifact") from None
    except ValueError as exc:
        raise RecsysError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RecsysError(f"{path}: expected a JSON object")
    return data


def load(path: str | Path) -> Artifact:
    """The artifact's model, ready for inference, with its schema, config and metrics."""
    path = Path(path)
    if not path.is_dir():
        raise RecsysError(f"{path}: artifact directory not found")
    manifest = _read_json(path / MANIFEST)
    metrics = _read_json(path / METRICS)
    schema = Schema.load(path / SCHEMA)
    if not (path / CONFIG).is_file():
        raise RecsysError(f"{path / CONFIG}: missing from the artifact")
    try:
        config = TrainConfig.from_dict(yaml.safe_load((path / CONFIG).read_text()), where=str(path / CONFIG))
    except yaml.YAMLError as exc:
        raise RecsysError(f"{path / CONFIG}: not valid YAML: {str(exc).splitlines()[0]}") from None
    model_name = manifest.get("model")
    if not isinstance(model_name, str):
        raise RecsysError(f"{path / MANIFEST}: no model name")
    try:
        state = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise RecsysError(f"{path / WEIGHTS}: missing from the artifact") from None
    except (SafetensorError, OSError) as exc:
        raise RecsysError(f"{path / WEIGHTS}: unreadable weights ({exc})") from None
    model = build_model(model_name, schema, config.model, config.embedding)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RecsysError(f"{path / WEIGHTS}: does not match the {model_name} model "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return Artifact(path, model, model_name, schema, config, metrics, manifest)
