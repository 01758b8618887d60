"""Training runs never lose or corrupt anything: durable writes, damaged checkpoints, torn logs, SIGKILL at
random points (mid-write included), SIGTERM/Ctrl-C, concurrent runs on one directory, a full disk.

The child processes train a tiny dense model (one thread) and die the way a preempted job dies; the parent
resumes in-process and checks the result equals an uninterrupted run exactly."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import tiny_dense_config

from dslearn.data import TokenStream
from dslearn.model import CausalLM
from dslearn.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, read_metrics, save_checkpoint
from dslearn.train import checkpoint as ckpt
from dslearn.train.checkpoint import CheckpointWarning, RunLock
from dslearn.train.loop import Interrupted

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")
REPO = Path(__file__).resolve().parents[1]
TIMING = {"tokens_per_s", "mfu"}
CONFIG = tiny_dense_config(hidden_size=32, intermediate_size=48, num_attention_heads=2, max_position_embeddings=32)
TEXT = ("def add(a, b):\n    return a + b\n\n" * 60).encode()
RUN = dict(steps=6, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=1, eval_every=3, eval_windows=2, log_every=1,
           checkpoint_every=1, progress=False)


def trainer(run_dir, **overrides) -> Trainer:
    torch.manual_seed(0)
    return Trainer(CausalLM(CONFIG, seed=0), TrainConfig(**(RUN | overrides)), TokenStream(TEXT[:1500]),
                   TokenStream(TEXT[1500:]), run_dir=run_dir)


CHILD = """
import os, signal, sys, time, json
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
torch.set_num_threads(1)
import test_checkpoint_durability as t
from dslearn.train.loop import Interrupted
mode, run_dir, arg = sys.argv[1], sys.argv[2], sys.argv[3]
overrides = json.loads(sys.argv[4])
if mode == "fsync":  # SIGKILL just before the arg-th fsync: every write boundary of a save
    calls, real = [0], os.fsync
    def fsync(fd):
        calls[0] += 1
        if calls[0] == int(arg):
            os.kill(os.getpid(), signal.SIGKILL)
        real(fd)
    os.fsync = fsync
if mode == "lock":
    from dslearn.train.checkpoint import RunLock
    lock = RunLock(run_dir)
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
tr = t.trainer(run_dir, **overrides)
if mode in ("slow", "time"):
    step_function = tr.step_function
    def slow(step):
        time.sleep(float(arg))
        return step_function(step)
    tr.step_function = slow
print("ready", flush=True)
try:
    tr.fit()
except Interrupted as e:
    print(e, flush=True)
    sys.exit(130)
"""


def child(mode: str, run_dir, arg="0", **overrides) -> subprocess.Popen:
    code = CHILD.format(repo=str(REPO), tests=str(REPO / "tests"))
    return subprocess.Popen([sys.executable, "-c", code, mode, str(run_dir), str(arg), json.dumps(overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, line: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = proc.stdout.readline()
        if got.strip() == line:
            return
        if not got and proc.poll() is not None:
            raise AssertionError(f"child ended before {line!r}: {proc.stderr.read()}")
    raise AssertionError(f"child never printed {line!r}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its metrics (timing aside) and final weights."""
    run = tmp_path_factory.mktemp("ref") / "run"
    tr = trainer(run)
    tr.fit()
    return without_timing(read_metrics(run)), {k: v.clone() for k, v in tr.model.state_dict().items()}


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_same_as_reference(run, reference, model):
    records, weights = reference
    assert without_timing(read_metrics(run)) == records
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    debris = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert debris == [], debris


# --- durable writes -------------------------------------------------------------------------------
def test_every_file_and_directory_of_a_checkpoint_is_fsynced(tmp_path, monkeypatch):
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    model = CausalLM(CONFIG)
    final = save_checkpoint(tmp_path / "ck", model, None, 7)
    names = {p.name for p in synced}
    assert {"model.safetensors", "state.pt", "meta.json"} <= names, names
    assert any(p.name == ".LATEST.tmp" or p.name == "LATEST" for p in synced), "LATEST is fsynced before the swap"
    assert tmp_path / "ck" in synced, "the checkpoints directory is fsynced after the renames"
    assert any(p.name.startswith(".tmp-step_000007") for p in synced), "the checkpoint's own directory"
    meta = json.loads((final / "meta.json").read_text())
    assert set(meta["sha256"]) == {"model.safetensors", "state.pt"}


# --- damaged checkpoints ----------------------------------------------------------------------------
def _two_checkpoints(tmp_path):
    run = tmp_path / "run"
    tr = trainer(run, steps=2)
    tr.fit()
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_000001", "step_000002"]
    return run, ck


