"""Does self-checking pay off for the model itself? Accuracy of sampled responses with and without a
self-check line, per difficulty, for a shipped checkpoint.

    python experiments/r1/checks.py cold_start [rl_cold_start_lam0.5_seed0 ...]

Writes results/checks_<name>.json. Held-out problems: 20 per (difficulty, language), 8 samples each.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    from r1_recipe import load

    from dslearn.rl.evaluate import sample_responses
    from dslearn.rl.recipe import default_problems
    from dslearn.rl.world import reward_parts

    torch.set_num_threads(1)
    problems = default_problems("held_out", 20, seed=2)
    for name in sys.argv[1:]:
        samples = sample_responses(load(name).eval(), problems, 8, seed=0)
        cells = defaultdict(lambda: [0, 0])  # (difficulty, checked) -> [right, total]
        for p, resp in zip(problems, samples):
            for r in resp:
                x = reward_parts(p, r)
                if x.format:
                    c = cells[(p.difficulty, x.checks > 0)]
                    c[0] += int(x.accuracy)
                    c[1] += 1
        out = {f"d{d}_{'checked' if k else 'unchecked'}": {"accuracy": r / n, "responses": n}
               for (d, k), (r, n) in sorted(cells.items())}
        (HERE / "results" / f"checks_{name}.json").write_text(json.dumps(out, indent=1))
        print(name, json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
