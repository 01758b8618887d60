"""A discrete-event simulator for pipeline schedules: timelines, bubbles, memory.

Given a ``Schedule`` (each rank's ordered ops) and what each op costs, every rank runs its list
in order, one op at a time; an op starts when the rank is free *and* its inputs have arrived:

    start(op) = max(free(rank), ready(deps))         end(op) = start(op) + cost(op)
    F(s, m)   needs F(s−1, m)        B(s, m) needs B(s+1, m) and F(s, m)       W(s, m) needs B(s, m)

A dependency on another rank arrives ``comm`` later (the point-to-point latency). With
``overlap_comm=True`` that latency is hidden behind whatever the sender does next (what
asynchronous sends and DualPipe's F&B pairs buy); with ``overlap_comm=False`` the sender also
stalls for ``comm`` after every send.

Costs follow DeepSeek-V3 Table 2: ``B`` is a *full* backward chunk, ``W`` its weight part, so a
split input backward costs B−W; ``FB`` is an overlapped F&B pair (default F+B: no overlap gain).

Table 2's formulas assume a forward costs the same as an input backward (F = B − W, the zero-bubble
paper's regime), W <= F and B <= F&B <= F + B; there the simulated bubble equals them exactly
(tests/test_parallel_schedules.py). Outside that regime the simulator gives the true number and the
formulas drift (e.g. with W > F the postponed W's of ZB1P no longer fit the gaps they were meant to fill).

    paper            code
    -----            ----
    F, B, W, F&B     Costs.F, Costs.B, Costs.W, Costs.FB
    bubble           SimResult.bubble: the most idle time of any rank, makespan − busy(rank)
    parameters       Schedule.parameter_copies(rank)
    activations      SimResult.peak_activations[rank]: stage-activations alive at once, F start → W end

A 1F1B timeline on PP=3, M=4, F=1, B=2 (``format_timeline``; digits are forwards, ``BB`` a full
backward, ``.`` idle):

    rank 0 | 012....BB3BB.BB.BB
    rank 1 | .01..BB2BB3BB.BB..
    rank 2 | ..0BB1BB2BB3BB....
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .schedules import Op, Schedule, ScheduleError


@dataclass(frozen=True)
class Costs:
    """Per-op times in any unit. B is the full backward (input + weight parts), as in the V3 report."""

    F: float = 1.0
    B: float = 2.0
    W: float = 1.0
    FB: float | None = None  # an overlapped F&B pair; None → F + B
    comm: float = 0.0  # point-to-point latency between ranks
    overlap_comm: bool = True  # False: the sender stalls for `comm` after each send

    def __post_init__(self):
        for name in ("F", "B", "W", "comm"):
            if getattr(self, name) < 0:
                raise ValueError(f"cost {name} must be >= 0, got {getattr(self, name)}")
        if self.W > self.B:
            raise ValueError(f"W={self.W} is part of the full backward B={self.B}, so W <= B")

    @property
    def pair(self) -> float:
        return self.F + self.B if self.FB is None else self.FB

    def of(self, op: Op) -> float:
        return {"F": self.F, "B": self.B - self.W, "W": self.W, "BW": self.B, "FB": self.pair}[op.kind]


@dataclass
class Event:
    rank: int
    op: Op
    start: float
    end: float


@dataclass
class SimResult:
    schedule: Schedule
    costs: Costs
    timeline: list[Event]
    makespan: float
    busy: list[float]  # compute time of each rank
    peak_activations: list[int]
    idle: list[float] = field(default_factory=list)  # makespan − busy, per rank

    @property
    def bubble(self) -> float:
        """The largest idle time of any rank (for 1F1B every rank idles the same)."""
        return max(self.idle)

    @property
    def bubble_fraction(self) -> float:
        """Idle share of all rank-time: Σ idle / (ranks · makespan)."""
        return sum(self.idle) / (len(self.idle) * self.makespan) if self.makespan else 0.0


def _deps(schedule: Schedule, c: Op) -> list[tuple[str, int, int]]:
    """The (kind, stage, mb) results that compute op c waits for; kind "B" covers B and BW."""
    S = schedule.num_stages
    if c.kind == "F":
        return [("F", c.stage - 1, c.mb)] if c.stage > 0 else []
    if c.kind in ("B", "BW"):
        return [("F", c.stage, c.mb)] + ([("B", c.stage + 1, c.mb)] if c.stage < S - 1 else [])
    return [("B", c.stage, c.mb)]  # W


def simulate(schedule: Schedule, costs: Costs | None = None) -> SimResult:
    """Run every rank's list in order; raise ScheduleError if no rank can move (a deadlock)."""
    costs = costs or Costs()
    R = schedule.num_ranks
    done: dict[tuple[str, int, int], tuple[float, int]] = {}  # result → (time, rank)
    free = [0.0] * R
    pos = [0] * R
    busy = [0.0] * R
    timeline: list[Event] = []
    total = sum(len(o) for o in schedule.ops)
    while len(timeline) < total:
        moved = False
        for r in range(R):
            while pos[r] < len(schedule.ops[r]):
                op = schedule.ops[r][pos[r]]
                ready = free[r]
                blocked = False
                for c in op.parts():
                    for key in _deps(schedule, c):
                        if key not in done:
                            blocked = True
                            break
                        t, src = done[key]
                        ready = max(ready, t + (costs.comm if src != r else 0.0))
                    if blocked:
                        break
                if blocked:
                    break
                end = ready + costs.of(op)
                sends = 0
                for c in op.parts():
                    key = ("B", c.stage, c.mb) if c.kind == "BW" else (c.kind, c.stage, c.mb)
                    done[key] = (end, r)
                    if c.kind == "BW":
                        done[("W", c.stage, c.mb)] = (end, r)
                    nxt = c.stage + 1 if c.kind == "F" else c.stage - 1
                    if c.kind != "W" and 0 <= nxt < schedule.num_stages and schedule.rank_of(nxt, c.mb) != r:
                        sends += 1
                timeline.append(Event(r, op, ready, end))
                busy[r] += costs.of(op)
                free[r] = end + (0.0 if costs.overlap_comm else sends * costs.comm)
                pos[r] += 1
                moved = True
        if not moved:
            stuck = {r: str(schedule.ops[r][pos[r]]) for r in range(R) if pos[r] < len(schedule.ops[r])}
            raise ScheduleError(f"{schedule.name} deadlocks: every rank waits, next ops {stuck}")
    makespan = max(free)
    peaks = [_peak_activations(schedule, [e for e in timeline if e.rank == r]) for r in range(R)]
    return SimResult(schedule, costs, timeline, makespan, busy, peaks, [makespan - b for b in busy])


