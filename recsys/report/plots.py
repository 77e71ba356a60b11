"""Matplotlib figures rendered to embedded PNGs, through the object API (no pyplot, no global backend)."""

from __future__ import annotations

import base64
import io

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from recsys.report.html import esc

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
POSITIVE, NEGATIVE = "#d62728", "#1f77b4"
DPI = 110


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def palette(n: int) -> list[Any]:
    """``n`` distinct colours: ours up to ten, matplotlib's tab20 beyond (stacked bars of many stages)."""
    if n <= len(COLORS):
        return list(COLORS[:n])
    return [colormaps["tab20"](i % 20) for i in range(n)]


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 6.4, height: float = 4.4) -> tuple[Figure, np.ndarray]:
    """A figure of ``nrows × ncols`` panels, each ``width × height`` inches; axes as a flat array."""
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.grid(True, color="#e3e3e3", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def style(ax: Axes, title: str, xlabel: str, ylabel: str, *, legend: bool = True) -> None:
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, frameon=False)


def thousands(ax: Axes, axis: str = "y") -> None:
    """Tick labels with thousands separators (12,000 rather than 12000 or 1.2e4)."""
    formatter = FuncFormatter(lambda value, _: f"{value:,.0f}")
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(formatter)


def img(fig: Figure, alt: str) -> str:
    """The figure as an ``<img>`` with a base64 PNG data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def thin(x: np.ndarray, y: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` points of a curve for plotting (evenly spaced by index, end points kept)."""
    if len(x) <= points:
        return x, y
    index = np.unique(np.linspace(0, len(x) - 1, points).round().astype(int))
    return x[index], y[index]


def heatmap(ax: Axes, matrix: np.ndarray, labels: list[str], *, vmin: float = 0.0, vmax: float = 1.0,
            cmap: str = "viridis", label: str = "") -> None:
    """A square matrix as coloured cells, rows and columns named by ``labels``, with a colour bar."""
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
    ticks = np.arange(len(labels))
    size = 9 if len(labels) <= 24 else max(5.5, 9 - len(labels) / 20)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
    ax.set_yticks(ticks, labels, fontsize=size)
    ax.grid(False)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label=label)
