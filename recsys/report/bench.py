"""Reading benchmark results files tolerantly: find them by name or ``benchmark`` field, pick numbers."""

from __future__ import annotations

import math
from typing import Any

from recsys.report import html
from recsys.report.context import BenchFile, ReportContext


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def files_for(ctx: ReportContext, benchmark: str) -> list[BenchFile]:
    """Parsed results files of one benchmark: ``<benchmark>.json`` or any with ``"benchmark": benchmark``."""
    return [f for f in ctx.bench.values() if isinstance(f.data, dict)
            and (f.name == f"{benchmark}.json" or f.data.get("benchmark") == benchmark)]


def machine_line(data: dict[str, Any]) -> str:
    """'AMD EPYC, 2 cores, torch 2.13.0+cpu, 2026-11-25' from a results file's ``machine``, escaped."""
    machine = data.get("machine")
    if not isinstance(machine, dict):
        return ""
    parts = [str(machine["cpu"]) if machine.get("cpu") else "",
             f"{machine['nproc']} cores" if is_number(machine.get("nproc")) else "",
             f"{machine['gpu']}" if machine.get("gpu") else "",
             f"torch {machine['torch']}" if machine.get("torch") else "",
             str(machine["date"])[:10] if machine.get("date") else ""]
    return html.esc(", ".join(p for p in parts if p))


def scalars(data: dict[str, Any]) -> dict[str, Any]:
    """The entries of a dict that are numbers or short strings."""
    return {k: v for k, v in data.items() if is_number(v) or (isinstance(v, str) and len(v) < 120)}


def key_values(data: dict[str, Any], caption: str) -> str:
    values = scalars(data)
    if not values:
        return ""
    rows = [[html.esc(k), html.fmt(v, 3) if is_number(v) else html.esc(v)] for k, v in values.items()]
    return html.table(["", "value"], rows, caption=caption)
