"""The artifact: everything needed to score with a trained model, and nothing that is unpickled.

``RUN/artifact/``::

    manifest.json        model name, version, recsys/torch versions, git sha, created-at, files, and the
                         sha256 of the weights, schema and config
    weights.safetensors  unsharded state dict (full tables, MLPs)
    schema.json          the Schema the model was trained on
    config.yaml          the resolved training config
    metrics.json         test.*, valid.*, train.* figures
    vocab/<table>.parquet  the vocabularies serving needs to encode raw ids
    generated/<feature>.parquet  the lookup tables of generated features (``recsys.features.recipes``),
                         copied from the data set like vocab/, their sha256 in the manifest (and in the schema's
                         recipes); ``load`` reads and checks every one the schema names (``Artifact.lookups``)
    retrieval/           a retriever's catalogue: items.parquet (one column ``item_key``, row i is vector i)
                         and item_vectors.safetensors (one float32 tensor ``vectors``, (N, d)); the manifest's
                         ``retrieval`` entry holds {similarity, items, dim} and both files' sha256 are digested

``load(path)`` rebuilds the model from schema and config (no torch.distributed)
and fills it from the safetensors file: ready for inference in a fresh process.
``load_item_vectors(path)`` reads a retriever's catalogue vectors (what an index
is built from), checked against the manifest. An artifact is input from elsewhere (a shared folder, an admin request): every
way a file can be missing, unreadable, changed after export (its sha256 differs
from the manifest's), malformed, of the wrong shapes or non-finite is one line
naming the file. The version, which the service reports as ``model_version``,
ends with the weights' digest, so other weights never pass for the same model.

The JSON files hold strict JSON (``json_text``): a non-finite figure (an AUC of a
split with one class) is written as ``null``, never as a bare ``NaN``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from recsys import __version__
from recsys.config import TrainConfig
from recsys.errors import RecsysError
from recsys.features.recipes import GENERATED_DIR, Lookups
from recsys.models import build_model, model_names
from recsys.schema import Schema

MANIFEST, WEIGHTS, SCHEMA, CONFIG, METRICS, VOCAB = (
    "manifest.json", "weights.safetensors", "schema.json", "config.yaml", "metrics.json", "vocab")
DIGESTED = (WEIGHTS, SCHEMA, CONFIG)  # the files that decide the scores: their sha256 is in the manifest
RETRIEVAL, ITEMS, ITEM_VECTORS = "retrieval", "retrieval/items.parquet", "retrieval/item_vectors.safetensors"
SIMILARITIES = ("dot", "l2")


@dataclass
class ItemVectors:
    """A retriever's catalogue: raw item keys and their vectors, row for row, and how vectors are compared."""

    keys: list[str]
    vectors: torch.Tensor  # (N, d) float32
    similarity: str  # "dot" | "l2"


@dataclass
class Artifact:
    path: Path
    model: nn.Module  # in eval mode, on the CPU
    model_name: str
    schema: Schema
    config: TrainConfig
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    weights_sha256: str
    lookups: Lookups | None = None  # the generated features' lookup tables, read and digest-checked

    @property
    def version(self) -> str:
        """A short identity for the artifact: model name, creation time and weights digest (appended for
        artifacts written before the manifest recorded it)."""
        version, digest = str(self.manifest.get("version", self.model_name)), self.weights_sha256[:12]
        return version if version.endswith(digest) else f"{version}-{digest}"


