"""Report sections by name. Each section is one file here that calls ``register_section``; it is imported
automatically, so adding a section is adding a file.

A section's ``render(ctx)`` reads the ``ReportContext`` and returns a ``Section``: its HTML body, the
numbers the body shows (report.json keeps them under the section's name) and, where it has nothing to
show, a note saying why. Returning None leaves the section out (a benchmark section without --bench).
Sections appear in ``order``; a section never fails the report for a results file it does not
understand: it says so in its note.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys.report.context import ReportContext


@dataclass
class Section:
    body: str = ""  # HTML
    data: dict[str, Any] = field(default_factory=dict)  # every number the body shows
    note: str = ""  # plain text shown above the body: why it is empty, or what it covers


Render = Callable[["ReportContext"], Section | None]


@dataclass(frozen=True)
class SectionSpec:
    name: str  # the anchor in the page and the key in report.json
    title: str
    order: int
    render: Render


_SECTIONS: dict[str, SectionSpec] = {}


def register_section(name: str, *, title: str, order: int) -> Callable[[Render], Render]:
    def add(render: Render) -> Render:
        if name in _SECTIONS:
            raise ValueError(f"report section '{name}' is registered twice")
        _SECTIONS[name] = SectionSpec(name, title, order, render)
        return render
    return add


def section_specs() -> list[SectionSpec]:
    """Every registered section, in page order."""
    return sorted(_SECTIONS.values(), key=lambda spec: (spec.order, spec.name))


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
