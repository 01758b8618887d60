"""Chapter 08's concept diagram: one GRPO step as R1-Zero runs it (DeepSeekMath §4.1, R1 §2.2) — sample a
group of G outputs per prompt from π_old, score them with rule-based rewards, standardise the rewards within
the group (no value network), and take μ gradient steps on the clipped objective with a KL penalty to π_ref."""

from __future__ import annotations

from matplotlib.figure import Figure

from dslearn.diagrams._draw import BACKWARD, COMM, FORWARD, HIGH, STORE, arrow, box, canvas


def grpo_loop(group_size: int = 4) -> Figure:
    """The GRPO loop: prompt → G samples → rewards → group advantages → clipped update → new π_old."""
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group of one has no baseline), got {group_size}")
    fig, ax = canvas(11.0, 4.4, f"GRPO: the group is the baseline (G = {group_size} outputs per prompt)")
    box(ax, 0.2, 1.9, 1.3, 0.8, "prompt q\n(a verifiable\ntask)", STORE, 7.5)
    box(ax, 1.9, 1.9, 1.5, 0.8, "policy π_old\nsamples G outputs", FORWARD, 7.5)
    arrow(ax, (1.52, 2.3), (1.88, 2.3))
    h = 0.42
    for i in range(group_size):
        y = 3.35 - i * (h + 0.12) - (4 - group_size) * 0.27
        box(ax, 3.9, y - h + 0.3, 1.6, h, f"o_{i + 1}: <think>…</think>\n<answer>…</answer>", COMM, 6)
        box(ax, 5.9, y - h + 0.3, 1.1, h, f"r_{i + 1} = acc + fmt", HIGH, 6.5)
        arrow(ax, (3.42, 2.3), (3.88, y - h / 2 + 0.3))
        arrow(ax, (5.52, y - h / 2 + 0.3), (5.88, y - h / 2 + 0.3))
    box(ax, 7.4, 1.85, 1.5, 0.9, "A_i = (r_i − mean r)\n/ std r\nper group", HIGH, 7.5)
    arrow(ax, (7.02, 2.3), (7.38, 2.3))
    ax.text(6.45, 3.8, "rule-based rewards", ha="center", fontsize=7)
    box(ax, 9.2, 1.6, 1.65, 1.4, "μ steps on\nmin(ρA, clip(ρ)A)\n− β·KL(π_θ‖π_ref)\nρ = π_θ / π_old", BACKWARD, 7.5)
    arrow(ax, (8.92, 2.3), (9.18, 2.3))
    box(ax, 9.2, 0.2, 1.65, 0.6, "π_ref (frozen\nbase model)", STORE, 7)
    arrow(ax, (10.0, 0.82), (10.0, 1.58), dashed=True)
    arrow(ax, (9.7, 3.05), (2.65, 2.75), color="0.35", connectionstyle="arc3,rad=0.35")
    ax.text(5.9, 4.1, "π_old ← π_θ, next batch of prompts", ha="center", fontsize=7.5, color="0.35")
    ax.text(5.4, 0.35, "groups whose rewards are all equal have A = 0: no gradient", ha="center", fontsize=7,
            color="0.3")
    return fig
