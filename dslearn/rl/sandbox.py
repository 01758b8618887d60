"""Running model-written code: a separate process with limits, and what that does NOT protect against.

A code reward runs a program a policy wrote against test cases. RL pushes the policy towards whatever
earns reward, so the program is treated as hostile. ``run_code`` puts it in a separate process:

    protection                         how                                            mode
    wall-clock limit                   the parent kills the whole process tree        both
    CPU time, memory, file size,       setrlimit: RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE,  both
    open files, no core dumps          RLIMIT_NOFILE, RLIMIT_CORE
    process count (fork bombs)         RLIMIT_NPROC for uid 65534; a PID namespace      isolated
                                       whose PID 1 takes every process down with it
    own working directory              a fresh temporary directory as cwd              both
    no network                         an empty network namespace (loopback down)      isolated
    no writes outside its directory    runs as uid 65534 ("nobody"); /tmp, /var/tmp,   isolated
                                       /dev/shm, /root, /home are private tmpfs mounts
    parent's environment               a minimal environment (PATH, HOME, LANG), -I -S  both
    output flooding                    stdout/stderr read up to a cap, the rest dropped both
    forged results                     the program never sees expected outputs; the    both
                                       parent compares the outputs it returns

"isolated" mode needs Linux, root (or unprivileged user namespaces) and util-linux's ``unshare``;
it is what CI and the course machine use. Elsewhere ``run_code`` falls back to "basic" mode — a
subprocess with rlimits in its own process group, running as *your* user: it can read and write your
files, open network connections, and leave processes behind that call setsid(). ``sandbox_mode()``
says which mode is in force, and ``run_code(..., require_isolation=True)`` refuses to run without it.

Neither mode is a container or a VM: kernel exploits, side channels and resource exhaustion below the
limits are out of scope. For untrusted code at scale, use a real sandbox (gVisor, Firecracker, nsjail).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0  # wall-clock seconds before the whole tree is killed
    cpu_s: int = 3  # RLIMIT_CPU
    memory_mb: int = 512  # RLIMIT_AS
    max_procs: int = 16  # RLIMIT_NPROC (uid 65534 in isolated mode)
    file_mb: int = 1  # RLIMIT_FSIZE
    max_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 10_000  # stdout/stderr kept (each)

    def rlimits(self, with_nproc: bool) -> dict[str, int]:
        out = {"RLIMIT_CPU": self.cpu_s, "RLIMIT_AS": self.memory_mb << 20, "RLIMIT_FSIZE": self.file_mb << 20,
               "RLIMIT_NOFILE": self.max_files, "RLIMIT_CORE": 0}
        if with_nproc:
            out["RLIMIT_NPROC"] = self.max_procs
        return out


@dataclass
class SandboxResult:
    passed: int  # test cases whose output equals the expected one
    total: int
    outputs: list = field(default_factory=list)  # what the program returned per case (or its error)
    error: str | None = None  # why the program produced no results (load error, killed, …)
    timed_out: bool = False
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    mode: str = "basic"

    @property
    def reward(self) -> float:
        """1.0 only if every test passes (R1's accuracy reward for code is all-or-nothing)."""
        return 1.0 if self.total and self.passed == self.total else 0.0


@functools.lru_cache(maxsize=1)
def sandbox_mode() -> str:
    """'isolated' if namespaces, private mounts and the uid drop all work here (checked by running a trial
    program through them), else 'basic'."""
    if sys.platform != "linux" or shutil.which("unshare") is None or os.geteuid() != 0:
        return "basic"
    try:
        trial = run_code("def f(x):\n    return x + 1\n", "f", [((1,), 2)], Limits(wall_s=20), _mode="isolated")
    except OSError:
        return "basic"
    return "isolated" if trial.reward == 1.0 else "basic"


def _reader(stream, cap: int, sink: list) -> None:
    kept = 0
    while chunk := stream.read(65536):
        if kept < cap:
            sink.append(chunk[: cap - kept])
            kept += len(sink[-1])


def _normalise(value):
    return json.loads(json.dumps(value))  # tuples → lists, as they come back from the sandbox


def run_code(source: str, entry: str, cases: list[tuple[tuple, object]], limits: Limits = Limits(),
             require_isolation: bool = False, _mode: str | None = None) -> SandboxResult:
    """Run ``source``, call ``entry(*args)`` for each (args, expected) case, and count matches."""
    mode = _mode or sandbox_mode()
    if require_isolation and mode != "isolated":
        raise RuntimeError("isolated sandbox mode is not available here (needs Linux, root and unshare)")
    box = Path(tempfile.mkdtemp(prefix="dslearn-sandbox-"))
    try:
        (box / "solution.py").write_text(source)
        (box / "task.json").write_text(json.dumps({"entry": entry, "inputs": [list(a) for a, _ in cases]}))
        shutil.copy(HERE / "_harness.py", box / "harness.py")
        if mode == "isolated":
            os.chown(box, 65534, 65534)
            for f in box.iterdir():
                os.chown(f, 65534, 65534)
            python = os.path.realpath(sys.executable)  # the base interpreter, not a venv's symlink
            cmd = ["unshare", "--pid", "--fork", "--net", "--mount", "--mount-proc", "--kill-child",
                   python, "-I", "-S", str(HERE / "_sandbox_boot.py"), str(box), sys.base_prefix,
                   json.dumps(limits.rlimits(with_nproc=True)), python, "-I", "-S", "harness.py"]
            preexec, cwd, env = None, None, {"PATH": "/usr/bin:/bin"}
        else:
            rl = limits.rlimits(with_nproc=False)
            preexec = lambda: [resource.setrlimit(getattr(resource, k), (v, v)) for k, v in rl.items()]  # noqa: E731
            cmd = [sys.executable, "-I", "-S", "harness.py"]
            cwd, env = box, {"PATH": "/usr/bin:/bin", "HOME": str(box), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec)
        out, err = [], []
        readers = [threading.Thread(target=_reader, args=(s, limits.output_bytes, sink), daemon=True)
                   for s, sink in ((proc.stdout, out), (proc.stderr, err))]
        for t in readers:
            t.start()
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the tree, on every path
        except ProcessLookupError:
            pass
        proc.wait()
        deadline = time.monotonic() + 2
        for t in readers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        result = SandboxResult(0, len(cases), returncode=proc.returncode, timed_out=timed_out, mode=mode,
                               stdout=b"".join(out).decode(errors="replace"),
                               stderr=b"".join(err).decode(errors="replace"))
        path = box / "results.json"
        if timed_out:
            result.error = f"killed after the {limits.wall_s:g} s wall-clock limit"
        elif not path.is_file() or path.stat().st_size > (limits.file_mb << 20):
            result.error = f"no results (exit code {proc.returncode})"
        else:
            try:
                data = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                data = {"error": "results.json is not valid JSON"}
            if not isinstance(data, dict) or "outputs" not in data or len(data["outputs"]) != len(cases):
                result.error = str(data.get("error", "malformed results")) if isinstance(data, dict) else "malformed"
            else:
                result.outputs = data["outputs"]
                result.passed = sum(isinstance(o, dict) and "value" in o and o["value"] == _normalise(expected)
                                    for o, (_, expected) in zip(data["outputs"], cases))
        return result
    finally:
        shutil.rmtree(box, ignore_errors=True)
