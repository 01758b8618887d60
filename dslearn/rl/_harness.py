"""Runs inside the sandbox (not for import): load solution.py, call its entry point on each input of
task.json, write the outputs to results.json. Expected outputs never enter the sandbox, so a program
that tampers with this harness can only "pass" by producing the right outputs."""

import json
import sys

task = json.load(open("task.json"))
outputs = []
namespace = {"__name__": "solution"}
try:
    exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
    fn = namespace[task["entry"]]
except BaseException as e:  # noqa: BLE001 — anything the solution does is data to report
    json.dump({"error": f"{type(e).__name__}: {e}"[:500]}, open("results.json", "w"))
    sys.exit(0)
for args in task["inputs"]:
    try:
        value = fn(*args)
        json.dumps(value)
        outputs.append({"value": value})
    except BaseException as e:  # noqa: BLE001
        outputs.append({"error": f"{type(e).__name__}: {e}"[:200]})
json.dump({"outputs": outputs}, open("results.json", "w"))
