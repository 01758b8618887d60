"""Print the tables of experiments/r1/README.md from the shipped results (results/*.json).

    python experiments/r1/report.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("pass@1", "maj@4", "pass@4", "greedy", "format", "consistency", "mixed", "self_check_rate", "response_len")


def row(name: str, ev: dict, prefix: str = "") -> str:
    cells = [f"{ev[prefix + k]:.3f}" if k != "response_len" else f"{ev[prefix + k]:.1f}" for k in KEYS]
    by = ev[prefix + "by_difficulty"]
    cells += [f"{by[d]['pass@1']:.3f}" for d in sorted(by, key=int)]
    return f"| {name} | " + " | ".join(cells) + " |"


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def present_mean(values: list) -> float:
    return statistics.mean(v for v in values if v is not None)


def main() -> None:
    header = "| checkpoint | " + " | ".join(KEYS) + " | pass@1 d2 | pass@1 d3 | pass@1 d4 |"
    print(header)
    print("|" + "---|" * (len(KEYS) + 4))
    for name in ("base", "cold_start"):
        f = RESULTS / f"{name}.json"
        if f.exists():
            print(row(name, json.loads(f.read_text())["eval"]))
    for f in sorted(RESULTS.glob("rl_*.json")):
        runs = json.loads(f.read_text())["runs"]
        for name, r in sorted(runs.items()):
            print(row(name, r["eval_end"], "heldout_"))
    rs = RESULTS / "rs_sft.json"
    if rs.exists():
        info = json.loads(rs.read_text())
        print(row("rs_sft (from base)", info["eval"]))
        print("\nrejection sampling:", info["rejection_stats"], f"sample {info['sample_wall_s']:.0f}s,",
              f"SFT {info['train_wall_s']:.0f}s")
    for f in sorted(RESULTS.glob("rl_*.json")):
        s = json.loads(f.read_text())
        print(f"\n{f.name}: pool wall {s['pool_wall_s']:.0f}s; per run:",
              {n: round(r["wall_s"]) for n, r in s["runs"].items()})
        groups = {}
        for name, r in s["runs"].items():
            groups.setdefault(name.rsplit("_seed", 1)[0], []).append(r)
        print("| runs | heldout pass@1 start | end | maj@4 end | consistency end | mixed end | self-check end "
              "| response len (train) first 5 steps → last 5 steps | self-check rate (train) first 5 → last 5 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for g, rs_ in groups.items():
            def m(key, which, rs_=rs_):
                return mean_sd([r[which]["heldout_" + key] for r in rs_])

            def ser(key, part, rs_=rs_):
                vals = [statistics.mean(r["series"][key][:5] if part == 0 else r["series"][key][-5:]) for r in rs_]
                return mean_sd(vals)
            print(f"| {g} (n={len(rs_)}) | {m('pass@1', 'eval_start')} | {m('pass@1', 'eval_end')} "
                  f"| {m('maj@4', 'eval_end')} | {m('consistency', 'eval_end')} | {m('mixed', 'eval_end')} "
                  f"| {m('self_check_rate', 'eval_end')} | {ser('response_len', 0)} → {ser('response_len', 1)} "
                  f"| {ser('self_check_rate', 0)} → {ser('self_check_rate', 1)} |")
        print("\n(train accuracy per difficulty: steps 1-10 → steps 21-30; a step holds 8 prompts, so a level can be "
              "missing from a step and is then skipped)")
        print("| runs | train accuracy d2 | d3 | d4 |")
        print("|---|---|---|---|")
        for g, rs_ in groups.items():
            cells = []
            for d in (2, 3, 4):
                first = [present_mean(r["series"][f"accuracy_d{d}"][:10]) for r in rs_]
                last = [present_mean(r["series"][f"accuracy_d{d}"][-10:]) for r in rs_]
                cells.append(f"{mean_sd(first)} → {mean_sd(last)}")
            print(f"| {g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
