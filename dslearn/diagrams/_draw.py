"""The few drawing primitives every chapter diagram shares: a blank canvas, a labelled box, a tiled tensor and
an arrow. Units are inches on an axis-free, equal-aspect axes, so text sizes are predictable."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

# the colours of the V3/R1 diagrams (05–08): forward and backward compute, communication, stored tensors,
# high-precision parts
FORWARD, BACKWARD, COMM, STORE, HIGH = "#dde8f5", "#f6d6c8", "#e4e4e4", "#fff2c2", "#d9f0d3"


def canvas(width: float, height: float, title: str) -> tuple[Figure, plt.Axes]:
    """A figure with one frameless axes spanning [0, width] × [0, height] (units = inches, so text fits)."""
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=11)
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, text: str, color: str = "#dde8f5", fontsize: float = 8.5,
        **kw) -> FancyBboxPatch:
    """A rounded box with its lower-left corner at (x, y) and centred text."""
    patch = FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="0.25",
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
          style: str = "-|>", fontsize: float = 7.5, dashed: bool = False, **kw) -> FancyArrowPatch:
    """An arrow from start to end, with an optional label at its middle."""
    patch = FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=color, lw=1.0,
                            linestyle="--" if dashed else "-", **kw)
    ax.add_patch(patch)
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.05, (start[1] + end[1]) / 2, text, fontsize=fontsize, color=color,
                va="center")
    return patch
