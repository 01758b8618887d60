"""Measured timelines: bubbles and per-op costs from a real run, and the schedule figure.

A real run (``runtime.run_pipeline``) returns, for every rank, ``(kind, stage, mb, start, end, waited)``
per op, in seconds from a common barrier. The op's compute time is ``end − start − waited``
(``waited``: time blocked on a point-to-point transfer inside the op; an MoE all-to-all counts as part of
the op, which cannot go on without it). From that:

    busy(r)          Σ compute times of rank r
    makespan         the last end over all ranks
    bubble fraction  Σ_r (makespan − busy(r)) / (ranks · makespan)      (as SimResult.bubble_fraction)

``measured_costs`` averages the compute time of each op kind into a ``Costs`` so the simulator can
predict the same schedule; ``plot_timeline`` draws simulated or measured events the way
DeepSeek-V3's Figure 5 draws DualPipe: one row per rank, a cell per op, its micro-batch written in it,
forward/backward/weight colours, and the second direction in a darker shade.

This module only reads timelines; the runs that produce them (``measure_schedules``: 2 ranks with
point-to-point latency; ``measure_expert_parallel``: PP × EP = 2 × 2 with all-to-all latency) are
experiments, in ``dslearn.studies.parallel``.
"""

from __future__ import annotations

from statistics import mean

from .simulator import Costs, SimResult

COLORS = {"F": "#f5b971", "B": "#8fd18f", "W": "#9db8e8", "BW": "#59b359", "FB": "#e8a0c8"}


def measured_events(timelines: list[list[tuple]]) -> list[tuple]:
    """[(rank, kind, stage, mb, start, end)] with each op's compute part (its waiting cut off the front)."""
    return [(r, k, s, m, start + waited, end) for r, tl in enumerate(timelines) for k, s, m, start, end, waited in tl]


def simulated_events(result: SimResult) -> list[tuple]:
    return [(e.rank, e.op.kind, e.op.parts()[0].stage, e.op.parts()[0].mb, e.start, e.end) for e in result.timeline]


def measured_bubble(timelines: list[list[tuple]]) -> dict:
    """Makespan, per-rank busy and idle time, and the bubble fraction of a real run."""
    makespan = max(e[4] for tl in timelines for e in tl)
    busy = [sum(end - start - waited for _, _, _, start, end, waited in tl) for tl in timelines]
    idle = [makespan - b for b in busy]
    return {"makespan": makespan, "busy": busy, "idle": idle,
            "bubble_fraction": sum(idle) / (len(timelines) * makespan)}


def measured_costs(timelines: list[list[tuple]], comm: float = 0.0) -> Costs:
    """Mean compute time per op kind → Costs (B is the full backward: BW if measured, else B + W)."""
    by: dict[str, list[float]] = {}
    for tl in timelines:
        for k, _, _, start, end, waited in tl:
            by.setdefault(k, []).append(end - start - waited)
    avg = {k: mean(v) for k, v in by.items()}
    F = avg["F"] if "F" in avg else avg["FB"] / 3  # no lone forward measured: assume B = 2F, so F&B = 3F
    if "B" in avg and "W" in avg:
        B_in, W = avg["B"], avg["W"]
        B = avg.get("BW", B_in + W)
        W = min(W, B)
    else:
        B = avg["BW"]
        W = B / 2  # unused by schedules without a split backward
    return Costs(F=F, B=B, W=W, FB=avg.get("FB"), comm=comm)


def plot_timeline(events: list[tuple], ax=None, title: str = "", num_ranks: int | None = None,
                  second_direction=None, unit: str = "s"):
    """Draw events [(rank, kind, stage, mb, start, end)] as a schedule chart; returns the axes.

    ``second_direction(stage, mb) -> bool`` picks the darker shade (DualPipe's second stream)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * (num_ranks or 4)))
    R = num_ranks or 1 + max(e[0] for e in events)
    for r, k, s, m, start, end in events:
        color = to_rgb(COLORS[k])
        if second_direction is not None and second_direction(s, m):
            color = tuple(0.7 * c for c in color)
        ax.broken_barh([(start, end - start)], (R - 1 - r - 0.4, 0.8), facecolors=color, edgecolor="k", linewidth=0.3)
        if end - start > 0:
            ax.text((start + end) / 2, R - 1 - r, str(m), ha="center", va="center", fontsize=6, clip_on=True)
    ax.set_yticks(range(R))
    ax.set_yticklabels([f"rank {R - 1 - i}" for i in range(R)])
    ax.set_xlabel(f"time ({unit})")
    ax.set_title(title)
    labels = {"F": "forward", "B": "backward for input", "W": "backward for weights", "BW": "full backward",
              "FB": "overlapped F&B"}
    kinds = sorted({e[1] for e in events}, key=list(COLORS).index)
    ax.legend(handles=[Patch(facecolor=COLORS[k], edgecolor="k", label=labels[k]) for k in kinds],
              loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=len(kinds), fontsize=7, frameon=False)
    return ax
