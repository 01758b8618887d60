"""Chapter 07's concept diagram: DeepSeek-V3's multi-token prediction chain (V3 §2.2, Figure 3, redrawn). The main
model predicts t_{i+1}; MTP depth k normalises the previous depth's hidden state h_i^{k−1} (hnorm) and the embedding of
t_{i+k} (enorm), concatenates them, projects 2d → d (eh_proj, the report's M_k), runs one transformer block and
predicts t_{i+k+1} through the *shared* output head. L = L_Main + (λ/D) Σ_k L_MTP^k. Names follow the released
checkpoint (hnorm, enorm, eh_proj, shared_head)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch


def mtp_modules(depths: int = 2, T: int = 4) -> Figure:
    """The main model and ``depths`` sequential MTP depths over T input tokens: shared embedding and output head
    in green, each depth's own norms, projection and block in orange."""
    if depths < 1 or T < 1:
        raise ValueError(f"depths and T must be >= 1, got depths={depths}, T={T}")
    fig, ax = plt.subplots(figsize=(4.2 * (depths + 1), 6.2))
    shared, own, main_c, tok_c = "#b7e1b0", "#f9cf9f", "#a9c8ec", "#eeeeee"
    colw, gap = 3.2, 0.9

    def box(x, y, w, h, text, color, fs=8.5):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color,
                                    ec="0.3", lw=0.8))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs)

    def arrow(x0, y0, x1, y1, **kw):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=9, lw=0.9,
                                     color=kw.get("color", "0.25"), connectionstyle=kw.get("cs", "arc3")))

    for k in range(depths + 1):
        x = k * (colw + gap)
        name = "main model" if k == 0 else f"MTP depth {k}"
        ax.text(x + colw / 2, 9.55, name, ha="center", fontsize=10, weight="bold")
        toks = " ".join(f"$t_{{{i + 1 + k}}}$" for i in range(T))
        tgts = " ".join(f"$t_{{{i + 2 + k}}}$" for i in range(T))
        box(x, 0.0, colw, 0.6, "inputs " + toks, tok_c)
        box(x, 1.0, colw, 0.7, "embedding (shared)", shared)
        arrow(x + colw / 2, 0.6, x + colw / 2, 1.0)
        if k == 0:
            box(x, 2.3, colw, 3.4, "transformer blocks × L\n(MLA, MoE …)", main_c, fs=9)
            arrow(x + colw / 2, 1.7, x + colw / 2, 2.3)
            h_top = 5.7
        else:
            box(x, 2.1, colw * 0.47, 0.6, "hnorm", own)
            box(x + colw * 0.53, 2.1, colw * 0.47, 0.6, "enorm", own)
            arrow(x + colw * 0.765, 1.7, x + colw * 0.765, 2.1)  # Emb(t_{i+k}) → enorm
            box(x, 3.0, colw, 0.6, "concat [hnorm ; enorm] → 2d", own)
            arrow(x + colw * 0.235, 2.7, x + colw * 0.3, 3.0)
            arrow(x + colw * 0.765, 2.7, x + colw * 0.7, 3.0)
            box(x, 3.9, colw, 0.6, f"eh_proj ($M_{k}$): 2d → d", own)
            arrow(x + colw / 2, 3.6, x + colw / 2, 3.9)
            box(x, 4.8, colw, 0.9, f"one transformer block\n$\\mathrm{{TRM}}_{k}$", own)
            arrow(x + colw / 2, 4.5, x + colw / 2, 4.8)
            h_top = 5.7
            # h^{k-1}: the previous column's states before its final norm, across the gap into hnorm
            arrow(x - gap, 5.3, x, 2.4, color="C3")
            ax.text(x - gap / 2 + 0.18, 4.1, f"$h^{{{k - 1}}}_i$", color="C3", fontsize=11, ha="center")
        box(x, 6.2, colw, 0.6, "final norm" if k == 0 else "shared_head.norm", main_c if k == 0 else own)
        arrow(x + colw / 2, h_top, x + colw / 2, 6.2)
        box(x, 7.2, colw, 0.6, "output head (shared)", shared)
        arrow(x + colw / 2, 6.8, x + colw / 2, 7.2)
        loss = "$\\mathcal{L}_{\\mathrm{Main}}$" if k == 0 else f"$\\mathcal{{L}}^{{{k}}}_{{\\mathrm{{MTP}}}}$"
        box(x, 8.2, colw, 0.9, loss + "  targets\n" + tgts, tok_c)
        arrow(x + colw / 2, 7.8, x + colw / 2, 8.2)
    ax.set_xlim(-0.3, (depths + 1) * (colw + gap) - gap + 0.3)
    ax.set_ylim(-0.3, 10.0)
    ax.axis("off")
    ax.set_title("Multi-token prediction (V3 §2.2): depth k reads the states of depth k−1 and the embedding of "
                 "the token k ahead,\nand predicts one token further; the loss is "
                 "$\\mathcal{L}_{\\mathrm{Main}} + \\frac{\\lambda}{D}\\sum_k \\mathcal{L}^k_{\\mathrm{MTP}}$",
                 fontsize=10)

    return fig
