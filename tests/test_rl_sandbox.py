"""The sandbox against hostile programs: each earns reward 0 in bounded time, the calling process
survives, nothing outside the sandbox directory changes, and no process is left behind."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from dslearn.rl.sandbox import Limits, run_code, sandbox_mode

LIMITS = Limits(wall_s=3.0, cpu_s=1, memory_mb=256, max_procs=8, file_mb=1, output_bytes=4096)
SQUARE_CASES = [((2,), 4), ((3,), 9), ((-4,), 16)]
ROOT = Path(__file__).resolve().parents[1]
isolated_only = pytest.mark.skipif(sandbox_mode() != "isolated",
                                   reason="needs the isolated sandbox mode (Linux, root, unshare)")


def nobody_processes() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if p.stat().st_uid == 65534:
                    pids.append(int(p.name))
            except FileNotFoundError:
                pass
    return pids


def run(source, cases=SQUARE_CASES):
    t0 = time.monotonic()
    result = run_code(source, "f", cases, LIMITS)
    elapsed = time.monotonic() - t0
    assert elapsed < LIMITS.wall_s + 5, f"took {elapsed:.1f} s"
    return result


def test_an_honest_solution_passes():
    r = run("def f(x):\n    return x * x\n")
    assert (r.passed, r.total, r.reward, r.error) == (3, 3, 1.0, None)
    r = run("def f(x):\n    return x * x if x > 0 else 0\n")
    assert (r.passed, r.reward) == (2, 0.0)
    r = run("def f(x):\n    return (x, x)\n", [((1,), (1, 1))])  # tuples compare as JSON lists
    assert r.reward == 1.0


@pytest.fixture
def canary(tmp_path):
    d = tmp_path / "canary"
    d.mkdir()
    (d / "secret.txt").write_text("s3cret")
    (d / "private.txt").write_text("root only")
    os.chmod(d / "private.txt", 0o600)
    return d


def snapshot(d: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in sorted(d.iterdir())}


def hostile_programs(canary: Path, port: int, nonce: str) -> dict[str, str]:
    secret, private = canary / "secret.txt", canary / "private.txt"
    return {
        "infinite loop at import": "while True:\n    pass\n",
        "infinite loop in f": "def f(x):\n    while True:\n        pass\n",
        "sleep forever": "import time\ntime.sleep(1000)\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "subprocess bomb": "import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])\n",
        "thread bomb": "import threading, time\nwhile True:\n"
                       "    threading.Thread(target=time.sleep, args=(100,)).start()\n",
        "memory bomb": "x = bytearray(10**10)\n",
        "memory growth": "l = []\nwhile True:\n    l.append(' ' * 10**6)\n",
        "deep recursion": "import sys\nsys.setrecursionlimit(10**8)\ndef g(n):\n    return g(n + 1)\ng(0)\n",
        "huge stdout": "while True:\n    print('x' * 10000)\n",
        "huge stderr": "import sys\nwhile True:\n    sys.stderr.write('y' * 10000)\n",
        "huge file in its directory": "open('big', 'w').write('x' * 10**8)\n",
        "fill /tmp": "open('/tmp/fill', 'w').write('x' * 10**8)\n",
        "too many open files": "fs = [open('/dev/null') for _ in range(10**6)]\n",
        "write outside": f"open({str(secret)!r}, 'w').write('pwned')\n",
        "write into the repository": f"open({str(ROOT / f'ESCAPE_{nonce}')!r}, 'w').write('pwned')\n",
        "write to the host /tmp": f"open('/tmp/ESCAPE_{nonce}', 'w').write('pwned')\n",
        "delete outside": f"import os\nos.remove({str(secret)!r})\n",
        "chmod outside": f"import os\nos.chmod({str(private)!r}, 0o777)\n",
        "read the parent's environment": "import os\ndef f(x):\n    return dict(os.environ)\n",
        "read /proc environ": "def f(x):\n    return [open(f'/proc/{p}/environ', 'rb').read().decode(errors='replace') "
                              "for p in (1, 2)]\n",
        "read a root-only file": f"def f(x):\n    return open({str(private)!r}).read()\n",
        "read a file outside": f"def f(x):\n    return open({str(secret)!r}).read()\n",
        "socket to the host": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                              "s.sendall(b'pwned')\n",
        "socket to the internet": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n",
        "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        "ctypes segfault": "import ctypes\nctypes.string_at(0)\n",
        "escaping daemon": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\n",
        "forged results file": "import json, os\n"
                               "json.dump({'outputs': [{'value': 0}] * 3}, open('results.json', 'w'))\nos._exit(0)\n",
        "harness monkeypatching": "import json\n_dump = json.dump\n"
                                  "json.dump = lambda obj, fp, **k: _dump({'outputs': [{'value': 1}] * 3}, fp)\n"
                                  "def f(x):\n    return 1\n",
        "exit from f": "def f(x):\n    raise SystemExit(0)\n",
    }


@isolated_only
def test_hostile_programs_get_nothing(canary, tmp_path, monkeypatch):
    monkeypatch.setenv("DSLEARN_TEST_SECRET", "hunter2")
    received = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                received.append(conn.recv(100))
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    nonce = os.urandom(4).hex()
    before = snapshot(canary)
    programs = hostile_programs(canary, server.getsockname()[1], nonce)
    assert len(programs) >= 25
    try:
        for name, source in programs.items():
            r = run(source)
            assert r.reward == 0.0 and r.passed == 0, name
            leaked = " ".join(map(str, r.outputs)) + r.stdout + r.stderr
            assert "hunter2" not in leaked and "s3cret" not in leaked and "root only" not in leaked, name
            assert len(r.stdout) <= LIMITS.output_bytes and len(r.stderr) <= LIMITS.output_bytes, name
            assert snapshot(canary) == before, f"{name} changed a file outside the sandbox"
            assert not (ROOT / f"ESCAPE_{nonce}").exists() and not Path(f"/tmp/ESCAPE_{nonce}").exists(), name
            assert nobody_processes() == [], f"{name} left processes behind"
    finally:
        stop.set()
        thread.join()
        server.close()
    assert received == [], "a sandboxed program reached a socket on the host"
    assert run("def f(x):\n    return x * x\n").reward == 1.0  # and the caller is fine afterwards


def test_basic_limits_hold_in_either_mode():
    for source in ("while True:\n    pass\n", "x = bytearray(10**10)\n", "while True:\n    print('x' * 10000)\n"):
        r = run(source)
        assert r.reward == 0.0 and r.error is not None
        assert len(r.stdout) <= LIMITS.output_bytes


def test_isolation_can_be_required(monkeypatch):
    import dslearn.rl.sandbox as sb

    monkeypatch.setattr(sb, "sandbox_mode", lambda: "basic")
    with pytest.raises(RuntimeError, match="isolated sandbox mode is not available"):
        sb.run_code("def f(x):\n    return x\n", "f", [((1,), 1)], require_isolation=True)


def test_mode_falls_back_to_basic_without_namespaces(monkeypatch):
    import dslearn.rl.sandbox as sb

    sb.sandbox_mode.cache_clear()
    monkeypatch.setattr(sb.shutil, "which", lambda name: None)  # no unshare on this machine
    try:
        assert sb.sandbox_mode() == "basic"
    finally:
        sb.sandbox_mode.cache_clear()
