"""The on-disk layout shared by ``prepare`` and ``synth``, and its atomic creation.

    DIR/train/ DIR/valid/ DIR/test/   Parquet parts (part-00000.parquet, ...)
    DIR/schema.json                   the resolved Schema
    DIR/stats.json                    row counts, bad rows, positive rates, cardinalities
    DIR/vocab/<table>.parquet         vocabularies (value, index, count) for vocab tables
    DIR/quarantine/bad_rows.jsonl     malformed input rows: source, line, reason, raw
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.schema import SCHEMA_FILE, Schema
from recsys.system import pid_alive

SPLITS = ("train", "valid", "test")
STATS_FILE = "stats.json"
VOCAB_DIR = "vocab"
QUARANTINE_FILE = Path("quarantine") / "bad_rows.jsonl"


def split_files(data_dir: str | Path, split: str) -> list[Path]:
    """The Parquet parts of one split, in name order; an error naming what is missing."""
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise RecsysError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")
    if not (data_dir / SCHEMA_FILE).is_file():
        raise RecsysError(f"{data_dir}: not a prepared data directory (no {SCHEMA_FILE})")
    split_dir = data_dir / split
    if not split_dir.is_dir():
        raise RecsysError(f"{split_dir}: split directory missing")
    return sorted(split_dir.glob("*.parquet"))


def read_stats(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / STATS_FILE
    if not path.is_file():
        raise RecsysError(f"{path}: stats file not found")
    return json.loads(path.read_text())


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it to ``out`` only if the block succeeds.

    Readers never see a half-written data set: on any error (or Ctrl-C) the
    temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        if not out.is_dir() or any(out.iterdir()):
            raise RecsysError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


def _remove_abandoned(out: Path) -> None:
    """Delete temporary folders left by runs that were killed (their process is gone)."""
    for leftover in out.parent.glob(f".{out.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)



def load_schema(data_dir: str | Path) -> Schema:
    return Schema.load(Path(data_dir) / SCHEMA_FILE)
