"""Offline evaluation reports: one self-contained HTML page and a JSON of every number it shows.

``build_report(ReportOptions(artifacts=[...], out=Path("report.html")))`` loads each artifact, scores
its test split, and renders the registered sections (``recsys.report.sections``, one file each).
"""

from recsys.report.build import ReportOptions, ReportPaths, build_report

__all__ = ["ReportOptions", "ReportPaths", "build_report"]