DAMAGE = {
    "truncated weights": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
    "garbage weights": lambda d: (d / "model.safetensors").write_bytes(os.urandom(4000)),
    "one flipped byte": lambda d: _flip(d / "model.safetensors"),
    "truncated state": lambda d: (d / "state.pt").write_bytes((d / "state.pt").read_bytes()[:50]),
    "truncated meta": lambda d: (d / "meta.json").write_text((d / "meta.json").read_text()[:40]),
    "missing weights": lambda d: (d / "model.safetensors").unlink(),
    "empty LATEST": lambda d: (d.parent / "LATEST").write_text(""),
    "dangling LATEST": lambda d: (shutil.rmtree(d), (d.parent / "LATEST").write_text("step_000009")),
}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, damage):
    run, ck = _two_checkpoints(tmp_path)
    older = CausalLM(CONFIG)
    load_checkpoint(ck / "step_000001", older)
    DAMAGE[damage](ck / "step_000002")
    model = CausalLM(CONFIG, seed=5)
    if damage not in ("empty LATEST",):  # an empty LATEST alone: step_000002 is still intact and newest
        with pytest.warns(CheckpointWarning, match="step_000001") if damage != "dangling LATEST" else _nothing():
            meta = load_checkpoint(run, model)
        assert meta["step"] == 1
        for k, v in model.state_dict().items():
            assert torch.equal(v, older.state_dict()[k]), k
    else:
        assert load_checkpoint(run, model)["step"] == 2
    # the run resumes from there and redoes step 2
    tr = trainer(run, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        tr.fit()
    assert tr.step == 2 and load_checkpoint(run, CausalLM(CONFIG))["step"] == 2


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
    run, ck = _two_checkpoints(tmp_path)
    for d in ck.glob("step_*"):
        _flip(d / "state.pt")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*state.pt is damaged"):
        load_checkpoint(run, CausalLM(CONFIG))
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        trainer(run, steps=2).fit()


def test_nan_weights_are_refused_on_load(tmp_path):
    model = CausalLM(CONFIG)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "ck", model, None, 1)
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN/inf in lm_head.weight"):
        load_checkpoint(tmp_path / "ck", CausalLM(CONFIG))


def die_at(tr: Trainer, at: int) -> None:
    """Make ``tr`` stop (SystemExit) when step ``at`` begins, after logging the steps before it."""
    step_function = tr.step_function

    def step_fn(step):
        if step == at:
            raise SystemExit("killed")
        return step_function(step)

    tr.step_function = step_fn


# --- the metrics log --------------------------------------------------------------------------------
def test_a_torn_last_metrics_line_does_not_stop_a_resume(tmp_path, reference):
    run = tmp_path / "run"
    tr = trainer(run)
    die_at(tr, 3)
    with pytest.raises(SystemExit):
        tr.fit()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 4, "lo')  # killed mid-append
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3]
    tr = trainer(run)
    tr.fit()
    assert_same_as_reference(run, reference, tr.model)


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_records(tmp_path, reference):
    run = tmp_path / "run"
    tr = trainer(run, checkpoint_every=0, checkpoint_minutes=None)
    die_at(tr, 4)
    with pytest.raises(SystemExit):
        tr.fit()
    tr.loop.unlock()
    assert not (run / "checkpoints").exists() and len(read_metrics(run, "train")) == 4
    tr = trainer(run)
    tr.fit()
    assert_same_as_reference(run, reference, tr.model)


