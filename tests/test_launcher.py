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
import uuid
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


def start_marked_helper_and_hang(rank, world_size, pid_dir, marker, keep_pdeathsig=True):
    """Start a long-sleeping helper whose argv carries ``marker``, record both pids, then hang. Without
    ``keep_pdeathsig`` the rank first clears Linux's parent-death signal, as on a system that has none."""
    if not keep_pdeathsig:
        import ctypes

        assert ctypes.CDLL(None).prctl(1, 0, 0, 0, 0) == 0  # PR_SET_PDEATHSIG, 0: no signal
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", marker])
    tmp = Path(pid_dir) / f".rank{rank}"
    tmp.write_text(f"{os.getpid()} {helper.pid}")
    tmp.rename(Path(pid_dir) / f"rank{rank}")  # atomic: the test never reads half a file
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


def _marked(pid: int, marker: str) -> bool:
    """Is ``pid`` a live (not zombie) process that carries ``marker`` in its argv or environment? A pid the
    kernel reused for something else does not count."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        ident = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return state not in ("Z", "X") and marker.encode() in ident


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
@pytest.mark.parametrize("pdeathsig", ["kept", "cleared"])
def test_nothing_a_rank_started_outlives_a_sigkilled_launcher(tmp_path, pdeathsig):
    """SIGKILL the launching process: within seconds no rank and no process a rank started remains, also
    when the ranks do not have Linux's parent-death signal (the reaper alone must do it)."""
    marker = f"dslearn-orphan-test-{uuid.uuid4().hex}"
    code = ("import sys; sys.path[:0] = [sys.argv[3], sys.argv[4]]; import test_launcher as t; "
            "from dslearn.parallel.launcher import launch; "
            "launch(t.start_marked_helper_and_hang, 2, args=(sys.argv[1], sys.argv[2], sys.argv[5] == 'kept'), "
            "timeout=300)")
    env = {**os.environ, "DSLEARN_TEST_MARKER": marker}  # inherited by the ranks, whose argv we do not choose
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), marker, str(REPO), str(REPO / "tests"),
                             pdeathsig], env=env)
    files = [tmp_path / f"rank{r}" for r in range(2)]
    pids: list[int] = []
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and not all(f.exists() for f in files) and proc.poll() is None:
            time.sleep(0.1)
        assert all(f.exists() for f in files), f"the ranks never started their helpers (launcher rc {proc.poll()})"
        pids = [int(x) for f in files for x in f.read_text().split()]  # rank 0, helper 0, rank 1, helper 1
        assert all(_marked(pid, marker) for pid in pids), "a rank or helper was not running before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        end = time.monotonic() + 30  # generous: the machine is shared
        while time.monotonic() < end and any(_marked(pid, marker) for pid in pids):
            time.sleep(0.1)
        left = [pid for pid in pids if _marked(pid, marker)]
        assert left == [], f"process(es) {left} (rank, helper, rank, helper: {pids}) outlived the SIGKILLed launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if _marked(pid, marker):
                os.kill(pid, signal.SIGKILL)


def test_the_reaper_exits_without_killing_when_launch_ends(monkeypatch):
    """Whether launch returns or raises, it reaps its workers itself and tells the reaper so: the reaper
    exits 0 at once (its kill path is only for a launching process that died) and is not left running."""
    reapers = []

    class Recorded(launcher._Reaper):
        def __init__(self):
            super().__init__()
            reapers.append(self.proc)

    monkeypatch.setattr(launcher, "_Reaper", Recorded)
    assert launch(all_reduce_rank, 2, args=(0,), timeout=60) == [2.0, 2.0]
    with pytest.raises(WorkerError):
        launch(leave_early, 2, timeout=20)
    assert [r.returncode for r in reapers] == [0, 0]


def test_the_rank_that_returned_early_is_named():
    with pytest.raises(WorkerError, match=r"rank 1 returned") as info:
        launch(leave_early, 2, timeout=20)
    assert info.value.rank == 1