def json_text(value: Any, **kwargs: Any) -> str:
    """Strict JSON (RFC 8259) of ``value``: non-finite floats become null, where ``json.dumps`` writes NaN."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The first floating-point entry holding NaN or an infinity (None: every value is finite)."""
    return next((key for key, value in state.items()
                 if value.is_floating_point() and not bool(torch.isfinite(value).all())), None)


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
         metrics: dict[str, Any], data_dir: Path, extra: dict[str, Any] | None = None,
         items: ItemVectors | None = None) -> Path:
    """Write the artifact atomically: into a hidden sibling, renamed into place when complete. ``items``: a
    retriever's catalogue vectors (the ``retrieval/`` files).

    Refuses non-finite weights (RecsysError naming the tensor): a model that scores NaN is never exported.
    """
    bad = non_finite(state)
    if bad is not None:
        raise RecsysError(f"{out}: not exported: weights '{bad}' hold NaN or infinite values")
    if items is not None and not bool(torch.isfinite(items.vectors).all()):
        raise RecsysError(f"{out}: not exported: the item vectors hold NaN or infinite values")
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS))
    schema.save(tmp / SCHEMA)
    (tmp / CONFIG).write_text(config.to_yaml())
    (tmp / METRICS).write_text(json_text(metrics, indent=1, sort_keys=True))
    vocab = data_dir / VOCAB
    if vocab.is_dir():
        shutil.copytree(vocab, tmp / VOCAB)
    digested = DIGESTED
    if (data_dir / GENERATED_DIR).is_dir():
        shutil.copytree(data_dir / GENERATED_DIR, tmp / GENERATED_DIR)
        digested += tuple(sorted(p.relative_to(tmp).as_posix() for p in (tmp / GENERATED_DIR).rglob("*")
                                 if p.is_file()))
    retrieval: dict[str, Any] = {}
    if items is not None:
        _write_item_vectors(tmp, items)
        digested += (ITEMS, ITEM_VECTORS)
        retrieval = {"retrieval": {"similarity": items.similarity, "items": len(items.keys),
                                   "dim": int(items.vectors.shape[1])}}
    created = datetime.now(UTC)
    digests = {name: sha256_file(tmp / name) for name in digested}
    manifest = {
        "model": model_name,
        "version": f"{model_name}-{created.strftime('%Y%m%dT%H%M%SZ')}-{digests[WEIGHTS][:12]}",
        "created_at": created.isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "recsys_version": __version__,
        "torch_version": torch.__version__,
        "data_dir": str(data_dir.resolve()),
        "files": sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()),
        "sha256": digests,
        **retrieval,
        **(extra or {}),
    }
    (tmp / MANIFEST).write_text(json_text(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _write_item_vectors(out: Path, items: ItemVectors) -> None:
    vectors = items.vectors.detach().to("cpu", torch.float32).contiguous()
    if vectors.dim() != 2 or vectors.shape[0] != len(items.keys):
        raise RecsysError(f"{out / ITEM_VECTORS}: {len(items.keys)} item keys for vectors of shape "
                          f"{list(vectors.shape)}")
    (out / RETRIEVAL).mkdir()
    pq.write_table(pa.table({"item_key": pa.array(items.keys, pa.string())}), out / ITEMS)
    save_file({"vectors": vectors}, str(out / ITEM_VECTORS))


def _shown(path: Path) -> str:
    """The path for a one-line message: an over-long one (a request's) is cut in the middle."""
    text = str(path)
    return text if len(text) <= 300 else f"{text[:150]}…{text[-100:]}"


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A missing or unreadable artifact file, met in the block, as one line naming it."""
    try:
        yield
    except FileNotFoundError:
        raise RecsysError(f"{_shown(path)}: missing from the artifact") from None
    except OSError as exc:
        raise RecsysError(f"{_shown(path)}: unreadable ({exc.strerror or exc})") from None


def _read_json(path: Path) -> dict[str, Any]:
    with _reading(path):
        raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # ValueError covers bytes that are not UTF-8
        raise RecsysError(f"{_shown(path)}: not valid JSON ({str(exc).splitlines()[0] or type(exc).__name__})") \
            from None
    if not isinstance(data, dict):
        raise RecsysError(f"{_shown(path)}: expected a JSON object")
    return data


def _check_digests(path: Path, manifest: dict[str, Any]) -> str:
    """Every digested file as exported (sha256 as in the manifest); returns the weights' sha256. Artifacts
    written before the manifest held digests are taken as they are."""
    recorded = manifest.get("sha256")
    if recorded is not None and not isinstance(recorded, dict):
        raise RecsysError(f"{_shown(path / MANIFEST)}: 'sha256' must map file names to digests")
    digests = {}
    names = (DIGESTED + ((ITEMS, ITEM_VECTORS) if "retrieval" in manifest else ())) if recorded is not None \
        else (WEIGHTS,)
    if recorded is not None:  # generated-feature lookups: each one the manifest lists, under generated/ only
        names += tuple(sorted(n for n in recorded if isinstance(n, str) and n.startswith(f"{GENERATED_DIR}/")))
    for name in names:
        file = path / name
        with _reading(file):
            digests[name] = sha256_file(file)
        if recorded is not None and recorded.get(name) != digests[name]:
            raise RecsysError(f"{_shown(file)}: changed after export (its sha256 differs from the one in "
                              f"{MANIFEST}); export the model again rather than editing its files")
    return digests[WEIGHTS]


def _fill(model: nn.Module, state: dict[str, torch.Tensor], path: Path, model_name: str) -> None:
    """Load ``state`` into ``model``, naming the first tensor that is missing, unexpected or of another shape."""
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise RecsysError(f"{_shown(path / WEIGHTS)}: does not match the {model_name} model "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise RecsysError(f"{_shown(path / WEIGHTS)}: '{key}' has shape {list(value.shape)}, but the "
                              f"{model_name} model of {SCHEMA} and {CONFIG} needs {list(expected[key].shape)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RecsysError(f"{_shown(path / WEIGHTS)}: does not fit the {model_name} model "
                          f"({str(exc).splitlines()[0]})") from None


def load(path: str | Path) -> Artifact:
    """The artifact's model, ready for inference, with its schema, config and metrics.

    RecsysError (one line naming the file) for anything wrong with it; see the module docstring.
    """
    path = Path(path)
    try:
        found = path.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise RecsysError(f"{_shown(path)}: not a usable artifact path ({exc.strerror or exc})") from None
    if not found:
        raise RecsysError(f"{_shown(path)}: artifact directory not found")
    manifest = _read_json(path / MANIFEST)
    metrics = _read_json(path / METRICS)
    weights_sha256 = _check_digests(path, manifest)
    schema = Schema.load(path / SCHEMA)
    lookups = _read_lookups(path, schema)
    config = TrainConfig.read(path / CONFIG)
    model_name = manifest.get("model")
    if not isinstance(model_name, str):
        raise RecsysError(f"{_shown(path / MANIFEST)}: no model name")
    if model_name not in model_names():
        raise RecsysError(f"{_shown(path / MANIFEST)}: unknown model '{model_name}'; known: "
                          f"{', '.join(model_names())}")
    try:
        state = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise RecsysError(f"{_shown(path / WEIGHTS)}: missing from the artifact") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise RecsysError(f"{_shown(path / WEIGHTS)}: unreadable weights ({exc})") from None
    bad = non_finite(state)
    if bad is not None:
        raise RecsysError(f"{_shown(path / WEIGHTS)}: weights '{bad}' hold NaN or infinite values")
    try:
        model = build_model(model_name, schema, config.model, config.embedding)
    except RecsysError as exc:
        raise RecsysError(f"{_shown(path)}: {exc}") from None
    _fill(model, state, path, model_name)
    model.eval()
    if "retrieval" in manifest:
        _read_item_vectors(path, manifest)
    return Artifact(path, model, model_name, schema, config, metrics, manifest, weights_sha256, lookups)


def _read_lookups(path: Path, schema: Schema) -> Lookups | None:
    """The lookup tables of the schema's generated features, each read once and checked against its recipe's
    sha256 (a missing, changed or malformed file is one line naming it); None when no feature has one."""
    recipes = [f.derived for f in schema.derived_features if f.derived is not None and f.derived.lookup_file]
    if not recipes:
        return None
    lookups = Lookups(path)
    for recipe in recipes:
        if recipe.lookup_sha256 is None:
            raise RecsysError(f"{_shown(path / SCHEMA)}: generated feature lookup '{recipe.lookup_file}' has no "
                              "lookup_sha256; an artifact's lookups must be digested")
        try:
            lookups.table(recipe)
        except RecsysError as exc:
            raise RecsysError(f"artifact {_shown(path)}: {exc}") from None
    return lookups


def load_item_vectors(path: str | Path) -> tuple[list[str], torch.Tensor, str]:
    """A retriever artifact's catalogue: (item keys, (N, d) float32 vectors, similarity "dot" | "l2"), checked
    against the manifest (digests, shapes, finite values); RecsysError naming the file otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise RecsysError(f"{_shown(path)}: artifact directory not found")
    manifest = _read_json(path / MANIFEST)
    if "retrieval" not in manifest:
        raise RecsysError(f"{_shown(path / MANIFEST)}: no 'retrieval' entry: the artifact of "
                          f"'{manifest.get('model')}' is not a retriever's (no item vectors)")
    _check_digests(path, manifest)
    items = _read_item_vectors(path, manifest)
    return items.keys, items.vectors, items.similarity


def _read_item_vectors(path: Path, manifest: dict[str, Any]) -> ItemVectors:
    """The retrieval files, as the manifest's entry describes them (digests are checked by the caller)."""
    entry = manifest["retrieval"]
    fields = {"similarity": str, "items": int, "dim": int}
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), t) for k, t in fields.items()) \
            or entry["similarity"] not in SIMILARITIES:
        raise RecsysError(f"{_shown(path / MANIFEST)}: 'retrieval' should hold similarity (dot or l2), items and "
                          f"dim, got {str(entry)[:200]}")
    with _reading(path / ITEMS):
        try:
            table = pq.read_table(path / ITEMS)
        except (pa.ArrowInvalid, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise RecsysError(f"{_shown(path / ITEMS)}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
    if table.column_names != ["item_key"] or not pa.types.is_string(table.schema.field("item_key").type) \
            or table.column("item_key").null_count:
        raise RecsysError(f"{_shown(path / ITEMS)}: expected one non-null string column 'item_key', got "
                          f"{table.schema.to_string(show_schema_metadata=False)[:200]!r}")
    keys = table.column("item_key").to_pylist()
    try:
        vectors = load_file(str(path / ITEM_VECTORS)).get("vectors")
    except FileNotFoundError:
        raise RecsysError(f"{_shown(path / ITEM_VECTORS)}: missing from the artifact") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise RecsysError(f"{_shown(path / ITEM_VECTORS)}: unreadable ({exc})") from None
    expected = [entry["items"], entry["dim"]]
    if vectors is None or vectors.dtype != torch.float32 or list(vectors.shape) != expected:
        got = "no tensor 'vectors'" if vectors is None else f"{vectors.dtype} {list(vectors.shape)}"
        raise RecsysError(f"{_shown(path / ITEM_VECTORS)}: expected float32 'vectors' of shape {expected} "
                          f"({MANIFEST}), got {got}")
    if len(keys) != entry["items"]:
        raise RecsysError(f"{_shown(path / ITEMS)}: {len(keys)} item keys, but {MANIFEST} says {entry['items']}")
    if not bool(torch.isfinite(vectors).all()):
        raise RecsysError(f"{_shown(path / ITEM_VECTORS)}: holds NaN or infinite values")
    return ItemVectors(keys, vectors, entry["similarity"])
