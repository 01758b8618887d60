"""Chapter 00's picture: the DeepSeek-LLM (LLaMA-style) pre-norm decoder layer, bytes in, logits out."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dslearn.diagrams._draw import arrow, box, canvas


def decoder_block() -> Figure:
    """The baseline: embedding, n_layer × [RMSNorm → attention (RoPE on q, k) → + ; RMSNorm → SwiGLU → +],
    final RMSNorm, output head. The residual stream runs up the left."""
    fig, ax = canvas(6.4, 7.2, "DeepSeek-LLM's decoder: pre-norm, RoPE, SwiGLU (chapter 00)")
    box(ax, 1.6, 0.2, 2.6, 0.45, "bytes → embedding  (n_vocab × d_model)", "#eeeeee")
    ax.add_patch(Rectangle((0.9, 1.0), 4.8, 4.6, fill=False, ls="--", ec="0.5"))
    ax.text(5.65, 5.45, "× n_layer", ha="right", fontsize=9, color="0.3")
    x_res = 1.25
    arrow(ax, (2.9, 0.65), (2.9, 1.0))
    ax.plot([x_res, x_res], [1.1, 5.6], color="0.2", lw=1.2)
    ax.text(x_res - 0.1, 3.3, "residual stream h", rotation=90, ha="right", va="center", fontsize=8)
    # attention sub-block
    box(ax, 2.0, 1.2, 2.8, 0.4, "RMSNorm")
    box(ax, 2.0, 1.85, 2.8, 0.7, "causal self-attention\nq, k rotated by RoPE\n(MHA in 7B, GQA-8 in 67B)", "#f5e1c8")
    box(ax, 3.05, 2.8, 0.7, 0.35, "+", "#ffffff", fontsize=11)
    arrow(ax, (3.4, 1.6), (3.4, 1.85))
    arrow(ax, (3.4, 2.55), (3.4, 2.8))
    arrow(ax, (x_res, 1.4), (2.0, 1.4))
    arrow(ax, (x_res, 2.98), (3.05, 2.98))
    ax.text(3.85, 2.98, "u = h + Attn(RMSNorm(h))", fontsize=7.5, va="center")
    # feed-forward sub-block
    box(ax, 2.0, 3.4, 2.8, 0.4, "RMSNorm")
    box(ax, 2.0, 4.05, 2.8, 0.7, "SwiGLU feed-forward\nW_down(SiLU(W_gate x) ⊙ W_up x)", "#d9efd9")
    box(ax, 3.05, 5.0, 0.7, 0.35, "+", "#ffffff", fontsize=11)
    arrow(ax, (3.4, 3.15), (3.4, 3.4))
    arrow(ax, (3.4, 3.8), (3.4, 4.05))
    arrow(ax, (3.4, 4.75), (3.4, 5.0))
    arrow(ax, (x_res, 5.18), (3.05, 5.18))
    ax.text(3.85, 5.18, "h' = u + FFN(RMSNorm(u))", fontsize=7.5, va="center")
    box(ax, 2.0, 5.95, 2.8, 0.4, "final RMSNorm → output head", "#eeeeee")
    arrow(ax, (3.4, 5.35), (3.4, 5.95))
    box(ax, 2.0, 6.55, 2.8, 0.35, "next-byte logits (256)", "#eeeeee")
    arrow(ax, (3.4, 6.35), (3.4, 6.55))
    return fig
