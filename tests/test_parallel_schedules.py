"""Pipeline schedules as data and the simulator, held to DeepSeek-V3 Table 2 (bubble, parameters, activations)."""

import pytest

from dslearn.parallel import (
    Costs,
    ScheduleError,
    build_schedule,
    check_complete,
    format_timeline,
    simulate,
    table_bubble,
    with_communication,
)

SHAPES = [(2, 4), (4, 8), (4, 12), (6, 12), (8, 16), (8, 24)]  # (PP, micro-batches)
# B is the full backward. The table's formulas assume the forward and the input backward cost the same
# (F = B − W, the zero-bubble paper's regime) with W <= F and B <= F&B <= F + B; there they are exact.
EXACT_COSTS = [Costs(1, 2, 1), Costs(2, 3, 1, FB=4), Costs(1, 2, 1, FB=2.2), Costs(1.5, 2.5, 1, FB=2.5),
               Costs(1, 1.5, 0.5, FB=2.5), Costs(2, 2.3, 0.3, FB=3)]


def _build(name, pp, m):
    """DualPipeV takes PP/2 devices for PP stages; the others PP ranks."""
    return build_schedule(name, pp // 2, m) if name == "dualpipev" else build_schedule(name, pp, m)


@pytest.mark.parametrize("name", ["1f1b", "zb1p", "dualpipe", "dualpipev"])
@pytest.mark.parametrize("pp,m", SHAPES)
def test_every_chunk_runs_once_on_its_rank(name, pp, m):
    check_complete(_build(name, pp, m))


@pytest.mark.parametrize("name", ["1f1b", "zb1p", "dualpipe", "dualpipev"])
@pytest.mark.parametrize("pp,m", SHAPES)
@pytest.mark.parametrize("costs", EXACT_COSTS, ids=str)
def test_bubble_matches_table_2(name, pp, m, costs):
    res = simulate(_build(name, pp, m), costs)
    assert res.bubble == pytest.approx(table_bubble(name, pp, costs), abs=1e-9)
    if name in ("1f1b", "zb1p"):  # every rank idles the same
        assert max(res.idle) - min(res.idle) == pytest.approx(0, abs=1e-9)


def test_outside_the_regime_the_simulator_and_table_part():
    """When W > F the postponed W's no longer fit the gaps: ZB1P idles more than its formula says."""
    c = Costs(1.5, 4, 2, FB=4.5)
    assert simulate(build_schedule("zb1p", 6, 12), c).bubble > table_bubble("zb1p", 6, c)


@pytest.mark.parametrize("pp,m", SHAPES)
def test_parameters_and_activations(pp, m):
    want = {"1f1b": (1, pp), "zb1p": (1, pp), "dualpipe": (2, pp + 1), "dualpipev": (1, pp + 1)}
    for name, (params, acts) in want.items():
        s = _build(name, pp, m)
        res = simulate(s, Costs(1, 2, 1))
        assert [s.parameter_copies(r) for r in range(s.num_ranks)] == [params] * s.num_ranks
        assert max(res.peak_activations) == acts, name


def test_ordering_of_schedules():
    """The point of the chapter in one line: DualPipe < ZB1P < 1F1B bubbles at PP=8."""
    c = Costs(1, 2, 1, FB=2.5)
    b = {n: simulate(_build(n, 8, 16), c).bubble for n in ("1f1b", "zb1p", "dualpipe")}
    assert b["dualpipe"] < b["zb1p"] < b["1f1b"]


def test_communication_latency_moves_makespans():
    """Non-overlapped latency stalls every send; hidden (overlapped) latency costs far less."""
    s = build_schedule("dualpipe", 4, 8)
    base = simulate(s, Costs(1, 2, 1)).makespan
    hidden = simulate(s, Costs(1, 2, 1, comm=0.5)).makespan
    exposed = simulate(s, Costs(1, 2, 1, comm=0.5, overlap_comm=False)).makespan
    assert base < hidden < exposed


def test_communication_ops_pair_up():
    s = build_schedule("dualpipev", 2, 4)
    rows = with_communication(s)
    sends = sorted((o.kind[-1], o.stage, o.mb, r, o.peer) for r, row in enumerate(rows) for o in row
                   if o.kind.startswith("SEND"))
    recvs = sorted((o.kind[-1], o.stage + (-1 if o.kind == "RECV_F" else 1), o.mb, o.peer, r)
                   for r, row in enumerate(rows) for o in row if o.kind.startswith("RECV"))
    assert sends == recvs and len(sends) == 2 * 4 * 2  # V crosses ranks twice... F and B each way
    assert "FB[" in str(s) and "rank 1" in format_timeline(simulate(s))


@pytest.mark.parametrize("name,pp,m,match", [
    ("dualpipe", 3, 6, "even number of ranks"),
    ("dualpipe", 4, 6, ">= 2·PP = 8"),
    ("dualpipe", 4, 9, "even number of micro-batches"),
    ("dualpipev", 2, 3, "at least as many micro-batches as stages"),
    ("zb1p", 4, 3, "at least as many micro-batches as ranks"),
    ("1f1b", 0, 4, "num_ranks must be an integer >= 1"),
    ("1f1b", 2, 2.5, "num_microbatches must be an integer"),
    ("gpipe", 2, 4, "unknown schedule"),
])
def test_invalid_shapes_raise(name, pp, m, match):
    with pytest.raises(ScheduleError, match=match):
        build_schedule(name, pp, m)


def test_deadlock_is_reported():
    s = build_schedule("1f1b", 2, 2)
    s.ops[1] = list(reversed(s.ops[1]))  # rank 1 wants a backward before any forward
    with pytest.raises(ScheduleError, match="deadlocks"):
        simulate(s)
    with pytest.raises(ValueError, match="W <= B"):
        Costs(1, 1, 2)


def test_every_valid_shape_builds_and_runs():
    """Any valid (ranks, micro-batches) gives a complete schedule that the simulator runs without deadlock."""
    built = 0
    for name in ("1f1b", "zb1p", "dualpipe", "dualpipev"):
        for ranks in range(1, 9):
            for m in range(1, 21):
                try:
                    s = build_schedule(name, ranks, m)
                except ScheduleError:
                    continue
                check_complete(s)
                simulate(s, Costs(1, 2, 1, comm=0.3))
                built += 1
    assert built > 400
