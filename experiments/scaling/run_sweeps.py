"""Chapter 01's experiments, end to end: the sweeps, then the fits. One command:

    python experiments/scaling/run_sweeps.py            # all sweeps (cached: re-running resumes)
    python experiments/scaling/run_sweeps.py --fit-only # refit from the shipped results

Writes, next to this file:
    hyperparams.jsonl   LR × batch grid at three budgets (one model shape per budget)
    isoflop.jsonl       5 widths × 3 budgets on the clean corpus
    isoflop_degraded.jsonl  the same grid on a degraded corpus (dslearn.scaling.data_quality.degrade)
    fits.json           fitted laws with bootstrap uncertainties, next to the paper's, and the
                        sweeps' wall time (sweep_wall_s; fitting included)

Model family: 2 layers, head_dim 8, seq 128, byte vocabulary, SwiGLU width ≈ 8/3·d. Batch size and
LR come from DeepSeek-LLM's laws at each budget (batch capped so every run gets ≥ 300 steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dslearn.scaling import B_OPT, ETA_OPT, M_OPT, fit_isoflop, fit_parametric, fit_power_law
from dslearn.scaling.sweep import RunSpec, isoflop_grid, load_results, width_for, with_law_hyperparameters
from dslearn.studies.scaling import run_sweep

HERE = Path(__file__).resolve().parent
BUDGETS = [1e11, 3e11, 1e12]  # IsoFLOP budgets
HP_BUDGETS = [3e10, 1e11, 3e11]  # hyperparameter-grid budgets (one near-optimal width each)
M_CENTER = lambda C: 2.0e5 * (C / 3e11) ** 0.5  # noqa: E731 — centred on the pilot's optimum at 3e11
LR_SCALES, BATCH_SCALES = (1 / 3, 1.0, 3.0), (0.5, 1.0, 2.0)


def hyperparameter_specs() -> list[RunSpec]:
    specs = []
    for C in HP_BUDGETS:
        d = width_for(M_CENTER(C), 2, 128, 8)
        for lr_s in LR_SCALES:
            for b_s in BATCH_SCALES:
                specs.append(with_law_hyperparameters(RunSpec(budget=C, hidden_size=d), lr_s, b_s))
    return list(dict.fromkeys(specs))  # batch caps can make two specs equal


def isoflop_specs(data: str) -> list[RunSpec]:
    return [with_law_hyperparameters(s) for s in isoflop_grid(BUDGETS, M_CENTER, n_sizes=5, spread=3.0, data=data)]


def near_optimal(rows: list[dict], tol: float = 0.005) -> list[dict]:
    """Runs within ``tol`` (relative) of the best validation loss at their budget."""
    out = []
    for C in sorted({r["budget"] for r in rows}):
        group = [r for r in rows if r["budget"] == C and not r["diverged"]]
        best = min(r["val_loss"] for r in group)
        out += [r for r in group if r["val_loss"] <= best * (1 + tol)]
    return out


def law_dict(law) -> dict:
    return {"coef": law.coef, "exponent": law.exponent, "exponent_std": law.exponent_std}


def fit_all() -> dict:
    fits = {"paper": {"eta_opt": law_dict(ETA_OPT), "B_opt": law_dict(B_OPT), "M_opt": law_dict(M_OPT)}}
    hp = load_results(HERE / "hyperparams.jsonl")
    if hp:
        good = near_optimal(hp)
        C = [r["budget"] for r in good]
        fits["eta_opt"] = law_dict(fit_power_law(C, [r["lr"] for r in good], name="eta_opt"))
        fits["B_opt"] = law_dict(fit_power_law(C, [r["batch_size"] * r["seq_len"] for r in good], name="B_opt"))
        fits["near_optimal_runs"] = len(good)
        fits["diverged_runs"] = sum(r["diverged"] for r in hp)
    for name in ("isoflop", "isoflop_degraded"):
        rows = [r for r in load_results(HERE / f"{name}.jsonl") if not r["diverged"]]
        if not rows:
            continue
        C, M, D = (np.array([r[k] for r in rows], dtype=float) for k in ("budget", "M", "tokens"))
        L = np.array([r["val_bpb"] for r in rows])
        iso = fit_isoflop(C, M, L)
        par = fit_parametric(M, D, L)
        # does M predict compute better than 6N1 / 6N2 at this scale? (ratio spread across the grid)
        six_n1 = np.array([6 * r["N_non_embedding"] for r in rows])
        six_n2 = six_n1 + 6 * 256 * np.array([r["d_model"] for r in rows])
        fits[name] = {
            "M_opt": law_dict(iso.M_law), "D_opt": law_dict(iso.D_law), "vertices_in_range": iso.in_range,
            "parametric": {"E": par.E, "A": par.A, "B": par.B, "alpha": par.alpha, "beta": par.beta,
                           "a": par.a, "a_std": par.a_std},
            "six_n1_over_M": [float((six_n1 / M).min()), float((six_n1 / M).max())],
            "six_n2_over_M": [float((six_n2 / M).min()), float((six_n2 / M).max())],
            "steps": [int(min(r["steps"] for r in rows)), int(max(r["steps"] for r in rows))],
        }
    return fits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit-only", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    t0 = time.perf_counter()
    if not args.fit_only:
        run_sweep(isoflop_specs("clean"), HERE / "isoflop.jsonl", workers=args.workers)
        run_sweep(isoflop_specs("degraded"), HERE / "isoflop_degraded.jsonl", workers=args.workers)
        run_sweep(hyperparameter_specs(), HERE / "hyperparams.jsonl", workers=args.workers)
    fits = fit_all()
    previous = json.loads((HERE / "fits.json").read_text()) if (HERE / "fits.json").exists() else {}
    if args.fit_only:  # keep the wall time of the run that produced the shipped results
        fits["sweep_wall_s"] = previous.get("sweep_wall_s", previous.get("wall_s_this_invocation"))
    else:
        fits["sweep_wall_s"] = time.perf_counter() - t0
    (HERE / "fits.json").write_text(json.dumps(fits, indent=1))
    print(json.dumps(fits, indent=1))


if __name__ == "__main__":
    main()
