"""The multi-process launcher: a loopback-only rendezvous on a port it keeps, workers that die with the
launching process, helpers reaped, no temporary directory, and the rank that left early named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import dslearn.parallel.launcher as launcher
from dslearn.parallel.launcher import WorkerError, launch

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.usefixtures("no_orphans")
REPO = Path(__file__).resolve().parents[1]


def listening_addresses(rank, world_size):
    """The addresses this worker and the launching process listen on (TCP)."""
    out = set()
    for pid in (os.getpid(), os.getppid()):
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN:
                out.add(c.laddr.ip)
    return sorted(out)


def all_reduce_rank(rank, world_size, offset):
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(rank + offset)])
    dist.all_reduce(t)
    time.sleep(0.5)
    dist.all_reduce(t)
    return float(t)


def start_helper_and_return(rank, world_size, pid_file):
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Path(f"{pid_file}.{rank}").write_text(f"{os.getpid()} {helper.pid}")
    return helper.pid


def start_helper_and_hang(rank, world_size, pid_file):
    start_helper_and_return(rank, world_size, pid_file)
    time.sleep(300)


def leave_early(rank, world_size):
    import torch
    import torch.distributed as dist

    if rank == 1:
        return "bye"
    t = torch.zeros(1)
    dist.all_reduce(t)
    return float(t)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_rendezvous_listens_on_loopback_only():
    for addresses in launch(listening_addresses, 2, timeout=60):
        assert addresses and set(addresses) <= {"127.0.0.1", "::1"}, addresses


def test_two_launches_on_one_port_cannot_cross_talk(monkeypatch):
    """free_port handing both launches the same port (the race) must not matter: the store binds port 0."""
    monkeypatch.setattr(launcher, "free_port", lambda: 29517)
    results, errors = {}, []

    def go(offset):
        try:
            results[offset] = launch(all_reduce_rank, 2, args=(offset,), timeout=60)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=(o,)) for o in (0, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == {0: [2.0, 2.0], 100: [402.0, 402.0]}  # (0+1)·2 and (100+101)·2: no mixing


def test_helpers_of_a_rank_do_not_outlive_launch(tmp_path):
    helpers = launch(start_helper_and_return, 2, args=(str(tmp_path / "pids"),), timeout=60)
    time.sleep(0.2)
    assert not any(alive(h) for h in helpers), "a helper process outlived launch"


def test_workers_die_with_a_sigkilled_launcher(tmp_path):
    before = set(Path(tempfile.gettempdir()).glob("dslearn-launch-*"))
    code = ("import sys; sys.path[:0] = [sys.argv[2], sys.argv[3]]; import test_launcher as t; "
            "from dslearn.parallel.launcher import launch; launch(t.start_helper_and_hang, 2, args=(sys.argv[1],), "
            "timeout=300)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "pids"), str(REPO), str(REPO / "tests")])
    files = [tmp_path / f"pids.{r}" for r in range(2)]
    end = time.monotonic() + 120
    while time.monotonic() < end and not all(f.exists() and f.read_text() for f in files):
        time.sleep(0.1)
    workers = [int(f.read_text().split()[0]) for f in files]
    assert all(alive(w) for w in workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + 10
    while time.monotonic() < end and any(alive(w) for w in workers):
        time.sleep(0.1)
    try:
        assert not any(alive(w) for w in workers), "a worker outlived its launcher"
        assert set(Path(tempfile.gettempdir()).glob("dslearn-launch-*")) <= before, "a temp dir was left"
    finally:
        for f in files:
            for pid in map(int, f.read_text().split()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_the_rank_that_returned_early_is_named():
    with pytest.raises(WorkerError, match=r"rank 1 returned") as info:
        launch(leave_early, 2, timeout=20)
    assert info.value.rank == 1
