"""Benchmark results files no section rendered: listed, so nothing is dropped silently."""

from __future__ import annotations

from recsys.report import html
from recsys.report.context import BenchFile, ReportContext
from recsys.report.sections import Section, register_section


@register_section("bench_other", title="Other benchmark results", order=1000)  # after every bench section
def render(ctx: ReportContext) -> Section | None:
    if ctx.bench_dir is None:
        return None
    rest = [f for name, f in sorted(ctx.bench.items()) if name not in ctx.claimed]
    if not rest:
        return Section(note=f"Every results file in {ctx.bench_dir} is shown above.")
    rows = [[f"<code>{f.name}</code>", _why(f)] for f in rest]
    return Section(html.table(["file", "why it is not shown"], rows, numeric_from=99),
                   {"skipped": {f.name: _why(f) for f in rest}},
                   f"Results files in {ctx.bench_dir} that no section of this report renders.")


def _why(file: BenchFile) -> str:
    if file.error:
        return file.error
    kind = file.data.get("benchmark") if isinstance(file.data, dict) else None
    return f"no section renders {'benchmark ' + repr(kind) if kind else 'this file'} yet"
