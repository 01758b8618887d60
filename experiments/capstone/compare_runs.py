"""Compare two finished ``dslearn capstone`` runs of the same plan: the one-process run and the same command under
``torchrun --nproc-per-node 2`` (the stages that train with ``Trainer`` run data-parallel there).

    dslearn capstone --out /tmp/one --no-progress
    torchrun --nproc-per-node 2 -m dslearn capstone --out /tmp/two --no-progress
    python experiments/capstone/compare_runs.py /tmp/one /tmp/two        # the output is two_processes.txt

Prints, per training stage, the largest weight difference of the final checkpoints and whether every logged
training loss is equal, then whether the evaluation tables are equal, and the stage wall times side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from dslearn.capstone.pipeline import all_stages


def _weights(run: Path, stage: str) -> dict:
    latest = (run / stage / "checkpoints" / "LATEST").read_text().strip()
    return load_file(str(run / stage / "checkpoints" / latest / "model.safetensors"))


def _losses(run: Path, stage: str) -> list[float]:
    rows = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train" and "loss" in r]


def compare(a: Path, b: Path) -> None:
    if json.loads((a / "plan.json").read_text()) != json.loads((b / "plan.json").read_text()):
        raise SystemExit(f"error: {a} and {b} ran different plans")
    print(f"{'stage':<24}{'processes':>10}{'max |Δw|':>12}{'losses':>9}{'equal':>7}{'wall s':>16}")
    for stage in all_stages():
        sa, sb = (json.loads((r / stage.name / "summary.json").read_text()) for r in (a, b))
        cells = ["", "", ""]
        if stage.trains:
            wa, wb = _weights(a, stage.name), _weights(b, stage.name)
            diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
            la, lb = _losses(a, stage.name), _losses(b, stage.name)
            cells = [f"{diff:.3g}", str(len(la)), "yes" if la == lb else "no"]
        procs = f"{sa.get('processes', 1)} / {sb.get('processes', 1)}"
        print(f"{stage.name:<24}{procs:>10}{cells[0]:>12}{cells[1]:>9}{cells[2]:>7}"
              f"{sa['wall_s']:>8.0f}{sb['wall_s']:>8.0f}")
    ta, tb = (json.loads((r / "evaluate" / "table.json").read_text()) for r in (a, b))
    print(f"evaluation tables equal: {'yes' if ta == tb else 'no'}")
    total = [sum(json.loads((r / s.name / "summary.json").read_text())["wall_s"] for s in all_stages()) for r in (a, b)]
    print(f"total wall: {total[0]:.0f} s / {total[1]:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python experiments/capstone/compare_runs.py ONE_PROCESS_RUN TWO_PROCESS_RUN")
    compare(Path(sys.argv[1]), Path(sys.argv[2]))
