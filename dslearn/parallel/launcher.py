"""Start N CPU processes that form a torch.distributed group, run a function in each, collect results.

    results = launch(fn, world_size=2, args=(...,), timeout=60)   # [fn(0, 2, ...), fn(1, 2, ...)]

Each worker is a fresh *spawned* Python process (so it works from Jupyter and under nbval, where
forking a process that already imported torch is unsafe): it limits torch to one thread (two
workers on two cores), joins a gloo process group (on GPUs the same code would pass
``backend="nccl"``), runs ``fn(rank, world_size, *args)`` and hands back its return value through a
pipe. ``fn`` must be importable by name (a function defined at the top level of a module, not in a
notebook cell).

Rendezvous. The parent binds a listening socket on **127.0.0.1, port 0** (the kernel picks a free
port, so two launches can never race for one) and serves the ``TCPStore`` on it; workers connect to
that port and gloo talks over the loopback interface only. Nothing listens on an external address.

Failure handling. The parent watches every worker. As soon as one exits with an error (an
exception, ``os._exit``, a signal) the others are terminated and ``launch`` raises ``WorkerError``
naming the rank that failed first and why; ranks that merely crashed because a peer vanished are
listed as consequences. A rank that *returns* while its peers still wait for it in a collective is
named as the cause when they then fail or hang. If nothing has finished after ``timeout`` seconds
every worker is killed and ``WorkerError`` names the ranks still running. Collectives inside the
workers time out 5 s later, so a rank stuck in a receive gives up by itself even if its parent is gone.

No child outlives ``launch``, nor the launching process: each worker leads its own process group, so
the helper processes it starts (a subprocess, a worker pool) are killed with it. When ``launch`` ends,
however it ends, it kills every worker's group itself. For the case where it cannot, because the
launching process died (even by SIGKILL, e.g. a Jupyter kernel restart), a *reaper* watches: a tiny
Python process (no torch) in its own session that holds the read end of a pipe only the launching
process writes to, learns each worker's pid through it, and on end-of-file without a final ``done``
SIGKILLs every worker's process group. This needs only POSIX (pipes, sessions, ``killpg``); on Linux
each worker also gets SIGKILL from the kernel when its parent dies (``PR_SET_PDEATHSIG``), in case the
reaper was killed too. Not covered: a helper that leaves its worker's process group (``setsid``,
``start_new_session=True``), which opts out of this bookkeeping. No temporary files are used.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import traceback
from datetime import timedelta


class WorkerError(RuntimeError):
    """A worker raised, died or hung. ``rank`` is the rank that failed first (None on a timeout)."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


def free_port() -> int:
    """A TCP port nothing listens on right now (bound on 127.0.0.1 and released). ``launch`` does not use
    it (it keeps its socket bound); kept for code that needs a port number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_REAPER = """
import os, signal, sys
pids = []
for line in sys.stdin:
    if line.strip() == "done":
        sys.exit(0)
    pids.append(int(line))
for pid in pids:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


