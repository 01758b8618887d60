"""Running model-written code: bubblewrap isolation, whole-box limits, and failing closed without them.

A code reward runs a program a policy wrote against test cases. RL pushes the policy towards whatever
earns reward, so the program is treated as hostile. ``run_code`` runs it in **bubblewrap** (``bwrap``,
Debian's ``bubblewrap``: the audited sandbox under Flatpak), never by hand-set namespace flags:

    protection                          how (isolated mode)
    nothing of the host visible         a new mount namespace whose root is empty but for, read-only, the
                                        Python installation (interpreter + stdlib) and the shared libraries
                                        it loads; no /etc, /home, /tmp, /run, no shell, no other programs
    own, size-limited disk              /box: a tmpfs of ``disk_mb`` (all the program can write), gone with it
    no network, no IPC, no host pids    --unshare-all: user, pid, net, ipc (SysV shm/queues/semaphores),
                                        uts, cgroup namespaces; abstract UNIX sockets live in the net namespace
    no privileges                       uid 65534 inside a user namespace, every capability dropped, no
                                        nested user namespaces (--disable-userns, bubblewrap ≥ 0.8)
    dies with the caller                --die-with-parent; PID 1 of the namespace takes every process down
    no terminal tricks                  --new-session (no TIOCSTI into the caller's terminal)
    whole-box limits                    a cgroup per run (root): memory across all its processes
                                        (``memory_mb``) and the process count (``max_procs``); without
                                        cgroups RLIMIT_NPROC; always RLIMIT_CPU/AS/FSIZE/NOFILE/CORE
    wall-clock limit                    the caller kills the whole tree after ``wall_s``
    output flooding                     stdout/stderr kept up to ``output_bytes``, the rest drained
    untrusted results                   the outputs come back through a pipe, read up to a byte cap,
                                        never from a file the program could replace by a symlink or FIFO
    forged results                      the program never sees expected outputs; the caller compares, by
                                        exact type (True ≠ 1, 4.0 ≠ 4)

``run_code`` never raises for anything the program does: every failure is reward 0 with a reason in
``SandboxResult.error``. It **fails closed**: where isolation does not work (no ``bwrap``, no user
namespaces), it raises ``SandboxUnavailable`` saying how to get it, unless the caller opts in to the
unprotected "basic" mode (``allow_unprotected=True`` or ``DSLEARN_ALLOW_UNPROTECTED_SANDBOX=1``): a
subprocess with rlimits running as *your* user, able to read and write your files and reach the network.

Neither mode is a VM: kernel exploits and side channels are out of scope. For untrusted code at scale,
use gVisor, Firecracker or nsjail.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPT_IN = "DSLEARN_ALLOW_UNPROTECTED_SANDBOX"
NOBODY = 65534
CGROUP = Path("/sys/fs/cgroup")


class SandboxUnavailable(RuntimeError):
    """Model-written code would run without isolation; the message says how to get it or opt out."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # wall-clock seconds before the whole tree is killed
    cpu_s: int = 3  # RLIMIT_CPU, per process
    memory_mb: int = 512  # the whole box (cgroup) and RLIMIT_AS of each process
    max_procs: int = 16  # processes and threads in the whole box
    file_mb: int = 1  # RLIMIT_FSIZE
    disk_mb: int = 16  # the box's tmpfs: everything it writes, all processes together
    max_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 10_000  # stdout/stderr kept (each)
    result_bytes: int = 1 << 20  # the results read back at most

    def rlimits(self) -> dict[str, int]:
        return {"RLIMIT_CPU": self.cpu_s, "RLIMIT_AS": self.memory_mb << 20, "RLIMIT_FSIZE": self.file_mb << 20,
                "RLIMIT_NOFILE": self.max_files, "RLIMIT_CORE": 0}


@dataclass
class SandboxResult:
    passed: int  # test cases whose output equals the expected one (same JSON types)
    total: int
    outputs: list = field(default_factory=list)  # what the program returned per case (or its error)
    error: str | None = None  # why the program produced no results (load error, killed, …)
    timed_out: bool = False
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    mode: str = "basic"
    leftover_processes: int = 0  # processes of the box still alive after it ended (cgroup runs), then killed

    @property
    def reward(self) -> float:
        """1.0 only if every test passes (R1's accuracy reward for code is all-or-nothing)."""
        return 1.0 if self.total and self.passed == self.total else 0.0


