"""The hostile suite: ≥ 80 programs a policy could write, each run through ``run_code`` in the isolated
(bubblewrap) mode. Every one must earn reward 0 in bounded time, and after each the host is checked:
canary files unchanged and unread, no file written outside the box (repository, host /tmp, /run/lock,
/dev/shm), no System V IPC object left (``ipcs``), no process of the box left (its cgroup), no temporary
directory left, no message received by a listener on the host (TCP, UDP, UNIX path and abstract sockets).

Without bubblewrap the suite skips, with the reason; CI sets DSLEARN_REQUIRE_BWRAP=1, which turns that
skip into a failure."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from helpers import require_isolated_sandbox

from dslearn.rl.sandbox import Limits, run_code

ROOT = Path(__file__).resolve().parents[1]
# generous for a loaded 2-core machine: a program is killed by the CPU limit (1 s) or the wall clock (6 s)
LIMITS = Limits(wall_s=6.0, cpu_s=1, memory_mb=256, max_procs=8, file_mb=1, disk_mb=8, output_bytes=4096)
CASES = [((2,), 4), ((3,), 9), ((-4,), 16)]


def programs(canary: Path, port: int, udp_port: int, unix_path: str, abstract: str, nonce: str) -> dict[str, str]:
    secret, private = str(canary / "secret.txt"), str(canary / "private.txt")
    esc = f"ESCAPE_{nonce}"
    walk = "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == {!r}][0]"
    p = {
        # --- resources: time, processes, memory, disk, output -----------------------------------------------
        "infinite loop at import": "while True:\n    pass\n",
        "infinite loop in f": "def f(x):\n    while True:\n        pass\n",
        "sleep forever": "import time\ntime.sleep(1000)\n",
        "sleep in f": "import time\ndef f(x):\n    time.sleep(1000)\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "fork bomb that sleeps": "import os, time\nfor _ in range(100):\n    try:\n        os.fork()\n"
                                 "    except OSError:\n        pass\ntime.sleep(100)\n",
        "subprocess bomb": "import subprocess, sys\nwhile True:\n"
                           "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(100)'])\n",
        "thread bomb": "import threading, time\nwhile True:\n"
                       "    threading.Thread(target=time.sleep, args=(100,)).start()\n",
        "memory bomb": "x = bytearray(10**10)\n",
        "memory growth": "l = []\nwhile True:\n    l.append(' ' * 10**6)\n",
        "aggregate memory across forks": "import os, time\nfor _ in range(7):\n    if os.fork() == 0:\n"
                                         "        x = bytearray(200 * 2**20)\n"
                                         "        time.sleep(100)\ntime.sleep(100)\n",
        "deep recursion": "import sys\nsys.setrecursionlimit(10**8)\ndef g(n):\n    return g(n + 1)\ng(0)\n",
        "huge stdout": "while True:\n    print('x' * 10000)\n",
        "huge stderr": "import sys\nwhile True:\n    sys.stderr.write('y' * 10000)\n",
        "huge file in its directory": "open('big', 'w').write('x' * 10**8)\n",
        "fill the box with small files": "i = 0\nwhile True:\n    open(f'f{i}', 'w').write('x' * 500000)\n"
                                         "    i += 1\n",
        "aggregate disk across forks": "import os\nfor i in range(8):\n    if os.fork() == 0:\n"
                                       "        open(f'w{i}', 'w').write('x' * 900000)\n        os._exit(0)\n"
                                       "import time\ntime.sleep(100)\n",
        "many inodes": "import os\nfor i in range(10**6):\n    os.mkdir(f'd{i}')\n",
        "fill /tmp": "open('/tmp/fill', 'w').write('x' * 10**8)\n",
        "too many open files": "fs = [open('/dev/null') for _ in range(10**6)]\n",
        "deep directory tree": "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\n",
        "cpu in many threads": "import threading\ndef spin():\n    while True:\n        pass\n"
                               "for _ in range(6):\n    threading.Thread(target=spin).start()\n",
        # --- the host's files -----------------------------------------------------------------------------------
        "write outside": f"open({secret!r}, 'w').write('pwned')\n",
        "write into the repository": f"open({str(ROOT / esc)!r}, 'w').write('pwned')\n",
        "write to the host /tmp": f"open('/tmp/{esc}', 'w').write('pwned')\n",
        "write to /run/lock": f"open('/run/lock/{esc}', 'w').write('pwned')\ndef f(x):\n    return x * x\n",
        "write to /dev/shm": f"open('/dev/shm/{esc}', 'w').write('pwned')\n",  # the box's own /dev/shm at most
        "write to /var/tmp": f"open('/var/tmp/{esc}', 'w').write('pwned')\n",
        "write into the python install": "import os\nopen(os.__file__, 'a').write('pwned')\n",
        "delete outside": f"import os\nos.remove({secret!r})\n",
        "chmod outside": f"import os\nos.chmod({private!r}, 0o777)\n",
        "rename outside": f"import os\nos.rename({secret!r}, {secret + '.moved'!r})\n",
        "hard link outside": f"import os\nos.link({secret!r}, 'stolen')\ndef f(x):\n    return open('stolen').read()\n",
        "symlink outside": f"import os\nos.symlink({secret!r}, 'l')\ndef f(x):\n    return open('l').read()\n",
        "read a file outside": f"def f(x):\n    return open({secret!r}).read()\n",
        "read a root-only file": f"def f(x):\n    return open({private!r}).read()\n",
        "read /etc/passwd": "def f(x):\n    return open('/etc/passwd').read()\n",
        "read /etc/shadow": "def f(x):\n    return open('/etc/shadow').read()\n",
        "list /home and /root": "import os\ndef f(x):\n    return os.listdir('/home') + os.listdir('/root')\n",
        "pathlib write": f"from pathlib import Path\nPath({secret!r}).write_text('pwned')\n",
        "os.open write": f"import os\nfd = os.open({secret!r}, os.O_WRONLY | os.O_TRUNC)\nos.write(fd, b'pwned')\n",
        "io.FileIO write": f"import io\nio.FileIO({secret!r}, 'w').write(b'pwned')\n",
        "shutil copy out": f"import shutil\nshutil.copy('/box/in/solution.py', {str(ROOT / esc)!r})\n",
        "mkdir on the host": f"import os\nos.makedirs({str(ROOT / esc / 'x')!r})\n",
        "subclasses walk to open a file": f"FileIO = {walk.format('FileIO')}\n"
                                          f"def f(x):\n    return FileIO({secret!r}).read().decode()\n",
        "subclasses walk to os.system": f"w = {walk.format('_wrap_close')}\n"
                                        f"w.__init__.__globals__['system']('echo pwned > {ROOT / esc}')\n",
        "subclasses walk to Popen": f"P = {walk.format('Popen')}\nP(['/bin/sh', '-c', 'echo pwned > /tmp/{esc}'])\n",
        "builtins import via a frame": "import sys\nos = sys._getframe().f_globals['__builtins__']"
                                       "['__import__']('os')\n"
                                       f"os.system('touch /tmp/{esc}')\n",
        "loader get_data": f"import importlib.machinery as m\n"
                           f"def f(x):\n    return m.SourceFileLoader('x', {secret!r}).get_data({secret!r}).decode()\n",
        # --- results and reward tampering ---------------------------------------------------------------------
        "results.json symlink to /proc/kmsg": "import os\nos.symlink('/proc/kmsg', 'results.json')\n",
        "results.json symlink to pagemap": "import os\nos.symlink('/proc/self/pagemap', 'results.json')\n",
        "results.json as a FIFO": "import os\nos.mkfifo('results.json')\n",
        "results.json symlink to a root file": "import os\nos.symlink('/etc/shadow', 'results.json')\n",
        "forged results file": "import json, os\n"
                               "json.dump({'outputs': [{'value': 0}] * 3}, open('results.json', 'w'))\nos._exit(0)\n",
        "forged results on the pipe": "import os, sys\nos.write(int(sys.argv[1]), b'{\"outputs\": "
                                      "[{\"value\": 4}, {\"value\": 9}, {\"value\": 16}]}')\n"
                                      "def f(x):\n    return 0\n",
        "garbage on the pipe": "import os, sys\nos.write(int(sys.argv[1]), os.urandom(1000))\nos._exit(0)\n",
        "flood the pipe": "import os, sys\nwhile True:\n    os.write(int(sys.argv[1]), b'x' * 65536)\n",
        "close the pipe": "import os, sys\nos.close(int(sys.argv[1]))\ndef f(x):\n    return x * x + 1\n",
        "harness monkeypatching": "import json\n_dumps = json.dumps\n"
                                  "json.dumps = lambda obj, **k: _dumps({'outputs': [{'value': 4}, {'value': 9}, "
                                  "{'value': 16}]})\ndef f(x):\n    return 1\n",
        "rewrite the task": "open('/box/in/task.json', 'w').write('{}')\n",
        "rewrite the harness": "open('/box/in/harness.py', 'a').write('pwned')\n",
        "exit from f": "def f(x):\n    raise SystemExit(0)\n",
        "os._exit from f": "import os\ndef f(x):\n    os._exit(0)\n",
        "BaseException from f": "class E(BaseException):\n    pass\ndef f(x):\n    raise E()\n",
        "True for 1": "def f(x):\n    return True\n",
        "float for int": "def f(x):\n    return float(x * x)\n",
        "int subclass equal to all": "class A(int):\n    def __eq__(self, o):\n        return True\n"
                                     "    __hash__ = int.__hash__\ndef f(x):\n    return A(0)\n",
        "nan": "def f(x):\n    return float('nan')\n",
        "not JSON": "def f(x):\n    return object()\n",
        "deeply nested output": "def f(x):\n    v = []\n    for _ in range(10**5):\n        v = [v]\n    return v\n",
        "huge output": "def f(x):\n    return 'x' * (2 * 2**20)\n",
        "lone surrogate in source": "def f(x):\n    return '\ud800'\n",
        "lone surrogate in output": "def f(x):\n    return '\\ud800'\n",
        "surrogate on stdout": "import sys\nsys.stdout.write('\\udcff')\n",
        # --- IPC ----------------------------------------------------------------------------------------------
        "SysV shared memory": "import ctypes\nlibc = ctypes.CDLL(None)\n"
                              "i = libc.shmget(0x5A5A, 256 * 2**20, 0o1666)\nassert i >= 0\n",
        "SysV message queue": "import ctypes\nlibc = ctypes.CDLL(None)\nq = libc.msgget(0x5A5B, 0o1666)\n"
                              "buf = ctypes.create_string_buffer(b'\\x01\\0\\0\\0\\0\\0\\0\\0pwned')\n"
                              "libc.msgsnd(q, buf, 5, 0)\n",
        "SysV semaphores": "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.semget(0x5A5C, 8, 0o1666)\n",
        "POSIX shared memory": f"from multiprocessing import shared_memory\n"
                               f"s = shared_memory.SharedMemory('{esc}', create=True, size=2**20)\n",
        # --- network ----------------------------------------------------------------------------------------------
        "TCP to the host": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                           "s.sendall(b'pwned')\n",
        "UDP to the host": f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'pwned', "
                           f"('127.0.0.1', {udp_port}))\n",
        "UNIX socket path on the host": f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix_path!r})\n"
                                        "s.sendall(b'pwned')\n",
        "abstract UNIX socket on the host": f"import socket\ns = socket.socket(socket.AF_UNIX)\n"
                                            f"s.connect({abstract!r})\ns.sendall(b'pwned')\n",
        "socket to the internet": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n",
        "DNS lookup": "import socket\ndef f(x):\n    return socket.gethostbyname('example.com')\n",
        "raw socket": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n",
        "listen on a port": "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', 8765))\ns.listen()\n"
                            "time.sleep(100)\n",
        # --- processes, privileges, the kernel ------------------------------------------------------------------
        "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        "kill pid 1": "import os, signal\nos.kill(1, signal.SIGKILL)\n",
        "signal the process group": "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
        "escaping daemon": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\n",
        "double-fork daemon": "import os, time\nif os.fork() == 0:\n    if os.fork() == 0:\n        os.setsid()\n"
                              "        time.sleep(100)\n    os._exit(0)\n",
        "ctypes segfault": "import ctypes\nctypes.string_at(0)\n",
        "abort": "import os\nos.abort()\n",
        "setuid root": "import os\nos.setuid(0)\ndef f(x):\n    return x * x\n",
        "new user namespace": "import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.unshare(0x10000000) == 0\n"
                              "def f(x):\n    return x * x\n",
        "mount": "import ctypes\nlibc = ctypes.CDLL(None)\n"
                 "assert libc.mount(b'none', b'/box', b'tmpfs', 0, None) == 0\ndef f(x):\n    return x * x\n",
        "ptrace pid 1": "import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.ptrace(16, 1, 0, 0) == 0\n"
                        "def f(x):\n    return x * x\n",
        "sysrq trigger": "open('/proc/sysrq-trigger', 'w').write('b')\n",
        "TIOCSTI into the terminal": "import fcntl, termios\nfcntl.ioctl(0, termios.TIOCSTI, b'x')\n",
        "read the parent's environment": "import os\ndef f(x):\n    return dict(os.environ)\n",
        "read /proc environ": "def f(x):\n    return [open(f'/proc/{p}/environ', 'rb').read().decode(errors='replace') "
                              "for p in (1, 2)]\n",
        "read the host's processes": "import os\ndef f(x):\n    return [open(f'/proc/{p}/cmdline').read() "
                                     "for p in os.listdir('/proc') if p.isdigit()]\n",
        "run a shell": "import subprocess\ndef f(x):\n"
                       "    return subprocess.check_output(['sh', '-c', 'id']).decode()\n",
    }
    return p


@pytest.fixture
def host(tmp_path):
    """Canaries and listeners on the host, and a private temporary directory for the sandboxes."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text("s3cret")
    (canary / "private.txt").write_text("root only")
    os.chmod(canary / "private.txt", 0o600)
    received: list[bytes] = []
    stop = threading.Event()
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path = str(tmp_path / "host.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    os.chmod(unix_path, 0o777)
    unix.listen()
    abstract = f"\0dslearn-host-{os.urandom(4).hex()}"
    abstract_sock = socket.socket(socket.AF_UNIX)
    abstract_sock.bind(abstract)
    abstract_sock.listen()
    for s in (tcp, udp, unix, abstract_sock):
        s.settimeout(0.1)

    def serve():
        while not stop.is_set():
            for s in (tcp, unix, abstract_sock):
                try:
                    conn, _ = s.accept()
                    received.append(conn.recv(100) or b"(connected)")
                    conn.close()
                except OSError:
                    pass
            try:
                received.append(udp.recv(100))
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    old = tempfile.tempdir
    tempfile.tempdir = str(boxes)
    yield dict(canary=canary, port=tcp.getsockname()[1], udp_port=udp.getsockname()[1], unix_path=unix_path,
               abstract=abstract, received=received, boxes=boxes)
    tempfile.tempdir = old
    stop.set()
    thread.join()
    for s in (tcp, udp, unix, abstract_sock):
        s.close()


def snapshot(d: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_atime_ns) for p in sorted(d.iterdir())}