class _Reaper:
    """Kills every worker's process group if the launching process dies before ``launch`` could.

    A ``python -I -S -c`` process in its own session (so a Ctrl-C or a kill of the launching process's group
    does not reach it) reads worker pids from its stdin, a pipe whose write end only this process holds
    (non-inheritable, so workers do not keep it open). ``close()`` writes ``done``: the reaper exits
    without killing anything. End-of-file without ``done`` (this process died) makes it SIGKILL each
    worker's group and, for a worker that had not made its group yet, the worker itself."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, start_new_session=True)

    def watch(self, pid: int) -> None:
        try:
            self.proc.stdin.write(f"{pid}\n".encode())
            self.proc.stdin.flush()
        except OSError:  # the reaper is gone (someone killed it): launch still reaps on its own
            pass

    def close(self, done: bool = True) -> None:
        """``done``: every worker is reaped, exit quietly; else kill what is registered, then exit."""
        if done:
            try:
                self.proc.stdin.write(b"done\n")
            except OSError:  # the reaper is already gone
                pass
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the launching process dies (Linux); a parent already gone: exit now."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _worker(rank: int, world_size: int, port: int, conn, parent: int, timeout: float, backend: str, fn,
            args) -> None:
    try:
        os.setpgid(0, 0)  # its own group: launch (or the reaper) kills it together with any helper it started
    except OSError:
        pass
    _die_with_parent(parent)  # after setpgid: once past this check, the reaper's killpg finds the group
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        store = dist.TCPStore("127.0.0.1", port, world_size, False, timedelta(seconds=timeout + 5))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout + 5))
        result = fn(rank, world_size, *args)
        conn.send_bytes(pickle.dumps(("ok", result, time.time())))
    except BaseException as e:  # record why, with the time, then die with a non-zero code
        text = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        try:
            conn.send_bytes(pickle.dumps(("err", time.time(), text)))
        except Exception:
            pass
        os._exit(1)
    try:
        dist.destroy_process_group()
    except Exception:
        pass


def _store(world_size: int, timeout: float):
    """The rendezvous store, served by this process on a socket bound to 127.0.0.1 port 0; (store, port)."""
    import torch.distributed as dist

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(max(64, world_size))
    port = sock.getsockname()[1]
    try:
        store = dist.TCPStore("127.0.0.1", port, world_size, True, timedelta(seconds=timeout + 5),
                              wait_for_workers=False, master_listen_fd=sock.fileno())
    except BaseException:
        sock.close()
        raise
    sock.detach()  # the store owns the socket now and closes it when it goes
    return store, port


def launch(fn, world_size: int, args: tuple = (), timeout: float = 60.0, backend: str = "gloo") -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes; return their results in rank order."""
    import multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    store, port = _store(world_size, timeout)
    pipes = [ctx.Pipe(duplex=False) for _ in range(world_size)]
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, pipes[r][1], os.getpid(), timeout, backend, fn,
                                               args), daemon=True, name=f"dslearn-rank{r}")
             for r in range(world_size)]
    messages: dict[int, tuple] = {}

    def drain() -> None:
        for r, (recv, _) in enumerate(pipes):
            try:
                while r not in messages and recv.poll():
                    messages[r] = pickle.loads(recv.recv_bytes())
            except (EOFError, OSError):
                pass

    reaper = _Reaper()
    try:
        for p in procs:
            p.start()
            reaper.watch(p.pid)
        for _, send in pipes:
            send.close()  # the parent's copy: EOF once the worker is gone
        deadline = time.monotonic() + timeout
        while True:
            drain()
            codes = [p.exitcode for p in procs]
            now = time.monotonic()
            if any(c not in (None, 0) for c in codes):
                drain()
                _stop(procs)
                raise _failure(messages, codes)
            if all(c == 0 for c in codes):
                break
            if now > deadline:
                running = [r for r, c in enumerate(codes) if c is None]
                _stop(procs)
                msg = (f"timed out after {timeout:g} s: rank(s) {running} still running "
                       f"(a hang, e.g. a receive whose send never came); all workers stopped")
                early = sorted(r for r, m in messages.items() if m[0] == "ok")
                if early:
                    msg += f". Rank(s) {early} had already returned: the others were likely waiting for them"
                raise WorkerError(msg, early[0] if early else None)
            time.sleep(0.02)
        drain()
    finally:
        try:
            _stop(procs)
        except BaseException:  # interrupted while stopping: let the reaper kill whatever is left
            reaper.close(done=False)
            raise
        reaper.close()
        for recv, _ in pipes:
            recv.close()
        del store
    results = []
    for r in range(world_size):
        msg = messages.get(r)
        if msg is None or msg[0] != "ok":
            raise WorkerError(f"rank {r} exited cleanly but returned no result", r)
        results.append(msg[1])
    return results


def _stop(procs) -> None:
    """Terminate every live worker, then kill any that ignore it; reap all of them; then kill what is left
    of each worker's process group (helpers it started)."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + 3.0
    for p in procs:
        if p.pid is None:
            continue
        p.join(max(0.0, end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass


def _failure(messages: dict, codes: list) -> WorkerError:
    """Name the root cause: a rank that returned while its peers still needed it, else a rank that died
    without a word (os._exit, a signal), else the earliest recorded exception; other ranks' errors are
    listed as consequences."""
    errors = {r: (m[1], m[2]) for r, m in messages.items() if m[0] == "err"}
    early = sorted((m[2], r) for r, m in messages.items() if m[0] == "ok")  # (when it returned, rank)
    silent = [r for r, c in enumerate(codes) if c not in (None, 0) and r not in errors and c > 0]
    silent += [r for r, c in enumerate(codes) if c is not None and c < 0 and r not in errors and r not in silent]
    if early and errors and min(t for t, _ in errors.values()) > early[0][0]:
        r = early[0][1]
        first = min(errors, key=lambda k: errors[k][0])
        msg = (f"rank {r} returned (exit code 0) while the other ranks still waited for it in a collective; "
               f"then rank {first} failed: {errors[first][1].strip().splitlines()[0]}")
        others = sorted(k for k in errors if k != first)
        if others:
            msg += f"\n(and rank(s) {others} failed too)"
        return WorkerError(msg, r)
    if silent:
        r = silent[0]
        msg = f"rank {r} died with exit code {codes[r]} (no Python exception)"
    elif errors:
        r = min(errors, key=lambda k: errors[k][0])
        msg = f"rank {r} failed: {errors[r][1].strip()}"
    else:
        r = next(k for k, c in enumerate(codes) if c not in (None, 0))
        msg = f"rank {r} died with exit code {codes[r]}"
    others = sorted(k for k in errors if k != r)
    if others:
        msg += f"\n(then rank(s) {others} failed too, after rank {r} went away)"
    return WorkerError(msg, r)
