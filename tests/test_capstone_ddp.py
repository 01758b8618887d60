"""The capstone under ``torchrun --nproc-per-node 2`` (gloo, CPU): the stages that train with ``Trainer``
(pretrain, long_context, cold_start_sft, rejection_sampling_sft) are data-parallel and follow the one-process
run step for step; GRPO and rejection sampling's generation run on rank 0 alone and give the same numbers too; a
run stopped after a stage on two processes continues on one, and the other way round; a process count the
plan's micro-batches cannot be shared by is refused in one line."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from capstone_helpers import REPO
from helpers import child_env, latest_weights, launch_cmd

HELPER = str(REPO / "tests" / "capstone_helpers.py")
UNTIL = "rejection_sampling_sft"  # every kind of stage: data-parallel Trainer stages, GRPO alone, sampling alone
STAGES = ["pretrain", "long_context", "cold_start_sft", "reasoning_rl", "rejection_sampling_sft"]
PARALLEL = {"pretrain", "long_context", "cold_start_sft", "rejection_sampling_sft"}


def _run(out, until: str = UNTIL, procs: int = 1) -> None:
    r = subprocess.run(launch_cmd(procs, HELPER, str(out), until), env=child_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _train_rows(out, stage: str) -> list[tuple]:
    rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r.get("grad_norm")) for r in rows if r["kind"] == "train"]


def _same_run(a, b) -> None:
    for stage in STAGES:
        ra, rb = _train_rows(a, stage), _train_rows(b, stage)
        assert ra and [r[0] for r in ra] == [r[0] for r in rb], stage
        for (step, la, ga), (_, lb, gb) in zip(ra, rb):
            assert la == pytest.approx(lb, rel=1e-5, abs=1e-7), (stage, step)
            assert ga == pytest.approx(gb, rel=1e-4, abs=1e-7), (stage, step)
        wa, wb = latest_weights(a / stage), latest_weights(b / stage)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=f"{stage}: {k}")
    pa = json.loads((a / UNTIL / "pairs.json").read_text())
    pb = json.loads((b / UNTIL / "pairs.json").read_text())
    assert pa == pb  # rejection sampling drew the same samples from the same RL checkpoint


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_process")
    _run(out)
    return out


def test_two_processes_follow_the_one_process_run(single, tmp_path):
    _run(tmp_path, procs=2)
    _same_run(single, tmp_path)
    for stage in STAGES:  # the Trainer stages really ran on both ranks; GRPO on rank 0 alone
        summary = json.loads((tmp_path / stage / "summary.json").read_text())
        assert summary["processes"] == (2 if stage in PARALLEL else 1), stage


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_continues_in_the_other_mode(single, tmp_path, first, then):
    _run(tmp_path, until="cold_start_sft", procs=first)
    assert not (tmp_path / "reasoning_rl").exists()
    _run(tmp_path, procs=then)
    _same_run(single, tmp_path)


def test_a_process_count_the_plan_cannot_split_is_one_line(tmp_path):
    """--quick splits every training step into 2 micro-batches: 3 processes cannot share them equally."""
    cmd = launch_cmd(3, "-m", "dslearn", "capstone", "--quick", "--no-progress", "--out", str(tmp_path / "r"))
    r = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.stderr[-2000:]  # said once, by rank 0
    assert "--nproc-per-node 3" in lines[0] and "2 micro-batches" in lines[0]
    assert "Traceback" not in r.stderr.split("error:")[0]
    assert not (tmp_path / "r").exists()  # refused before anything was written
