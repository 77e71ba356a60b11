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
from recsys.system import exclusive_lock

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


def split_protocol(stats: dict[str, Any]) -> str:
    """How a prepared data set was split, in words, from its stats.json (``protocol``; older ones: ``split``)."""
    protocol = stats.get("protocol") or {"split": stats.get("split", "random")}
    kind = protocol.get("split")
    seed = stats.get("seed")

    def share(key: str) -> str:
        return f"{100 * protocol[key]:g}%" if key in protocol else "?"

    if kind == "given":
        valid = protocol.get("valid_fraction", 0.0)
        detail = f"valid: {100 * valid:g}% of the train rows, seed {seed}" if valid else "no valid split"
        return f"given train/test split ({detail})"
    if kind == "loo":
        order = protocol.get("order", "timestamp")
        return (f"leave-one-out split by {order} (per user, the newest interaction to test and the next to valid; "
                f"users with fewer than {protocol.get('min_interactions', 3)} interactions stay in train)")
    if kind == "time":
        return f"time split by {protocol.get('order', 'timestamp')} (valid {share('valid_fraction')}, " \
               f"test {share('test_fraction')}: the newest rows)"
    return f"random split (valid {share('valid_fraction')}, test {share('test_fraction')} of the rows, seed {seed})"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def make_parent(out: Path) -> None:
    """Create the folder ``out`` goes in, or fail with one line naming ``--out`` and why (a file in the way...)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        in_the_way = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        why = f"{in_the_way} is a file, not a folder" if in_the_way is not None else exc.strerror or str(exc)
        raise RecsysError(f"--out {out}: cannot create the folder {out.parent} ({why})") from None


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it to ``out`` only if the block succeeds.

    Readers never see a half-written data set: on any error (or Ctrl-C) the
    temporary folder is removed and ``out`` is left as it was. The whole job
    holds an exclusive lock on ``out`` (``.NAME.lock`` beside it), so a second
    job into the same folder fails at once, naming the first, instead of both
    succeeding and the slower one silently replacing the other.
    """
    out = Path(out).resolve()
    make_parent(out)
    with exclusive_lock(out.parent / f".{out.name}.lock", f"output {out}"):
        if out.exists() and not out.is_dir():
            raise RecsysError(f"--out {out}: is a file, not a folder")
        if out.exists() and not overwrite and any(out.iterdir()):
            raise RecsysError(f"{out}: already exists (pass --overwrite to replace it)")
        _remove_abandoned(out)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            tmp.mkdir()
        except OSError as exc:
            raise RecsysError(f"--out {out}: cannot create {tmp.name} in {out.parent} ({exc.strerror})") from None
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _replace(tmp, out)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; a replaced ``out`` goes to ``.NAME.old-PID`` first, then is deleted.

    A run killed while deleting it leaves that folder behind: the next run into ``out`` removes it.
    """
    if not out.exists():
        tmp.rename(out)
        return
    trash = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(trash)
    tmp.rename(out)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_abandoned(out: Path) -> None:
    """Delete the work and replaced folders (``.NAME.tmp-PID``, ``.NAME.old-PID``) of runs that were killed.

    Called under the output's lock: a live run into ``out`` would hold it, so every such folder is a dead run's,
    whatever process now has the pid in its name (pids are reused, quickly so in containers).
    """
    prefixes = (f".{out.name}.tmp-", f".{out.name}.old-")
    for leftover in out.parent.iterdir():
        name = leftover.name
        if name.startswith(prefixes) and name.rsplit("-", 1)[-1].isdigit():
            shutil.rmtree(leftover, ignore_errors=True)


def load_schema(data_dir: str | Path) -> Schema:
    return Schema.load(Path(data_dir) / SCHEMA_FILE)