# --- which mode works here ------------------------------------------------------------------------------
def _python() -> tuple[str, str]:
    """The base interpreter (not a venv's symlink) and the installation prefix holding its stdlib."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def _bwrap_cmd(box_in: Path, limits: Limits, results_fd: int) -> list[str]:
    python, prefix = _python()
    cmd = ["bwrap", "--unshare-all", "--unshare-user", *_disable_userns(), "--cap-drop", "ALL",
           "--die-with-parent", "--new-session", "--uid", str(NOBODY),
           "--gid", str(NOBODY), "--hostname", "sandbox", "--clearenv", "--setenv", "PATH", "/nonexistent",
           "--setenv", "HOME", "/box", "--setenv", "LANG", "C.UTF-8",
           "--ro-bind", prefix, prefix]
    if not python.startswith(prefix + os.sep):
        cmd += ["--ro-bind", os.path.dirname(python), os.path.dirname(python)]
    for d in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/lib32", "/usr/lib32"):
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d) and not prefix.startswith(d):
            cmd += ["--ro-bind", d, d]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.disk_mb << 20), "--tmpfs", "/box",
            "--ro-bind", str(box_in), "/box/in", "--chdir", "/box", "--remount-ro", "/",
            python, "-I", "-S", "/box/in/harness.py", str(results_fd)]
    return cmd


@functools.lru_cache(maxsize=1)
def _disable_userns() -> list[str]:
    """``--disable-userns`` (no nested user namespaces: bubblewrap ≥ 0.8) where this bwrap has it."""
    try:
        text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return ["--disable-userns"] if "--disable-userns" in text else []


@functools.lru_cache(maxsize=1)
def sandbox_mode() -> str:
    """'isolated' if bubblewrap runs a trial program here, else 'basic' (which ``run_code`` refuses unless
    the caller opts in)."""
    if sys.platform != "linux" or shutil.which("bwrap") is None:
        return "basic"
    trial = run_code("def f(x):\n    return x + 1\n", "f", [((1,), 2)], Limits(wall_s=60), _mode="isolated")
    return "isolated" if trial.reward == 1.0 else "basic"


def why_not_isolated() -> str:
    """A one-line diagnosis for the error message."""
    if sys.platform != "linux":
        return "isolation needs Linux"
    if shutil.which("bwrap") is None:
        return (
            "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)")
    trial = run_code("def f(x):\n    return x\n", "f", [((1,), 1)], Limits(wall_s=60), _mode="isolated")
    return (f"bubblewrap is installed but cannot start a sandbox here ({(trial.error or trial.stderr).strip()[:200]}); "
            f"it needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) or root")


def _unprotected_allowed(allow: bool | None) -> bool:
    if allow is not None:
        return allow
    return os.environ.get(OPT_IN, "") not in ("", "0")


# --- whole-box limits: a cgroup per run (root only) -------------------------------------------------------
def _make_cgroups(limits: Limits) -> list[Path]:
    """Fresh cgroups bounding the box's memory and process count; [] where cgroups cannot be made."""
    if os.geteuid() != 0 or not CGROUP.is_dir():
        return []
    name = f"dslearn-sandbox-{uuid.uuid4().hex[:12]}"
    mem = str(limits.memory_mb << 20)
    made: list[Path] = []
    try:
        if (CGROUP / "cgroup.controllers").exists():  # cgroup v2
            d = CGROUP / name
            d.mkdir()
            made.append(d)
            (d / "memory.max").write_text(mem)
            (d / "pids.max").write_text(str(limits.max_procs))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
        else:  # cgroup v1
            for ctrl, values in (("memory", {"memory.limit_in_bytes": mem, "memory.memsw.limit_in_bytes": mem}),
                                 ("pids", {"pids.max": str(limits.max_procs)})):
                d = CGROUP / ctrl / name
                d.mkdir()
                made.append(d)
                for f, v in values.items():
                    if (d / f).exists():
                        (d / f).write_text(v)
    except OSError:
        _remove_cgroups(made)
        return []
    return made


def _cgroup_pids(groups: list[Path]) -> set[int]:
    pids = set()
    for d in groups:
        try:
            pids |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
        except (OSError, ValueError):
            pass
    return pids


