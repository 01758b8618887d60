"""Chapter 02's picture: multi-head latent attention's two paths. Naive: rebuild every head's key and value
from the cached latent. Absorbed: fold W^UK into the query and W^UV into the output, attend to the latents."""

from __future__ import annotations

from functools import partial

from matplotlib.figure import Figure

from dslearn.diagrams._draw import arrow, canvas
from dslearn.diagrams._draw import box as _box

box = partial(_box, fontsize=6.8)

CACHE = "#f7d7d7"


def latent_path() -> Figure:
    """Left: what MLA computes and caches per token (c^KV of d_c and one shared rotary key k^R of d_h^R).
    Right: the absorbed decode step, where every head attends over the same cached [c^KV; k^R]."""
    fig, ax = canvas(10.0, 5.2, "MLA: cache a latent, rebuild or absorb (chapter 02)")
    # left: the naive path
    ax.text(2.4, 4.75, "naive (prefill / training)", ha="center", fontsize=9.5, weight="bold")
    box(ax, 1.4, 0.2, 2.0, 0.4, "h_t  (d_model)", "#eeeeee")
    box(ax, 0.2, 1.0, 2.1, 0.55, "c^KV = RMSNorm(W^DKV h)\n(d_c) — cached", CACHE)
    box(ax, 2.5, 1.0, 2.0, 0.55, "k^R = RoPE(W^KR h)\n(d_h^R, shared) — cached", CACHE)
    arrow(ax, (2.2, 0.6), (1.25, 1.0))
    arrow(ax, (2.6, 0.6), (3.5, 1.0))
    box(ax, 0.2, 2.1, 2.1, 0.55, "k^C = W^UK c^KV, v = W^UV c^KV\nper head (n_h × d_h)")
    arrow(ax, (1.25, 1.55), (1.25, 2.1), "up-project")
    box(ax, 0.6, 3.2, 3.6, 0.6, "per head: softmax([q^C; q^R]·[k^C; k^R] / √(d_h+d_h^R)) v", "#f5e1c8")
    arrow(ax, (1.25, 2.65), (1.6, 3.2))
    arrow(ax, (3.5, 1.55), (3.3, 3.2), "broadcast to heads")
    box(ax, 1.4, 4.05, 2.0, 0.4, "W^O → output", "#eeeeee")
    arrow(ax, (2.4, 3.8), (2.4, 4.05))
    # right: the absorbed path
    ax.plot([5.0, 5.0], [0.2, 4.9], color="0.7", lw=1, ls=":")
    ax.text(7.5, 4.75, "absorbed (decode)", ha="center", fontsize=9.5, weight="bold")
    box(ax, 5.4, 0.2, 4.2, 0.5, "cache: [c^KV ; k^R] per token = d_c + d_h^R numbers (576 in V2/V3)", CACHE)
    box(ax, 5.4, 1.1, 1.9, 0.75, "q_lat = W^UKᵀ q^C\n(d_c per head)\nW^UK folded in", "#dde8f5")
    box(ax, 7.6, 1.1, 2.0, 0.75, "q^R = RoPE(W^QR c^Q)\n(d_h^R per head)", "#dde8f5")
    box(ax, 5.4, 2.3, 4.2, 0.65, "every head attends over the SAME cached latents\n"
        "(multi-query attention with d_c + d_h^R-wide keys)", "#f5e1c8")
    arrow(ax, (6.35, 1.85), (6.6, 2.3))
    arrow(ax, (8.6, 1.85), (8.4, 2.3))
    arrow(ax, (9.7, 0.7), (9.7, 2.6), style="-|>")
    box(ax, 5.4, 3.35, 4.2, 0.55, "o = W^UV (Σ_j p_j c_j)  — W^UV applied once, after attention", "#dde8f5")
    arrow(ax, (7.5, 2.95), (7.5, 3.35))
    box(ax, 6.5, 4.05, 2.0, 0.4, "W^O → output", "#eeeeee")
    arrow(ax, (7.5, 3.9), (7.5, 4.05))
    ax.text(5.0, -0.15, "RoPE sits only on the small shared k^R and q^R: on k^C it would put R_{j−t} between "
            "W^UK and the query, and nothing could be folded.", ha="center", fontsize=7.5, color="0.3")
    return fig
