"""Measured-timeline analysis (bubble, per-op costs) and the schedule figure, on synthetic timelines."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from dslearn.parallel import Costs, build_schedule, simulate  # noqa: E402
from dslearn.parallel.timeline import (  # noqa: E402
    measured_bubble,
    measured_costs,
    measured_events,
    plot_timeline,
    simulated_events,
)


def _as_measured(result):
    """A simulated run written the way the runtime records one: (kind, stage, mb, start, end, waited)."""
    tls = [[] for _ in range(result.schedule.num_ranks)]
    for e in result.timeline:
        c = e.op.parts()[0]
        tls[e.rank].append((e.op.kind, c.stage, c.mb, e.start, e.end, 0.0))
    return tls


@pytest.mark.parametrize("name,ranks,m", [("1f1b", 4, 8), ("zb1p", 4, 8), ("dualpipe", 4, 8), ("dualpipev", 2, 8)])
def test_measured_quantities_of_a_simulated_run_agree_with_the_simulator(name, ranks, m):
    costs = Costs(1.0, 2.0, 1.0, FB=2.5)
    res = simulate(build_schedule(name, ranks, m), costs)
    meas = measured_bubble(_as_measured(res))
    assert meas["makespan"] == pytest.approx(res.makespan)
    assert meas["bubble_fraction"] == pytest.approx(res.bubble_fraction)
    got = measured_costs(_as_measured(res))
    assert (got.F, got.B) == pytest.approx((1.0, 2.0))
    if name != "1f1b":
        assert got.W == pytest.approx(1.0)
    if name.startswith("dualpipe"):
        assert got.FB == pytest.approx(2.5)


def test_waiting_is_not_busy_time():
    tls = [[("F", 0, 0, 0.0, 1.0, 0.0), ("BW", 0, 0, 1.0, 4.0, 1.0)], [("F", 1, 0, 1.0, 2.0, 0.0),
                                                                     ("BW", 1, 0, 2.0, 4.0, 0.0)]]
    meas = measured_bubble(tls)
    assert meas["busy"] == [3.0, 3.0] and meas["idle"] == [1.0, 1.0] and meas["bubble_fraction"] == 0.25
    assert measured_events(tls)[1][4:] == (2.0, 4.0)  # the compute part starts after the wait


def test_plot_timeline_draws_every_op():
    res = simulate(build_schedule("dualpipe", 4, 8), Costs(1, 2, 1, FB=2.5))
    ax = plot_timeline(simulated_events(res), num_ranks=4, title="t",
                       second_direction=lambda s, m: res.schedule.direction[m] == 1)
    assert len(ax.collections) == len(res.timeline)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rank 3", "rank 2", "rank 1", "rank 0"]
