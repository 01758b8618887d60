"""The few drawing primitives the chapter diagrams share: a labelled box and an arrow, in axes coordinates
of a blank (axis-free) matplotlib figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch


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


def arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", color: str = "0.2",
          style: str = "-|>", fontsize: float = 7.5, **kw) -> FancyArrowPatch:
    """An arrow from start to end, with an optional label at its middle."""
    patch = FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=color, lw=1.0, **kw)
    ax.add_patch(patch)
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.05, (start[1] + end[1]) / 2, text, fontsize=fontsize, color=color,
                va="center")
    return patch