def _remove_cgroups(groups: list[Path]) -> None:
    end = time.monotonic() + 5
    for d in groups:
        while d.exists():
            for pid in _cgroup_pids([d]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                d.rmdir()
            except OSError:
                if time.monotonic() > end:
                    break
                time.sleep(0.02)


# --- running ---------------------------------------------------------------------------------------
def _reader(stream, cap: int, sink: list) -> None:
    kept = 0
    try:
        while chunk := stream.read(65536):
            if kept < cap:
                sink.append(chunk[: cap - kept])
                kept += len(sink[-1])
    except (OSError, ValueError):
        pass


def _canonical(value):
    """Tuples → lists, as values come back through JSON; None where ``value`` is not JSON data."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError):
        return None


def same(a, b) -> bool:
    """Exact equality of JSON data: equal values *of the same type* (True ≠ 1, 4.0 ≠ 4, [1] ≠ (1,) after JSON)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except RecursionError:  # a program-made tree deeper than Python's recursion limit
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
    except OSError:
        pass
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def run_code(source: str, entry: str, cases: list[tuple[tuple, object]], limits: Limits = Limits(),
             require_isolation: bool = False, allow_unprotected: bool | None = None,
             _mode: str | None = None) -> SandboxResult:
    """Run ``source``, call ``entry(*args)`` for each (args, expected) case, and count exact matches.

    Raises SandboxUnavailable (isolation missing and not opted out of, see the module docstring) and
    nothing else: whatever the program does is a SandboxResult with reward 0 and a reason."""
    mode = _mode or sandbox_mode()
    if mode != "isolated" and (require_isolation or not _unprotected_allowed(allow_unprotected)):
        raise SandboxUnavailable(
            f"refusing to run model-written code without isolation: {why_not_isolated()}. To run it unprotected "
            f"anyway, as your own user (it can read and change your files), pass allow_unprotected=True or set "
            f"{OPT_IN}=1")
    try:
        return _run(source, entry, cases, limits, mode)
    except Exception as e:  # noqa: BLE001 — a failure of the caller's side is still a reward of 0, never a crash
        return SandboxResult(0, len(cases), error=f"sandbox failure: {type(e).__name__}: {e}"[:500], mode=mode)


def _run(source: str, entry: str, cases, limits: Limits, mode: str) -> SandboxResult:
    try:
        code = source.encode("utf-8")
    except UnicodeEncodeError as e:
        return SandboxResult(0, len(cases), error=f"the source is not valid UTF-8 text ({e.reason})", mode=mode)
    box = Path(tempfile.mkdtemp(prefix="dslearn-sandbox-"))
    groups: list[Path] = []
    proc = None
    try:
        os.chmod(box, 0o755)
        (box / "solution.py").write_bytes(code)
        (box / "task.json").write_text(json.dumps({"entry": entry, "inputs": [list(a) for a, _ in cases]}))
        shutil.copy(HERE / "_harness.py", box / "harness.py")
        for f in box.iterdir():
            os.chmod(f, 0o644)
        r_fd, w_fd = os.pipe()
        rl = limits.rlimits()
        if mode == "isolated":
            groups = _make_cgroups(limits)
            cmd, cwd, env = _bwrap_cmd(box, limits, w_fd), None, {"PATH": "/usr/bin:/bin"}
            if not groups and os.geteuid() != 0:  # no cgroups: bound the process count per uid instead
                rl["RLIMIT_NPROC"] = limits.max_procs + _processes_of(os.getuid())
        else:
            cmd = [sys.executable, "-I", "-S", "harness.py", str(w_fd)]
            cwd, env = box, {"PATH": "/usr/bin:/bin", "HOME": str(box), "LANG": "C.UTF-8"}

        def preexec():
            for d in groups:
                (d / "cgroup.procs").write_text(str(os.getpid()))
            for k, v in rl.items():
                resource.setrlimit(getattr(resource, k), (v, v))

        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec,
                                pass_fds=(w_fd,))
        os.close(w_fd)
        out, err, res = [], [], []
        with os.fdopen(r_fd, "rb") as results:
            readers = [threading.Thread(target=_reader, args=(s, cap, sink), daemon=True)
                       for s, cap, sink in ((proc.stdout, limits.output_bytes, out),
                                            (proc.stderr, limits.output_bytes, err),
                                            (results, limits.result_bytes + 1, res))]
            for t in readers:
                t.start()
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc)  # bwrap; its namespace's PID 1 dies with it (--die-with-parent), and so does the box
            settle = time.monotonic() + 3
            while _cgroup_pids(groups) and time.monotonic() < settle:
                time.sleep(0.02)
            leftover = len(_cgroup_pids(groups))  # what outlived the namespace: killed below, and reported
            _remove_cgroups(groups)
            groups = []
            deadline = time.monotonic() + 2
            for t in readers:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        result = SandboxResult(0, len(cases), returncode=proc.returncode, timed_out=timed_out, mode=mode,
                               stdout=b"".join(out).decode(errors="replace"),
                               stderr=b"".join(err).decode(errors="replace"), leftover_processes=leftover)
        raw = b"".join(res)
        if timed_out:
            result.error = f"killed after the {limits.wall_s:g} s wall-clock limit"
        elif len(raw) > limits.result_bytes:
            result.error = f"results larger than {limits.result_bytes:,} bytes"
        elif not raw:
            result.error = f"no results (exit code {proc.returncode})"
        else:
            _score(result, raw, cases)
        return result
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc)
        _remove_cgroups(groups)
        _remove_tree(box)


def _score(result: SandboxResult, raw: bytes, cases) -> None:
    try:
        data = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        result.error = "the results are not valid JSON"
        return
    if not isinstance(data, dict) or not isinstance(data.get("outputs"), list) or len(data["outputs"]) != len(cases):
        result.error = (str(data.get("error"))[:500] if isinstance(data, dict) and "error" in data
                        else "malformed results")
        return
    result.outputs = data["outputs"]
    result.passed = sum(isinstance(o, dict) and "value" in o and same(o["value"], _canonical(expected))
                        for o, (_, expected) in zip(data["outputs"], cases))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap (or the basic-mode tree); the namespace dies with its PID 1
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _processes_of(uid: int) -> int:
    n = 0
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                n += p.stat().st_uid == uid
            except OSError:
                pass
    return n
