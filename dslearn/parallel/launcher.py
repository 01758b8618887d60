"""Start N CPU processes that form a torch.distributed group, run a function in each, collect results.

    results = launch(fn, world_size=2, args=(...,), timeout=60)   # [fn(0, 2, ...), fn(1, 2, ...)]

Each worker is a fresh *spawned* Python process (so it works from Jupyter and under nbval, where
forking a process that already imported torch is unsafe): it limits torch to one thread (two
workers on two cores), joins a gloo process group on a free localhost port (loopback only; on GPUs
the same code would pass ``backend="nccl"``), runs ``fn(rank, world_size, *args)`` and hands back its
return value through a file in a temporary folder. ``fn`` must be importable by name (a function
defined at the top level of a module, not in a notebook cell).

Failure handling. The parent watches every worker. As soon as one exits with an error (an
exception, ``os._exit``, a signal) the others are terminated and ``launch`` raises ``WorkerError``
naming the rank that failed first and why; ranks that merely crashed because a peer vanished are
listed as consequences. If nothing has finished after ``timeout`` seconds every worker is killed
and ``WorkerError`` names the ranks still running. Collectives inside the workers time out 5 s
later, so a rank stuck in a receive gives up by itself even if its parent is gone. No child outlives ``launch``.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path


class WorkerError(RuntimeError):
    """A worker raised, died or hung. ``rank`` is the rank that failed first (None on a timeout)."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


def free_port() -> int:
    """A TCP port nothing listens on right now (bound on 127.0.0.1 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, folder: str, timeout: float, backend: str, fn, args) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    out = Path(folder)
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout + 5))
        result = fn(rank, world_size, *args)
        (out / f"rank{rank}.tmp").write_bytes(pickle.dumps(result))
        os.replace(out / f"rank{rank}.tmp", out / f"rank{rank}.pkl")
    except BaseException as e:  # record why, with the time, then die with a non-zero code
        text = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        (out / f"rank{rank}.err").write_text(f"{time.time()!r}\n{text}")
        os._exit(1)
    try:
        dist.destroy_process_group()
    except Exception:
        pass


def launch(fn, world_size: int, args: tuple = (), timeout: float = 60.0, backend: str = "gloo") -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes; return their results in rank order."""
    import multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="dslearn-launch-") as folder:
        port = free_port()
        procs = [ctx.Process(target=_worker, args=(r, world_size, port, folder, timeout, backend, fn, args),
                             daemon=True, name=f"dslearn-rank{r}") for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                codes = [p.exitcode for p in procs]
                if any(c not in (None, 0) for c in codes):
                    _stop(procs)
                    raise _failure(folder, codes)
                if all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    running = [r for r, c in enumerate(codes) if c is None]
                    _stop(procs)
                    raise WorkerError(f"timed out after {timeout:g} s: rank(s) {running} still running "
                                      f"(a hang, e.g. a receive whose send never came); all workers stopped")
                time.sleep(0.02)
        finally:
            _stop(procs)
        results = []
        for r in range(world_size):
            f = Path(folder) / f"rank{r}.pkl"
            if not f.exists():
                raise WorkerError(f"rank {r} exited cleanly but returned no result", r)
            results.append(pickle.loads(f.read_bytes()))
        return results


def _stop(procs) -> None:
    """Terminate every live worker, then kill any that ignore it; reap all of them."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + 3.0
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _failure(folder: str, codes: list) -> WorkerError:
    """Name the root cause: a rank that died without a word (os._exit, a signal) first, else the
    earliest recorded exception; other ranks' errors are listed as consequences."""
    errors = {}
    for r in range(len(codes)):
        f = Path(folder) / f"rank{r}.err"
        if f.exists():
            t, _, text = f.read_text().partition("\n")
            errors[r] = (float(t), text)
    silent = [r for r, c in enumerate(codes) if c not in (None, 0) and r not in errors and c > 0]
    silent += [r for r, c in enumerate(codes) if c is not None and c < 0 and r not in errors and r not in silent]
    if silent:
        r = silent[0]
        msg = f"rank {r} died with exit code {codes[r]} (no Python exception)"
    else:
        r = min(errors, key=lambda k: errors[k][0])
        msg = f"rank {r} failed: {errors[r][1].strip()}"
    others = sorted(k for k in errors if k != r)
    if others:
        msg += f"\n(then rank(s) {others} failed too, after rank {r} went away)"
    return WorkerError(msg, r)
