"""Pipeline schedules as plain data: 1F1B, ZB1P (zero bubble), DualPipe and DualPipeV.

Pipeline parallelism cuts the model into *stages* (consecutive layers) and places them on PP
devices (ranks). A batch is cut into M *micro-batches*; each rank runs, in a fixed order, the
operations of its stages on each micro-batch. A schedule is nothing more than that order:

    F   forward chunk of stage s on micro-batch m
    B   backward for inputs: dL/d(stage input), what the previous stage is waiting for
    W   backward for weights: dL/dW of the stage, needed by nobody until the optimizer step
    BW  a full backward (B and W together, as 1F1B does it)
    FB  the overlapped pair "F&B" of DualPipe: a forward chunk of one direction and a full
        backward chunk of the other, run together so that one's communication hides behind
        the other's computation (DeepSeek-V3 §3.2.1, Figure 4)

Sends and receives follow from placement: whenever consecutive stages of a micro-batch sit on
different ranks, an F sends activations forward and a B sends gradients back.
``with_communication`` writes them into each rank's list explicitly.

The four schedules (DeepSeek-V3 Table 2; F = forward chunk, B = *full* backward chunk,
W = weight part of it, F&B = an overlapped pair):

    method     bubble                     parameters   activations
    1F1B       (PP−1)(F+B)                1×           PP
    ZB1P       (PP−1)(F+B−2W)             1×           PP
    DualPipe   (PP/2−1)(F&B+B−3W)         2×           PP+1

1F1B (PipeDream-flush) on PP=4, M=8, F=1, B=2 (``simulator.format_timeline``: digits are forwards of
that micro-batch, ``BB`` a full backward, ``.`` idle):

    rank 0 | 0123......BB4BB5BB6BB7BB.BB.BB.BB
    rank 1 | .012....BB3BB4BB5BB6BB7BB.BB.BB..
    rank 2 | ..01..BB2BB3BB4BB5BB6BB7BB.BB....
    rank 3 | ...0BB1BB2BB3BB4BB5BB6BB7BB......

ZB1P (ZB-H1, Qi et al. 2023) splits the backward: B goes first, because the previous stage
waits for it, and W is postponed to fill what would have been the cool-down bubble (``b`` = B, ``w`` = W, W = F = B−W):

    rank 0 | 0123...bw4bw5bw6bw7bwbwbwbw
    rank 1 | .012..b3bw4bw5bw6bw7bwbwbww
    rank 2 | ..01.b2b3bw4bw5bw6bw7bwbwww
    rank 3 | ...0b1b2b3bw4bw5bw6bw7bwwww

DualPipe feeds micro-batches from *both* ends: rank i holds stage i for micro-batches that enter
at rank 0 and stage PP−1−i for those entering at rank PP−1 (so every stage's parameters live on
two ranks: 2×). In the steady state each rank alternates F&B pairs of the two directions
(``###``; here F&B = F + B, i.e. no overlap gain, so the picture shows only the ordering):

    rank 0 | 0124bw5###.###BB.###BBbwbw
    rank 1 | .04152BB#########BBBB.bbww
    rank 2 | .40516BB#########BBBB.bbww
    rank 3 | 4560bw1###.###BB.###BBbwbw

DualPipeV is the same schedule "cut in half": PP/2 ranks, rank i holding stages i and PP−1−i of a
single stream, which travels down the ranks and back up in a V; parameters are 1×.

The DualPipe/DualPipeV order is DeepSeek's (github.com/deepseek-ai/DualPipe, ``DualPipe.step``),
eight steps per rank; ``torch.distributed.pipelining.ScheduleDualPipeV`` uses the same steps.

    paper                          code
    -----                          ----
    PP (pipeline ranks)            num_ranks (DualPipeV: num_ranks = PP/2 devices, 2·num_ranks stages)
    micro-batches / chunks         num_microbatches (M)
    F, B, W, F&B                   Op.kind "F", "B" (input part) / "BW" (full), "W", "FB"
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEDULES = ("1f1b", "zb1p", "dualpipe", "dualpipev")
COMPUTE_KINDS = ("F", "B", "W", "BW", "FB")
COMM_KINDS = ("SEND_F", "RECV_F", "SEND_B", "RECV_B")


class ScheduleError(ValueError):
    """A schedule cannot be built (bad PP or micro-batch count) or cannot run (it deadlocks)."""


@dataclass(frozen=True)
class Op:
    """One entry of a rank's list. Compute ops carry (stage, mb); an "FB" carries its two halves
    in ``pair`` (an "F" and a "BW"); communication ops carry ``peer`` (the other rank)."""

    kind: str
    stage: int = -1
    mb: int = -1
    pair: tuple[Op, Op] | None = None
    peer: int = -1

    def parts(self) -> tuple[Op, ...]:
        """The compute ops inside this one: itself, or the two halves of an F&B pair."""
        return self.pair if self.kind == "FB" else (self,)

    def __str__(self) -> str:
        if self.kind == "FB":
            return f"FB[{self.pair[0]}|{self.pair[1]}]"
        if self.kind in COMM_KINDS:
            return f"{self.kind}(s{self.stage},m{self.mb}->{self.peer})"
        return f"{self.kind}{self.mb}@s{self.stage}"


@dataclass
class Schedule:
    """Every rank's ordered op list, plus where each (stage, micro-batch) runs.

    ``stage_rank[d][s]`` is the rank holding stage s for micro-batches of direction d
    (``direction[m]``); only DualPipe has a second direction."""

    name: str
    num_ranks: int
    num_microbatches: int
    num_stages: int
    ops: list[list[Op]]
    stage_rank: tuple[tuple[int, ...], ...]
    direction: tuple[int, ...] = field(default=())

    def rank_of(self, stage: int, mb: int) -> int:
        return self.stage_rank[self.direction[mb]][stage]

    def stages_on(self, rank: int) -> list[int]:
        """Model stages whose parameters this rank holds (two for DualPipe and DualPipeV)."""
        return sorted({s for row in self.stage_rank for s, r in enumerate(row) if r == rank})

    def parameter_copies(self, rank: int) -> float:
        """Parameters on ``rank`` relative to an even split of the model over all ranks (1× = 1/num_ranks)."""
        return len(self.stages_on(rank)) * self.num_ranks / self.num_stages

    def compute_ops(self, rank: int) -> list[Op]:
        return [p for op in self.ops[rank] for p in op.parts()]

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.num_ranks} ranks, {self.num_stages} stages, "
                 f"{self.num_microbatches} micro-batches"]
        for r, ops in enumerate(self.ops):
            lines.append(f"  rank {r}: " + " ".join(str(o) for o in ops))
        return "\n".join(lines)


def _check_pos_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScheduleError(f"{name} must be an integer >= 1, got {value!r}")


# ----------------------------------------------------------------------------------------------
def one_f_one_b(num_ranks: int, num_microbatches: int) -> Schedule:
    """1F1B: rank i runs PP−1−i warm-up forwards, then alternates F and a full backward BW."""
    _check_pos_int("num_ranks", num_ranks)
    _check_pos_int("num_microbatches", num_microbatches)
    p, m = num_ranks, num_microbatches
    ops = []
    for i in range(p):
        w = min(p - 1 - i, m)
        row = [Op("F", i, j) for j in range(w)]
        for j in range(m - w):
            row += [Op("F", i, w + j), Op("BW", i, j)]
        row += [Op("BW", i, j) for j in range(m - w, m)]
        ops.append(row)
    return Schedule("1F1B", p, m, p, ops, (tuple(range(p)),), (0,) * m)


def zb1p(num_ranks: int, num_microbatches: int) -> Schedule:
    """ZB1P (ZB-H1): 1F1B's order with the backward split in B and W. Rank i runs PP−1−i warm-up
    forwards, then F, B, W per micro-batch; in the cool-down it postpones its W's, running B as
    soon as the gradient arrives and one W after each B only once it has i W's in hand (rank 0,
    which waits longest, holds none back; the last rank holds back PP−1)."""
    _check_pos_int("num_ranks", num_ranks)
    _check_pos_int("num_microbatches", num_microbatches)
    p, m = num_ranks, num_microbatches
    if m < p:
        raise ScheduleError(f"ZB1P needs at least as many micro-batches as ranks: num_microbatches={m} < "
                            f"num_ranks={p}")
    ops = []
    for i in range(p):
        w = p - 1 - i
        row = [Op("F", i, j) for j in range(w)]
        pending: list[int] = []
        for j in range(m - w):
            row += [Op("F", i, w + j), Op("B", i, j)]
            pending.append(j)
            if len(pending) > i:
                row.append(Op("W", i, pending.pop(0)))
        for j in range(m - w, m):
            row.append(Op("B", i, j))
            pending.append(j)
            if len(pending) > i:
                row.append(Op("W", i, pending.pop(0)))
        row += [Op("W", i, j) for j in pending]
        ops.append(row)
    return Schedule("ZB1P", p, m, p, ops, (tuple(range(p)),), (0,) * m)


def _dualpipe_steps(n: int, h: int, chunks: int, phase_stage: tuple[int, int],
                    phase_mbs: tuple[list[int], list[int]]) -> list[Op]:
    """DeepSeek's eight steps for one rank at position h of a pipeline of n (half-)ranks that
    feeds ``chunks`` micro-batches through each of its two local chunks (phases 0 and 1)."""
    count = {(ph, k): 0 for ph in (0, 1) for k in ("F", "B")}
    weights: list[tuple[int, int]] = []  # W's postponed by a split backward, oldest first
    row: list[Op] = []

    def take(ph: int, k: str) -> Op:
        j = count[(ph, k)]
        count[(ph, k)] += 1
        return Op(k, phase_stage[ph], phase_mbs[ph][j])

    def f(ph):
        return take(ph, "F")

    def b(ph, zb):  # zb: split backward (B now, W queued) or full backward
        op = take(ph, "B")
        if zb:
            weights.append((op.stage, op.mb))
            return op
        return Op("BW", op.stage, op.mb)

    def w():
        if weights:
            s, m = weights.pop(0)
            row.append(Op("W", s, m))

    def fb(ph_f, ph_b):
        row.append(Op("FB", pair=(f(ph_f), b(ph_b, zb=False))))

    middle = h == n - 1
    for _ in range((n - h - 1) * 2):  # 1: nF0
        row.append(f(0))
    for _ in range(h + 1):  # 2: nF0F1
        row += [f(0), f(1)]
    for _ in range(n - h - 1):  # 3: nB1W1F1 (zero bubble)
        row.append(b(1, zb=True))
        w()
        row.append(f(1))
    for i in range(chunks - 2 * n + h + 1):  # 4: nF0B1F1B0, the main step
        if i == 0 and middle:  # not overlapped, to shorten the bubble
            row += [f(0), b(1, zb=False)]
        else:
            fb(0, 1)
        fb(1, 0)
    for _ in range(n - h - 1):  # 5: nB1F1B0
        row.append(b(1, zb=False))
        fb(1, 0)
    zb = False
    for i in range(h + 1):  # 6: nB1B0, the second half with zero bubble
        if i == (h + 1) // 2 and h % 2 == 1:
            zb = True
        row.append(b(1, zb))
        if i == (h + 1) // 2 and h % 2 == 0:
            zb = True
        row.append(b(0, zb))
    for _ in range(n - h - 1):  # 7: nWB0
        w()
        row.append(b(0, zb=True))
    while weights:  # 8: nW
        w()
    return row


def dualpipe(num_ranks: int, num_microbatches: int) -> Schedule:
    """DualPipe on PP ranks: micro-batches 0..M/2−1 enter at rank 0, M/2..M−1 at rank PP−1."""
    _check_pos_int("num_ranks", num_ranks)
    _check_pos_int("num_microbatches", num_microbatches)
    p, m = num_ranks, num_microbatches
    if p % 2:
        raise ScheduleError(f"DualPipe needs an even number of ranks (PP/2 from each end), got num_ranks={p}")
    if m % 2 or m < 2 * p:
        raise ScheduleError(f"DualPipe needs an even number of micro-batches >= 2·PP = {2 * p} (half enter from "
                            f"each end, and each half must fill the pipeline), got num_microbatches={m}")
    half = m // 2
    down, up = list(range(half)), list(range(half, m))
    ops = []
    for r in range(p):
        h = min(r, p - 1 - r)
        if r < p // 2:  # phase 0: the downward stream at stage r; phase 1: the upward one at stage p−1−r
            stages, mbs = (r, p - 1 - r), (down, up)
        else:
            stages, mbs = (p - 1 - r, r), (up, down)
        ops.append(_dualpipe_steps(p // 2, h, half, stages, mbs))
    stage_rank = (tuple(range(p)), tuple(p - 1 - s for s in range(p)))
    return Schedule("DualPipe", p, m, p, ops, stage_rank, (0,) * half + (1,) * half)


def dualpipev(num_ranks: int, num_microbatches: int) -> Schedule:
    """DualPipeV on num_ranks devices and 2·num_ranks stages: rank i holds stages i and 2·num_ranks−1−i."""
    _check_pos_int("num_ranks", num_ranks)
    _check_pos_int("num_microbatches", num_microbatches)
    n, m = num_ranks, num_microbatches
    if m < 2 * n:
        raise ScheduleError(f"DualPipeV needs at least as many micro-batches as stages (2·num_ranks = {2 * n}), "
                            f"got num_microbatches={m}")
    mbs = list(range(m))
    ops = [_dualpipe_steps(n, r, m, (r, 2 * n - 1 - r), (mbs, mbs)) for r in range(n)]
    stage_rank = (tuple(list(range(n)) + list(range(n - 1, -1, -1))),)
    return Schedule("DualPipeV", n, m, 2 * n, ops, stage_rank, (0,) * m)


_BUILDERS = {"1f1b": one_f_one_b, "zb1p": zb1p, "dualpipe": dualpipe, "dualpipev": dualpipev}


def build_schedule(name: str, num_ranks: int, num_microbatches: int) -> Schedule:
    """``build_schedule("dualpipe", 4, 8)``; names: 1f1b, zb1p, dualpipe, dualpipev (any case)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _BUILDERS:
        raise ScheduleError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    return _BUILDERS[key](num_ranks, num_microbatches)


