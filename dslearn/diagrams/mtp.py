"""Chapter 07's concept diagram: DeepSeek-V3's multi-token prediction modules (V3 §2.2, Figure 3). The main
model predicts t_{i+1}; MTP module k combines the previous depth's hidden state h_i^{k−1} with the embedding of
t_{i+k}, h'_i = M_k [RMSNorm(h_i^{k−1}); RMSNorm(Emb(t_{i+k}))], runs one transformer block and predicts
t_{i+k+1} through the *shared* output head. L_MTP = (λ/D) Σ_k L_MTP^k."""

from __future__ import annotations

from matplotlib.figure import Figure

from ._v3kit import COMM, FORWARD, HIGH, STORE, arrow, box, canvas


def mtp_modules(depth: int = 1) -> Figure:
    """The main model and ``depth`` MTP modules side by side, with the shared embedding and output head."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    width = 3.6 + 3.3 * depth
    fig, ax = canvas(width, 5.2, f"Multi-token prediction, depth D = {depth}: sequential modules, shared head")
    # main model column
    x = 0.3
    box(ax, x, 0.3, 2.6, 0.5, "Emb(t_i)  (shared embedding)", STORE)
    box(ax, x, 1.2, 2.6, 1.2, "main model:\nL transformer blocks", FORWARD, 8.5)
    box(ax, x, 2.8, 2.6, 0.5, "output head (shared)", STORE)
    box(ax, x, 3.7, 2.6, 0.6, "predict t_{i+1}\nloss L_Main", HIGH)
    arrow(ax, (x + 1.3, 0.82), (x + 1.3, 1.18))
    arrow(ax, (x + 1.3, 2.42), (x + 1.3, 2.78), "h_i⁰")
    arrow(ax, (x + 1.3, 3.32), (x + 1.3, 3.68))
    prev_h = (x + 2.62, 2.55)
    for k in range(1, depth + 1):
        x = 3.6 + 3.3 * (k - 1)
        box(ax, x, 0.3, 1.35, 0.5, f"Emb(t_(i+{k}))", STORE, 7.5)
        box(ax, x + 1.5, 0.3, 1.35, 0.5, "RMSNorm(h^(k−1))" if k > 1 else "RMSNorm(h⁰)", COMM, 7.5)
        box(ax, x, 1.0, 2.85, 0.55, f"concat → projection M_{k}  (2d → d)", COMM, 7.5)
        box(ax, x, 1.85, 2.85, 0.55, "one transformer block", FORWARD)
        box(ax, x, 2.8, 2.85, 0.5, "output head (shared)", STORE)
        box(ax, x, 3.7, 2.85, 0.6, f"predict t_(i+{k + 1})\nloss L_MTP^{k}", HIGH)
        arrow(ax, (x + 0.67, 0.82), (x + 0.67, 0.98), "RMSNorm", fontsize=6)
        arrow(ax, (x + 2.17, 0.82), (x + 2.17, 0.98))
        arrow(ax, (x + 1.42, 1.57), (x + 1.42, 1.83))
        arrow(ax, (x + 1.42, 2.42), (x + 1.42, 2.78), f"h_i^{k}")
        arrow(ax, (x + 1.42, 3.32), (x + 1.42, 3.68))
        arrow(ax, prev_h, (x + 2.17, 0.82), f"h^{k - 1}", color="0.4", connectionstyle="arc3,rad=0.25")
        prev_h = (x + 2.87, 2.15)
    ax.text(width / 2, 4.7, "training loss = L_Main + (λ/D) Σ_k L_MTP^k; at inference the modules can be dropped "
            "or used to draft tokens (speculative decoding)", ha="center", fontsize=7.5, color="0.3")
    return fig
