"""Chapters 03–04's pictures: DeepSeekMoE's layer (fine-grained routed experts + shared experts, a top-K gate)
and DeepSeek-V3's gate (sigmoid affinities, bias that chooses but does not weigh, node-limited groups)."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dslearn.diagrams._draw import arrow, box, canvas

SHARED, ROUTED, CHOSEN = "#d9efd9", "#eeeeee", "#f5e1c8"


def deepseekmoe_layer(n_routed: int = 16, n_shared: int = 2, chosen: tuple[int, ...] = (1, 6, 7, 12)) -> Figure:
    """u_t → shared experts (always) + the gate's top-K_r of N_r narrow routed experts, weighted by g_{i,t},
    summed with the residual. Above: one coarse expert cut into m = 4 fine ones of a quarter of the width."""
    fig, ax = canvas(10.0, 5.0, "DeepSeekMoE: fine-grained routed experts + shared experts (chapter 03)")
    box(ax, 4.1, 0.15, 1.8, 0.4, "u_t (token's hidden state)", "#dde8f5")
    box(ax, 0.2, 1.0, 2.2, 0.55, f"{n_shared} shared experts\nsee every token", SHARED)
    box(ax, 3.0, 1.0, 4.0, 0.55, "gate: s_{i,t} = Softmax_i(u_tᵀ e_i), keep TopK(s, K_r)\n"
        "(V2: top-M devices first — device-limited routing)", "#dde8f5")
    arrow(ax, (4.6, 0.55), (1.3, 1.0))
    arrow(ax, (5.0, 0.55), (5.0, 1.0))
    w = 9.6 / n_routed
    for i in range(n_routed):
        x = 0.2 + i * w
        box(ax, x, 2.2, w - 0.08, 0.5, f"E{i}", CHOSEN if i in chosen else ROUTED, fontsize=6.5)
        if i in chosen:
            arrow(ax, (5.0, 1.55), (x + w / 2, 2.2), color="C1")
    ax.text(5.0, 2.85, f"N_r = {n_routed} narrow routed experts; the token uses K_r = {len(chosen)} of them "
            "(coloured), each output × g_{i,t}", ha="center", fontsize=8)
    box(ax, 3.4, 3.5, 3.2, 0.5, "h'_t = u_t + Σ shared FFN(u_t) + Σ g_{i,t} FFN_i(u_t)", "#ffffff")
    arrow(ax, (1.3, 1.55), (3.6, 3.5))
    arrow(ax, (5.0, 2.7), (5.0, 3.5))
    ax.text(5.0, 4.45, "fine-grained segmentation: one expert of width I → m experts of width I/m, route to m·K "
            "of them — same compute, C(mN, mK) ≫ C(N, K) combinations", ha="center", fontsize=7.5, color="0.3")
    return fig


def v3_gate(n_group: int = 4, per_group: int = 4, topk_group: int = 2, k: int = 4) -> Figure:
    """The V3 gate on a toy router (random scores and biases, seeded): biased scores s + b choose — a group's
    score is the sum of its top K_r/M biased scores (8/4 = 2 in V3), the best M groups are kept, TopK inside
    them — and the weights come from the unbiased s normalised over the chosen experts, × routed_scaling_factor."""
    g = torch.Generator().manual_seed(3)
    E = n_group * per_group
    s = torch.rand(E, generator=g) * 0.8 + 0.1
    b = (torch.rand(E, generator=g) - 0.5) * 0.3
    c = s + b
    top_per_group = max(1, k // topk_group)
    gscore = c.view(n_group, per_group).topk(top_per_group, dim=-1).values.sum(-1)
    kept = set(gscore.topk(topk_group).indices.tolist())
    mask = torch.tensor([e // per_group in kept for e in range(E)])
    chosen = set(c.masked_fill(~mask, float("-inf")).topk(k).indices.tolist())
    fig, ax = canvas(10.0, 5.0, "DeepSeek-V3's gate: sigmoid, a bias that chooses but does not weigh (chapter 04)")
    w = 9.6 / E
    for e in range(E):
        x = 0.2 + e * w
        color = CHOSEN if e in chosen else (ROUTED if e // per_group in kept else "#fafafa")
        ax.add_patch(_bar(x, 1.0, w - 0.06, float(s[e]) * 1.6, "C0"))
        ax.add_patch(_bar(x, 1.0 + float(s[e]) * 1.6, w - 0.06, float(b[e]) * 1.6, "C3" if b[e] > 0 else "C2"))
        box(ax, x, 0.45, w - 0.06, 0.35, f"{e}", color, fontsize=6)
    for grp in range(n_group):
        x0 = 0.2 + grp * per_group * w
        ax.plot([x0, x0 + per_group * w - 0.06], [0.35, 0.35], color="k" if grp in kept else "0.7", lw=2)
        ax.text(x0 + per_group * w / 2, 0.12, f"group {grp}: Σtop-{top_per_group} = {gscore[grp]:.2f}"
                + (" kept" if grp in kept else ""), ha="center", fontsize=7)
    ax.text(0.2, 3.0, "blue: s_i = sigmoid(u·e_i)   red/green: bias b_i (+/−), outside autograd", fontsize=8)
    box(ax, 0.2, 3.4, 4.6, 1.0, f"1. choose with s + b: group score = sum of its top K_r/M\n"
        f"   biased scores (top-2 in V3: K_r = 8, M = 4); keep {topk_group} groups\n"
        f"2. TopK({k}) of s + b inside the kept groups (orange)", "#dde8f5")
    box(ax, 5.2, 3.4, 4.6, 1.0, "3. weigh with s only: g_i = s_i / Σ_chosen s_j\n"
        "   × routed_scaling_factor (2.5 in V3's released config)\n"
        "4. after each step: b_i ∓ γ if expert i was over/underloaded", "#d9efd9")
    return fig


def _bar(x, y, w, h, color):
    return Rectangle((x, y), w, h, color=color, alpha=0.8)
