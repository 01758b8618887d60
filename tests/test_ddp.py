"""Data parallelism (dslearn/train/ddp.py): the same training script under ``torchrun --nproc-per-node 2`` (gloo,
CPU) follows the single-process loss trajectory with the same global batch, and a checkpoint written by rank 0
resumes in either mode. The model is MLA + DeepSeekMoE with V3's bias update, so the expert load really has to
be summed over the ranks (with per-rank loads the biases, and then the routing, would drift apart)."""

from __future__ import annotations

import json
import subprocess

import pytest
from capstone_helpers import REPO
from helpers import child_env, latest_weights, launch_cmd

SCRIPT = str(REPO / "tests" / "ddp_helpers.py")


def _run(run_dir, *args, procs: int = 1, env_extra: dict | None = None, ok: bool = True):
    r = subprocess.run(launch_cmd(procs, SCRIPT, str(run_dir), *map(str, args)), env=child_env(**(env_extra or {})),
                       capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["moe/maxvio"], r["batch_size"]) for r in rows if r["kind"] == "train"]


def _close(a, b, rel=1e-4):
    assert [s for s, *_ in a] == [s for s, *_ in b]
    for (s, la, va, ba), (_, lb, vb, bb) in zip(a, b):
        assert la == pytest.approx(lb, rel=rel), s
        assert va == pytest.approx(vb, rel=rel, abs=1e-6) and ba == bb, s


def _weights_close(a, b):
    import torch
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    _run(d)
    return d


def test_two_processes_follow_the_single_process_trajectory(single, tmp_path):
    _run(tmp_path, procs=2)
    one, two = _losses(single), _losses(tmp_path)
    assert len(one) == 5 and one[0][1] == pytest.approx(two[0][1], rel=1e-6)  # the same first forward
    _close(one, two)
    _weights_close(latest_weights(single), latest_weights(tmp_path))


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_in_either_mode(single, tmp_path, first, then):
    _run(tmp_path, 2, procs=first)  # stopped after the checkpoint of step 2
    assert (tmp_path / "checkpoints" / "LATEST").read_text().strip() == "step_000002"
    _run(tmp_path, procs=then)
    _close(_losses(single), _losses(tmp_path))
    _weights_close(latest_weights(single), latest_weights(tmp_path))


@pytest.mark.parametrize("rank", [0, 1])
def test_a_signal_that_reaches_one_rank_stops_both_after_the_same_step(single, tmp_path, rank):
    """Ctrl-C reaches every worker of a terminal's torchrun, but not at the same moment; a SIGTERM may reach one.
    The ranks agree on stopping (one all-reduce per step), save that step's checkpoint together and exit; the
    rerun resumes it and ends where the uninterrupted run ends."""
    r = _run(tmp_path, procs=2, env_extra={"DDP_SIGINT": f"{rank}:2"}, ok=False)
    assert r.returncode != 0
    assert r.stderr.count("saved step 2 of 5") == 2, r.stderr[-3000:]  # both ranks stopped after step 2
    assert "a signal reached another process" in r.stderr
    assert (tmp_path / "checkpoints" / "LATEST").read_text().strip() == "step_000002"
    _run(tmp_path, procs=2)
    _close(_losses(single), _losses(tmp_path))
    _weights_close(latest_weights(single), latest_weights(tmp_path))