# ----------------------------------------------------------------------------------------------
def with_communication(schedule: Schedule) -> list[list[Op]]:
    """Each rank's list with the point-to-point transfers written in: a RECV before the compute op
    that needs remote data, a SEND after the one that produced data for another rank.

    F(s, m) needs the output of F(s−1, m); B(s, m) (or BW) needs the input gradient of B(s+1, m).
    A real runtime posts the receives early and sends asynchronously; this list is the logical order."""
    S = schedule.num_stages
    out = []
    for rank, ops in enumerate(schedule.ops):
        row: list[Op] = []
        for op in ops:
            before, after = [], []
            for c in op.parts():
                if c.kind == "F":
                    if c.stage > 0 and (src := schedule.rank_of(c.stage - 1, c.mb)) != rank:
                        before.append(Op("RECV_F", c.stage, c.mb, peer=src))
                    if c.stage < S - 1 and (dst := schedule.rank_of(c.stage + 1, c.mb)) != rank:
                        after.append(Op("SEND_F", c.stage, c.mb, peer=dst))
                elif c.kind in ("B", "BW"):
                    if c.stage < S - 1 and (src := schedule.rank_of(c.stage + 1, c.mb)) != rank:
                        before.append(Op("RECV_B", c.stage, c.mb, peer=src))
                    if c.stage > 0 and (dst := schedule.rank_of(c.stage - 1, c.mb)) != rank:
                        after.append(Op("SEND_B", c.stage, c.mb, peer=dst))
            row += before + [op] + after
        out.append(row)
    return out


