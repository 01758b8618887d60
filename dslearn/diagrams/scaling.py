"""Chapter 01's picture: IsoFLOP profiles and the compute-optimal frontier, drawn from an idealised loss
L(M, D) = E + A/M^α + B/D^β with D = C/M (illustrative constants, not a fit)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch


def isoflop_frontier(E: float = 1.0, A: float = 40.0, B: float = 400.0, alpha: float = 0.35,
                     beta: float = 0.3) -> Figure:
    """One parabola-like profile per budget C (loss vs M at D = C/M), its minimum M_opt(C) starred, and the
    line through the minima: the allocation law M_opt ∝ C^a with a = β/(α+β)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    budgets = [1e15, 1e16, 1e17, 1e18]
    mins = []
    for i, C in enumerate(budgets):
        M = np.logspace(4, 12, 300)
        L = E + A / M**alpha + B / (C / M) ** beta
        j = int(np.argmin(L))
        keep = L < L[j] + 0.6
        ax.plot(M[keep], L[keep], color=f"C{i}", label=f"C = {C:.0e} FLOPs")
        ax.plot(M[j], L[j], "*", color=f"C{i}", ms=13, mec="k")
        mins.append((M[j], L[j]))
    for (m0, l0), (m1, l1) in zip(mins, mins[1:]):
        ax.add_patch(FancyArrowPatch((m0, l0), (m1, l1), arrowstyle="-|>", mutation_scale=10, color="0.3",
                                     ls="--"))
    ax.text(mins[-1][0] * 1.5, mins[-1][1], "compute-optimal frontier:\nM_opt(C) ∝ C^a, D_opt = C / M_opt",
            fontsize=8, va="center")
    ax.text(0.02, 0.04, "left of ★: model too small (underfits)   right of ★: too little data per parameter",
            transform=ax.transAxes, fontsize=7.5, color="0.3")
    ax.set(xscale="log", xlabel="M, non-embedding FLOPs per token (model scale)", ylabel="final loss (illustrative)",
           title="IsoFLOP profiles: each budget C = M·D has a best model scale "
           f"(a = β/(α+β) = {beta / (alpha + beta):.2f})")
    ax.title.set_fontsize(9.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper right")
    return fig

