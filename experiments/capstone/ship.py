"""Copy a finished ``dslearn capstone`` run's results (not its checkpoints) into experiments/capstone/.

    dslearn capstone --out runs/capstone          # the default run (≈ 7–8 minutes on one core; see README.md here)
    python experiments/capstone/ship.py runs/capstone

What is kept: report.md and its figures, plan.json, every stage's summary.json, the evaluation table, the
pretraining and long-context metrics logs. The checkpoints and the exported folder are left in the run.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ship(run: Path) -> None:
    if not (run / "report.md").is_file():
        raise SystemExit(f"error: {run} holds no finished capstone run (no report.md)")
    for rel in ["report.md", "plan.json", *[p.relative_to(run).as_posix() for p in run.glob("*/summary.json")],
                *[p.relative_to(run).as_posix() for p in run.glob("report/*.png")], "evaluate/table.json",
                "pretrain/metrics.jsonl", "long_context/metrics.jsonl"]:
        src, dst = run / rel, HERE / "run" / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    print(f"copied {run}'s results into {HERE / 'run'}")


if __name__ == "__main__":
    ship(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/capstone"))
