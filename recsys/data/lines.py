"""Streaming text input: chunks of lines with their 1-based line numbers, gzip or plain.

Parsers work on whole chunks with polars string kernels; this module only
cuts the byte stream at line ends and decodes it, marking the lines whose
bytes are not UTF-8 so they can be quarantined instead of crashing a job.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import polars as pl

from recsys.errors import RecsysError

CHUNK_BYTES = 16 << 20


@dataclass
class LineChunk:
    """``lines`` (String) with ``line`` numbers (1-based, Int64) and ``undecodable`` (Boolean) flags."""

    source: str
    frame: pl.DataFrame

    @property
    def height(self) -> int:
        return self.frame.height


def data_files(folder: Path) -> list[Path]:
    """A folder's data files in natural order (day_2 before day_10: time order for day files).

    Hidden and _-prefixed files (.crc, _SUCCESS) are bookkeeping, not data.
    """
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_"))]
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def open_binary(path: Path) -> BinaryIO:
    """Open plain or gzip-compressed input (by magic bytes, not by name)."""
    if not path.is_file():
        raise RecsysError(f"{path}: input file not found")
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def iter_line_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[LineChunk]:
    """Yield the file's lines in chunks; a trailing newline does not make an extra line."""
    next_line = 1
    carry = b""
    with open_binary(path) as stream:
        while True:
            try:
                block = stream.read(chunk_bytes)
            except (OSError, EOFError) as exc:
                raise RecsysError(f"{path}: cannot read past line {next_line}: {exc}") from None
            if not block:
                break
            block = carry + block
            cut = block.rfind(b"\n")
            if cut < 0:
                carry = block
                continue
            carry = block[cut + 1 :]
            chunk = _decode(block[:cut], next_line, str(path))
            next_line += chunk.height
            yield chunk
    if carry:
        yield _decode(carry, next_line, str(path))


def _decode(data: bytes, first_line: int, source: str) -> LineChunk:
    try:
        lines = data.decode("utf-8").split("\n")
        undecodable = None
    except UnicodeDecodeError:
        lines, flags = [], []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
                flags.append(False)
            except UnicodeDecodeError:
                lines.append(raw.decode("utf-8", errors="replace"))
                flags.append(True)
        undecodable = flags
    frame = pl.DataFrame(
        {
            "line": pl.int_range(first_line, first_line + len(lines), eager=True, dtype=pl.Int64),
            "text": pl.Series(lines, dtype=pl.String).str.strip_suffix("\r"),
            "undecodable": pl.Series(undecodable, dtype=pl.Boolean)
            if undecodable is not None
            else pl.repeat(False, len(lines), eager=True, dtype=pl.Boolean),
        }
    )
    return LineChunk(source=source, frame=frame)
