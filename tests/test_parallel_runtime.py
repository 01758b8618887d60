"""The multi-process runtime: real gloo processes run each schedule on a dslearn CausalLM cut into stages.

Losses and gradients must equal one process running the whole batch (tolerance: loss 1e-5 absolute,
gradients 1e-6 absolute + 1e-4 relative; fp32 sums in a different order, observed ~2e-8). Several
schedules share one launch to pay the ~3 s torch import per process once. Failures must stop every rank
within a bounded time, with an error naming the rank, and leave no process behind.
"""

import time

import pytest
import torch
from helpers import assert_same_step, pipeline_config, token_batch

from dslearn.parallel.launcher import WorkerError, launch
from dslearn.parallel.oracle import compare_dualpipev_worker, torch_dualpipev_available
from dslearn.parallel.runtime import reference_step, run_pipeline, run_pipelines, split_model

pytestmark = pytest.mark.usefixtures("no_orphans")


def _assert_matches_reference(out, cfg, ids, tg, label):
    assert_same_step(out, reference_step(cfg.to_dict(), 0, ids, tg), label)


def _jobs(specs, latency=0.0):
    ids, tg = token_batch(8)
    return [dict(schedule_name=name, config=pipeline_config(layers).to_dict(), seed=0, input_ids=ids, targets=tg,
                 num_microbatches=m, latency=latency) for name, layers, m in specs]


def test_two_ranks_every_schedule_equals_one_process():
    specs = [("1f1b", 2, 4), ("zb1p", 2, 4), ("dualpipe", 2, 4), ("dualpipev", 4, 4)]
    ids, tg = token_batch(8)
    for (name, layers, _), out in zip(specs, run_pipelines(_jobs(specs), 2, timeout=90)):
        _assert_matches_reference(out, pipeline_config(layers), ids, tg, f"{name} on 2 ranks")
        assert len(out["timelines"]) == 2 and all(e[3] <= e[4] for tl in out["timelines"] for e in tl)


def test_injected_latency_delays_but_does_not_change_results():
    """Each transfer is usable 50 ms after its send. 1F1B on 2 ranks with 4 micro-batches has at least 4
    transfers on its critical path (the simulator says 0.215 s for near-free ops); the gradients stay exact."""
    ids, tg = token_batch(8)
    out = run_pipelines(_jobs([("1f1b", 2, 4)], latency=0.05), 2, timeout=90)[0]
    _assert_matches_reference(out, pipeline_config(2), ids, tg, "1f1b with latency")
    assert out["makespan"] > 4 * 0.05
    assert sum(e[5] for tl in out["timelines"] for e in tl) > 0.1  # the time spent waiting is recorded


def test_four_ranks_equal_one_process():
    specs = [("zb1p", 4, 4), ("dualpipe", 4, 8), ("dualpipev", 8, 8)]
    ids, tg = token_batch(8)
    for (name, layers, _), out in zip(specs, run_pipelines(_jobs(specs), 4, timeout=120)):
        _assert_matches_reference(out, pipeline_config(layers), ids, tg, f"{name} on 4 ranks")


@pytest.mark.skipif(not torch_dualpipev_available(), reason="torch.distributed.pipelining.ScheduleDualPipeV "
                                                            "needs torch >= 2.6")
def test_dualpipev_equals_torch_schedule_dualpipev():
    """The outside check: torch's DualPipeV on the same stages and micro-batches gives the same loss and grads."""
    cfg, (ids, tg) = pipeline_config(4), token_batch(8, seed=1)
    res = launch(compare_dualpipev_worker, 2, args=(cfg.to_dict(), 0, ids, tg, 4), timeout=90)
    theirs = {**res[0]["torch"]["grads"], **res[1]["torch"]["grads"]}
    ours = {**res[0]["dslearn"]["grads"], **res[1]["dslearn"]["grads"]}
    our_losses = {**res[0]["dslearn"]["losses"], **res[1]["dslearn"]["losses"]}
    assert [our_losses[m] for m in range(4)] == pytest.approx(res[0]["torch"]["losses"], abs=1e-6)
    assert set(theirs) == set(ours) and len(ours) == len(reference_step(cfg.to_dict(), 0, ids, tg)["grads"])
    for n, g in theirs.items():
        torch.testing.assert_close(ours[n], g, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("how,match", [("raise", r"rank 1 failed: RuntimeError: injected failure on rank 1"),
                                       ("exit", r"rank 1 died with exit code 3")])
def test_a_failing_rank_stops_everyone(how, match):
    cfg, (ids, tg) = pipeline_config(2), token_batch(8)
    t = time.monotonic()
    with pytest.raises(WorkerError, match=match) as info:
        run_pipeline("1f1b", 2, cfg, ids, tg, 4, timeout=60, fail={"rank": 1, "how": how})
    assert info.value.rank == 1
    assert time.monotonic() - t < 30


def test_a_hung_rank_times_out():
    cfg, (ids, tg) = pipeline_config(2), token_batch(8)
    t = time.monotonic()
    with pytest.raises(WorkerError, match=r"timed out after 8 s: rank\(s\) \[0, 1\] still running"):
        run_pipeline("1f1b", 2, cfg, ids, tg, 4, timeout=8, fail={"rank": 1, "how": "hang"})
    assert time.monotonic() - t < 20


def test_split_model_and_bad_world_size():
    from dslearn.model.transformer import CausalLM

    stages = split_model(CausalLM(pipeline_config(5)), 3)
    assert [len(s.layers) for s in stages] == [2, 1, 2] and stages[0].is_first and stages[2].is_last
    with pytest.raises(ValueError, match="cannot cut 2 decoder layers into 3 stages"):
        split_model(CausalLM(pipeline_config(2)), 3)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        launch(print, 0)
