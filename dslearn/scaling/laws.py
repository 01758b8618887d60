"""DeepSeek-LLM's scaling laws, with the paper's constants (§3.1–3.2).

Hyperparameters, fitted on small runs and extrapolated (C in FLOPs, B in tokens):

    η_opt = 0.3118 · C^(−0.1250)        B_opt = 0.2920 · C^(0.3271)

Compute allocation, from IsoFLOP profiles with M (non-embedding FLOPs/token) as the model scale:

    M_opt = 0.1715 · C^(0.5243)         D_opt = 5.8316 · C^(0.4757)      (M_opt · D_opt = C)

The model exponent a grows with data quality: 0.450 (early in-house data), 0.524 (current), 0.578
(OpenWebText2) — better data deserves a larger model for the same compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PowerLaw:
    """y = coef · x^exponent, with optional uncertainties from a fit."""

    coef: float
    exponent: float
    exponent_std: float | None = None  # standard deviation (bootstrap or regression)
    coef_std: float | None = None
    name: str = ""

    def __call__(self, x):
        return self.coef * x**self.exponent

    def __str__(self) -> str:
        pm = f" ± {self.exponent_std:.3f}" if self.exponent_std is not None else ""
        return f"{self.name + ' = ' if self.name else ''}{self.coef:.4g} · C^({self.exponent:.4f}{pm})"


ETA_OPT = PowerLaw(0.3118, -0.1250, name="η_opt")
B_OPT = PowerLaw(0.2920, 0.3271, name="B_opt")
M_OPT = PowerLaw(0.1715, 0.5243, name="M_opt")
D_OPT = PowerLaw(5.8316, 0.4757, name="D_opt")
MODEL_EXPONENT_BY_DATA = {"early in-house": 0.450, "current in-house": 0.524, "OpenWebText2": 0.578}


def _check_budget(C: float) -> None:
    if not (C > 0 and math.isfinite(C)):
        raise ValueError(f"compute budget C must be a positive finite number of FLOPs, got {C}")


def optimal_hyperparameters(C: float, seq_len: int | None = None) -> dict:
    """η_opt and B_opt (tokens, and sequences when seq_len is given) for budget C."""
    _check_budget(C)
    out = {"lr": ETA_OPT(C), "batch_tokens": B_OPT(C)}
    if seq_len is not None:
        out["batch_sequences"] = out["batch_tokens"] / seq_len
    return out


def optimal_allocation(C: float) -> dict:
    """M_opt (FLOPs/token) and D_opt (tokens) for budget C, from the paper's allocation laws."""
    _check_budget(C)
    return {"M": M_OPT(C), "D": D_OPT(C)}
