"""Drawing primitives for the V3/R1 chapter diagrams (05–08): a blank canvas, a labelled box, an arrow.
Units are inches on an axis-free, equal-aspect axes, so text sizes are predictable."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

FORWARD, BACKWARD, COMM, STORE, HIGH = "#dde8f5", "#f6d6c8", "#e4e4e4", "#fff2c2", "#d9f0d3"


def canvas(width: float, height: float, title: str) -> tuple[Figure, plt.Axes]:
    """A figure with one frameless axes spanning [0, width] × [0, height]."""
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=11)
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, text: str, color: str = FORWARD, fontsize: float = 8.0,
        **kw) -> FancyBboxPatch:
    """A rounded box with lower-left corner (x, y) and centred text."""
    patch = FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.06", fc=color, ec="0.25",
                           lw=1.0, **kw)
    ax.add_patch(patch)
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)
    return patch


def grid(ax, x: float, y: float, w: float, h: float, rows: int, cols: int, color: str, label: str = "") -> None:
    """A w × h rectangle cut into rows × cols cells (a tiled tensor), with a label above it."""
    for i in range(rows):
        for j in range(cols):
            ax.add_patch(Rectangle((x + j * w / cols, y + i * h / rows), w / cols, h / rows, fc=color, ec="0.3",
                                   lw=0.6))
    if label:
        ax.text(x + w / 2, y + h + 0.08, label, ha="center", va="bottom", fontsize=7.5)


def arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", color: str = "0.2",
          style: str = "-|>", fontsize: float = 7.0, dashed: bool = False, **kw) -> FancyArrowPatch:
    """An arrow from start to end with an optional label beside its middle."""
    patch = FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=color, lw=1.0,
                            linestyle="--" if dashed else "-", **kw)
    ax.add_patch(patch)
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.06, (start[1] + end[1]) / 2 + 0.04, text, fontsize=fontsize,
                color=color, va="bottom")
    return patch
