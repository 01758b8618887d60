"""PID 1 of a sandbox's namespaces (run as root by sandbox.py through ``unshare``; not for import).

argv: the sandbox directory, the Python prefix to keep visible, the limits as JSON, then the command.
1. make every mount private, so nothing below leaks to the host;
2. stage the sandbox directory and the Python installation on a scratch tmpfs (/mnt);
3. cover /tmp, /var/tmp, /dev/shm, /root and /home with small private tmpfs mounts (the program sees
   none of their contents and its writes there vanish with the namespace);
4. move the sandbox directory back in as /tmp/box, and the Python installation back to its own path
   (read-only), so the interpreter and its shared library load as before;
5. fork; the child drops to uid/gid 65534 ("nobody"), applies the resource limits, and execs the
   command in /tmp/box; this process waits and exits with the child's status — and, being PID 1,
   takes every remaining process of the namespace down with it.
"""

import json
import os
import resource
import subprocess
import sys

NOBODY = 65534


def sh(*args: str) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


HIDDEN = {"/tmp": "1777", "/var/tmp": "1777", "/dev/shm": "1777", "/root": "755", "/home": "755"}


def main() -> int:
    box, prefix, limits, cmd = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
    sh("mount", "--make-rprivate", "/")
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=700", "tmpfs", "/mnt")
    os.mkdir("/mnt/box")
    os.mkdir("/mnt/py")
    sh("mount", "--bind", box, "/mnt/box")
    sh("mount", "--bind", prefix, "/mnt/py")
    for d, mode in HIDDEN.items():
        if os.path.isdir(d):
            sh("mount", "-t", "tmpfs", "-o", f"size=8m,mode={mode}", "tmpfs", d)
    os.mkdir("/tmp/box")
    sh("mount", "--move", "/mnt/box", "/tmp/box")
    os.makedirs(prefix, exist_ok=True)
    sh("mount", "--move", "/mnt/py", prefix)
    sh("mount", "-o", "remount,bind,ro", prefix)
    pid = os.fork()
    if pid == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), (value, value))
        os.chdir("/tmp/box")
        os.execve(cmd[0], cmd, {"PATH": "/usr/bin:/bin", "HOME": "/tmp/box", "LANG": "C.UTF-8"})
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
