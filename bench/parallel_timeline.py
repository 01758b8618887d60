"""Measure pipeline schedules on real CPU processes and compare with the simulator.

    python bench/parallel_timeline.py                       # writes experiments/parallel/timeline.json
    python bench/parallel_timeline.py --latency 0.05 --microbatches 8

Two ranks (one per core), a 4-layer d=128 dslearn model, M micro-batches. For each schedule:
the measured makespan and bubble fraction, and the simulator's prediction from the measured mean op
costs. Then 1F1B and DualPipe again with an injected link latency: the makespan ratio DualPipe/1F1B,
measured and simulated. Timings depend on the machine; the JSON records them with the settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dslearn.studies.parallel import measure_schedules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="experiments/parallel/timeline.json")
    a = ap.parse_args()
    res = measure_schedules(a.microbatches, latency=a.latency, repeats=a.repeats)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    for key, r in res["runs"].items():
        print(f"{key:14s} makespan {r['measured_makespan'] * 1e3:7.1f} ms (sim {r['simulated_makespan'] * 1e3:7.1f})"
              f"  bubble {r['measured_bubble_fraction']:.3f} (sim {r['simulated_bubble_fraction']:.3f})")
    print("DualPipe/1F1B makespan:", {k: round(v, 3) for k, v in res["dualpipe_over_1f1b"].items()})


if __name__ == "__main__":
    main()