def check_complete(schedule: Schedule) -> None:
    """Every (stage, micro-batch) gets exactly one F, one input backward and one weight backward, on
    the rank that holds it, with W after B; raises ScheduleError otherwise."""
    seen: dict[tuple[str, int, int], int] = {}
    for rank in range(schedule.num_ranks):
        done_b = set()
        for c in schedule.compute_ops(rank):
            if schedule.rank_of(c.stage, c.mb) != rank:
                raise ScheduleError(f"rank {rank} runs {c}, but stage {c.stage} of micro-batch {c.mb} is on "
                                    f"rank {schedule.rank_of(c.stage, c.mb)}")
            kinds = ("B", "W") if c.kind == "BW" else (c.kind,)
            if c.kind == "W" and (c.stage, c.mb) not in done_b:
                raise ScheduleError(f"rank {rank} runs {c} before its B")
            if c.kind == "B":
                done_b.add((c.stage, c.mb))
            for k in kinds:
                seen[(k, c.stage, c.mb)] = seen.get((k, c.stage, c.mb), 0) + 1
    for k in ("F", "B", "W"):
        for s in range(schedule.num_stages):
            for m in range(schedule.num_microbatches):
                if seen.get((k, s, m), 0) != 1:
                    raise ScheduleError(f"{schedule.name}: {k} of stage {s}, micro-batch {m} appears "
                                        f"{seen.get((k, s, m), 0)} times (want 1)")