def _peak_activations(schedule: Schedule, events: list[Event]) -> int:
    """Stage-activations a rank holds at once: from the start of F(s, m) to the end of its W (or BW)."""
    points = []
    for e in events:
        for c in e.op.parts():
            if c.kind == "F":
                points.append((e.start, 1))
            elif c.kind in ("W", "BW"):
                points.append((e.end, -1))
    live = peak = 0
    for _, d in sorted(points, key=lambda p: (p[0], p[1])):  # at equal times, frees come first
        live += d
        peak = max(peak, live)
    return peak


def table_bubble(name: str, pp: int, costs: Costs) -> float:
    """DeepSeek-V3 Table 2's bubble for a schedule on PP ranks (DualPipeV: pass its 2·ranks stages as PP)."""
    key = name.lower()
    F, B, W = costs.F, costs.B, costs.W
    if key == "1f1b":
        return (pp - 1) * (F + B)
    if key == "zb1p":
        return (pp - 1) * (F + B - 2 * W)
    if key in ("dualpipe", "dualpipev"):
        return (pp / 2 - 1) * (costs.pair + B - 3 * W)
    raise ValueError(f"no table entry for {name!r}")


def format_timeline(result: SimResult, unit: float | None = None, width: int = 120) -> str:
    """An ASCII picture: one row per rank, one character per ``unit`` of time (default: the shortest op).

    F → its micro-batch (mod 10), B → 'b', W → 'w', BW → 'B', FB → '#', idle → '.'"""
    unit = unit or min(c for c in (result.costs.F, result.costs.B - result.costs.W, result.costs.W) if c > 0)
    n = min(width, int(round(result.makespan / unit)))
    rows = []
    for r in range(result.schedule.num_ranks):
        line = ["."] * n
        for e in result.timeline:
            if e.rank != r:
                continue
            ch = {"F": str(e.op.mb % 10), "B": "b", "W": "w", "BW": "B", "FB": "#"}[e.op.kind]
            for t in range(int(round(e.start / unit)), min(n, int(round(e.end / unit)))):
                line[t] = ch
        rows.append(f"rank {r} | " + "".join(line))
    return "\n".join(rows)
