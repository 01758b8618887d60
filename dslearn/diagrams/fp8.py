"""Chapter 05's concept diagram: DeepSeek-V3's FP8 GEMM (V3 §3.3, Figures 6 and 7) as a dataflow —
1×128 activation tiles and 128×128 weight blocks, each with its own FP32 scale; FP8 products accumulated in
the tensor core's limited (~14-bit) accumulator; every N_C = 128 elements of K the partial sum is promoted to
an FP32 accumulator on the CUDA cores, multiplied by its two scales."""

from __future__ import annotations

from matplotlib.figure import Figure

from dslearn.diagrams._draw import COMM, FORWARD, HIGH, STORE, arrow, box, canvas, grid


def fp8_dataflow() -> Figure:
    """Y = X·Wᵀ in FP8 the V3 way: tile scales on the way in, promotion to FP32 on the way out."""
    fig, ax = canvas(11.0, 4.6, "FP8 GEMM, DeepSeek-V3 style: fine-grained scales in, FP32 promotion out")
    # inputs and their tilings
    grid(ax, 0.2, 2.9, 2.0, 0.9, 4, 4, FORWARD, "X (T × K), BF16: 1×128 tiles")
    ax.text(1.2, 2.75, "one scale per token per 128 channels", ha="center", va="top", fontsize=7)
    grid(ax, 0.2, 0.6, 2.0, 1.3, 2, 2, HIGH, "W (N × K), FP32 master: 128×128 blocks")
    ax.text(1.2, 0.45, "one scale per 128×128 block", ha="center", va="top", fontsize=7)
    # quantisers
    box(ax, 2.7, 2.95, 1.7, 0.8, "quantise\ns = amax/448\nq = x/s → E4M3", STORE, 7.5)
    box(ax, 2.7, 0.85, 1.7, 0.8, "quantise\ns = amax/448\nq = w/s → E4M3", STORE, 7.5)
    arrow(ax, (2.25, 3.35), (2.65, 3.35))
    arrow(ax, (2.25, 1.25), (2.65, 1.25))
    # the tensor core
    box(ax, 5.0, 1.55, 2.1, 1.5, "tensor core (WGMMA)\nFP8 × FP8 products,\nK in chunks of 32,\n~14-bit accumulator",
        COMM, 7.5)
    arrow(ax, (4.45, 3.35), (5.0, 2.75), "q_X (FP8)")
    arrow(ax, (4.45, 1.25), (5.0, 1.85), "q_W (FP8)")
    # promotion
    box(ax, 7.7, 1.55, 2.0, 1.5, "CUDA cores, FP32:\nacc += partial\n· s_X[t, k_b] · s_W[n_b, k_b]", HIGH, 7.5)
    arrow(ax, (7.15, 2.3), (7.65, 2.3))
    ax.text(7.4, 3.2, "every N_C = 128\nelements of K:\npromote", ha="center", fontsize=7)
    arrow(ax, (8.7, 1.5), (6.05, 1.5), color="0.45", connectionstyle="arc3,rad=-0.4")
    ax.text(7.4, 0.85, "the tensor core restarts at 0", ha="center", fontsize=7, color="0.35")
    ax.annotate("", xy=(8.7, 3.1), xytext=(3.55, 3.8), arrowprops=dict(arrowstyle="-|>", color="0.45", lw=0.8,
                ls="--", connectionstyle="arc3,rad=-0.15"))
    ax.text(6.1, 3.95, "FP32 scales s_X, s_W travel beside the FP8 values", ha="center", fontsize=7, color="0.35")
    ax.annotate("", xy=(8.7, 3.1), xytext=(3.55, 0.8), arrowprops=dict(arrowstyle="-", color="0.45", lw=0.8, ls="--",
                connectionstyle="arc3,rad=0.35"))
    box(ax, 9.95, 1.9, 0.9, 0.8, "Y\n(BF16 /\nFP32)", FORWARD, 7.5)
    arrow(ax, (9.72, 2.3), (9.93, 2.3))
    ax.text(5.5, 0.15, "kept in higher precision (§3.3.1): embedding, output head, MoE gating, normalisation, "
            "attention operators; master weights, gradients, optimizer state", ha="center", fontsize=7, color="0.3")
    return fig
