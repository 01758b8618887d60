"""Hide MoE all-to-alls behind DualPipe's F&B pairs: measured on 4 CPU processes, next to the simulator.

    python bench/parallel_alltoall.py                        # writes experiments/parallel/alltoall.json
    python bench/parallel_alltoall.py --a2a-latency 0.03 --repeats 5

PP = 2 pipeline ranks × EP = 2 expert-parallel ranks; a 2-layer MoE model (one MoE layer per stage),
M micro-batches per replica; every dispatch and combine (forward and backward) held for the injected
latency. 1F1B, DualPipe with F&B halves one after the other, and DualPipe with the halves in two
threads. For each: the measured makespan, the simulator's from that run's op costs, and the ratio to
1F1B next to the simulator's prediction from 1F1B's F and B alone (pairs of F + B, or max(F, B) when
one half's communication hides completely behind the other). Timings depend on the machine; the JSON
records them with the settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dslearn.studies.parallel import measure_expert_parallel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--a2a-latency", type=float, default=0.02)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="experiments/parallel/alltoall.json")
    a = ap.parse_args()
    res = measure_expert_parallel(a.microbatches, a2a_latency=a.a2a_latency, repeats=a.repeats)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    for key, r in res["runs"].items():
        c = r["costs"]
        pair = f"  F&B {c['FB'] * 1e3:.1f}" if r["schedule"] == "dualpipe" else ""  # 1F1B runs no F&B pair
        print(f"{key:17s} makespan {r['measured_makespan'] * 1e3:6.1f} ms (sim {r['simulated_makespan'] * 1e3:6.1f})"
              f"  bubble {r['measured_bubble_fraction']:.3f}  F {c['F'] * 1e3:.1f}  B {c['B'] * 1e3:.1f}{pair} ms")
    for key, q in res["over_1f1b"].items():
        print(f"{key}/1F1B makespan: measured {q['measured']:.3f}, predicted {q['predicted']:.3f}")


if __name__ == "__main__":
    main()