# --- pruning, debris, the disk -----------------------------------------------------------------------
def test_pruning_orders_checkpoints_by_step_number_not_text(tmp_path):
    model = CausalLM(CONFIG)
    for step in (999_998, 999_999, 1_000_000, 1_000_001):
        save_checkpoint(tmp_path, model, None, step, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_1000000", "step_1000001"]
    assert (tmp_path / "LATEST").read_text() == "step_1000001"


def test_stale_temporary_directories_are_swept(tmp_path):
    for name in (".tmp-step_000003-deadbeef", ".old-step_000002-cafebabe"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, CausalLM(CONFIG), None, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "step_000004"]


def test_a_full_disk_is_reported_as_such_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    model = CausalLM(CONFIG)
    save_checkpoint(tmp_path, model, None, 1)

    def full(*a, **k):  # what torch.save raises on ENOSPC
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(ckpt.torch, "save", full)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 0))
    with pytest.raises(CheckpointError, match="^no space left on device: could not write checkpoint step_000002"):
        save_checkpoint(tmp_path, model, None, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "step_000001"]
    assert load_checkpoint(tmp_path, CausalLM(CONFIG))["step"] == 1


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk(tmp_path):
    """On a 1 MiB tmpfs (root only): a checkpoint of ~0.3 MB fits twice but not three times; pruning first
    makes room for the third, and a model too big for the disk is 'no space left on device'."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("needs root and mount to make a small tmpfs")
    try:
        small = CausalLM(CONFIG)
        for step in (1, 2, 3):  # keep=2 needs room for 3 while writing the third: pruned before the retry
            save_checkpoint(disk, small, None, step, keep=2)
        assert sorted(p.name for p in disk.glob("step_*"))[-1] == "step_000003"
        big = CausalLM(CONFIG.replace(hidden_size=128, intermediate_size=256, num_attention_heads=4))
        with pytest.raises(CheckpointError, match="^no space left on device"):
            save_checkpoint(disk, big, None, 4, keep=2)
        assert load_checkpoint(disk, CausalLM(CONFIG))["step"] == 3
        assert [p.name for p in disk.iterdir() if p.name.startswith(".")] == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --- SIGKILL at random points, mid-write included ---------------------------------------------------------
# each save: weights, state, meta, its directory, the checkpoints directory, LATEST, the directory again
# (os.fsync calls 1–7 of step 1's save, 8–14 of step 2's): mid-state, before the rename, before and
# after LATEST's swap, plus one point drawn at random
FSYNC_POINTS = [2, 5, 6, 13]


@pytest.mark.parametrize("k", FSYNC_POINTS + random.Random(17).sample(range(1, 7 * RUN["steps"]), 1))
def test_sigkill_at_every_write_boundary_resumes_exactly(tmp_path, reference, k, capsys):
    run = tmp_path / "run"
    proc = child("fsync", run, k)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    tr = trainer(run)
    tr.fit()
    assert_same_as_reference(run, reference, tr.model)


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_a_random_time_resumes_exactly(tmp_path, reference, seed):
    run = tmp_path / "run"
    proc = child("slow", run, 0.05)
    wait_for(proc, "ready")
    time.sleep(random.Random(seed).uniform(0.0, 0.4))
    proc.kill()
    proc.communicate(timeout=60)
    tr = trainer(run)
    tr.fit()
    assert_same_as_reference(run, reference, tr.model)


# --- resume by default, Ctrl-C and SIGTERM -----------------------------------------------------------------
def test_checkpoints_are_periodic_by_default():
    cfg = TrainConfig()
    assert cfg.checkpoint_every > 0 and cfg.checkpoint_minutes is not None
    assert cfg.loop_config().checkpoint_minutes == cfg.checkpoint_minutes


def test_time_based_checkpoints(tmp_path, monkeypatch):
    tr = trainer(tmp_path / "run", checkpoint_every=0, checkpoint_minutes=1.0)
    clock = [0.0]
    monkeypatch.setattr("dslearn.train.loop.time.monotonic", lambda: clock[0])
    saves = []
    save = tr.loop.save
    tr.loop.save = lambda: (saves.append(tr.step), save())[1]
    step_function = tr.step_function

    def step_fn(step):
        clock[0] += 25.0  # 25 s a step: a save every third step (60 s)
        return step_function(step)

    tr.step_function = step_fn
    tr.fit()
    assert saves == [3, 6]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_and_says_how_to_resume(tmp_path, reference, sig, capsys):
    run = tmp_path / "run"
    proc = child("slow", run, 0.2, checkpoint_every=0, checkpoint_minutes=None)
    wait_for(proc, "ready")
    end = time.monotonic() + 120
    while time.monotonic() < end and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = json.loads((run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text() / "meta.json")
                      .read_text())["step"]
    assert 1 <= step < RUN["steps"], out
    assert f"run the same command again to resume from step {step}" in out
    capsys.readouterr()
    tr = trainer(run)
    tr.fit()
    assert f"resuming from step {step}" in capsys.readouterr().out
    assert_same_as_reference(run, reference, tr.model)


def test_interrupt_in_process_raises_interrupted_after_saving(tmp_path):
    tr = trainer(tmp_path / "run", checkpoint_every=0, checkpoint_minutes=None)
    step_function = tr.step_function
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a shell's background job

    def step_fn(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 2: step 2 is finished first
        return step_function(step)

    tr.step_function = step_fn
    with pytest.raises(Interrupted, match="saved step 3 of 6"):
        tr.fit()
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text() == "step_000003"
    assert signal.getsignal(signal.SIGINT) is before  # the handler found is put back


# --- one run per directory -----------------------------------------------------------------------------------
def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = child("lock", run)
    try:
        wait_for(holder, "locked")
        with pytest.raises(CheckpointError, match=rf"run directory .*run is in use by another process \(pid "
                                                  rf"{holder.pid}\)"):
            trainer(run).fit()
        assert not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.communicate()
    trainer(run, steps=1).fit()  # the lock died with its holder


def test_two_concurrent_runs_one_wins_cleanly(tmp_path, reference):
    run = tmp_path / "run"
    a = child("slow", run, 1.5)  # 9 s of training: b starts and reaches fit meanwhile
    wait_for(a, "ready")
    b = child("slow", run, 0.05)
    out_b, err_b = b.communicate(timeout=300)
    out_a, err_a = a.communicate(timeout=300)
    assert a.returncode == 0, err_a
    assert b.returncode == 1 and "is in use by another process" in err_b, err_b
    tr = trainer(run)  # a finished run: resuming it changes nothing
    tr.fit()
    assert_same_as_reference(run, reference, tr.model)


def test_the_lock_is_released_when_fit_ends(tmp_path):
    run = tmp_path / "run"
    trainer(run, steps=1).fit()
    lock = RunLock(run)
    lock.acquire()
    lock.release()