def ipc_objects() -> str:
    if shutil.which("ipcs") is None:
        return ""
    return subprocess.run(["ipcs", "-m", "-q", "-s"], capture_output=True, text=True).stdout


def test_the_hostile_suite(host):
    require_isolated_sandbox()
    nonce = os.urandom(4).hex()
    progs = programs(host["canary"], host["port"], host["udp_port"], host["unix_path"], host["abstract"], nonce)
    assert len(progs) >= 80, len(progs)
    escapes = [ROOT / f"ESCAPE_{nonce}", Path(f"/tmp/ESCAPE_{nonce}"), Path(f"/run/lock/ESCAPE_{nonce}"),
               Path(f"/dev/shm/ESCAPE_{nonce}"), Path(f"/var/tmp/ESCAPE_{nonce}")]
    before, ipc_before = snapshot(host["canary"]), ipc_objects()
    os.environ["DSLEARN_TEST_SECRET"] = "hunter2"
    slow = []
    try:
        for name, source in progs.items():
            t0 = time.monotonic()
            r = run_code(source, "f", CASES, LIMITS)
            took = time.monotonic() - t0
            slow.append((took, name))
            why = f"{name}: {r.error!r} {r.outputs!r}"[:600]
            assert r.mode == "isolated", why
            assert r.reward == 0.0 and r.passed == 0, why
            assert took < LIMITS.wall_s + 15, f"{name} took {took:.1f} s"
            leaked = " ".join(map(str, r.outputs)) + r.stdout + r.stderr + (r.error or "")
            assert "hunter2" not in leaked and "s3cret" not in leaked and "root only" not in leaked, why
            assert "root:" not in leaked, why  # /etc/passwd or /etc/shadow
            assert len(r.stdout) <= LIMITS.output_bytes and len(r.stderr) <= LIMITS.output_bytes, name
            assert snapshot(host["canary"]) == before, f"{name} touched a file outside the sandbox"
            assert not any(p.exists() for p in escapes), f"{name} wrote outside the sandbox"
            assert ipc_objects() == ipc_before, f"{name} left a System V IPC object behind"
            assert r.leftover_processes == 0, f"{name} left {r.leftover_processes} process(es) in its box"
            assert list(host["boxes"].iterdir()) == [], f"{name} left its temporary directory behind"
            assert host["received"] == [], f"{name} reached a listener on the host"
    finally:
        del os.environ["DSLEARN_TEST_SECRET"]
    honest = run_code("def f(x):\n    return x * x\n", "f", CASES, Limits(wall_s=60))
    assert honest.reward == 1.0, honest.error  # and the caller is fine afterwards
    print("slowest:", sorted(slow, reverse=True)[:5])
