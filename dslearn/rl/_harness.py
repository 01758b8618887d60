"""Runs inside the sandbox (not for import): load in/solution.py, call its entry point on each input of
in/task.json, write the outputs as JSON to the pipe whose fd is argv[1] (the caller reads it with a byte
cap; no file of the box is ever trusted). Expected outputs never enter the sandbox, so a program that
tampers with this harness can only "pass" by producing the right outputs; the encoder and the writer are
bound before the program runs, so patching ``json.dumps`` or ``os.write`` does not reach them."""

import json
import os
import sys

dumps, write, fd = json.dumps, os.write, int(sys.argv[1])
here = os.path.dirname(os.path.abspath(__file__))


def send(obj) -> None:
    data = dumps(obj).encode("utf-8", "backslashreplace")
    while data:
        data = data[write(fd, data):]


task = json.load(open(os.path.join(here, "task.json")))
outputs = []
namespace = {"__name__": "solution"}
try:
    exec(compile(open(os.path.join(here, "solution.py"), encoding="utf-8").read(), "solution.py", "exec"), namespace)
    fn = namespace[task["entry"]]
except BaseException as e:  # noqa: BLE001 — anything the solution does is data to report
    send({"error": f"{type(e).__name__}: {e}"[:500]})
    sys.exit(0)
for args in task["inputs"]:
    try:
        value = fn(*args)
        dumps(value)
        outputs.append({"value": value})
    except BaseException as e:  # noqa: BLE001
        outputs.append({"error": f"{type(e).__name__}: {e}"[:200]})
send({"outputs": outputs})
