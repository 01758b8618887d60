"""Scaling laws (DeepSeek-LLM §3): compute accounting, the paper's laws, fits, and the design of a sweep.

The runs themselves (training each spec of a sweep, counting a built model's FLOPs) are experiments:
``dslearn.studies.scaling``.
"""

from .accounting import (
    M_closed_form,
    compute_budget,
    flops_per_token,
    gpu_hours_for,
    mfu,
    mtp_flops_per_token,
    mtp_parameter_counts,
    non_embedding_params,
    parameter_counts,
    six_n1,
    six_n2,
    training_cost,
)
from .fit import IsoFLOPFit, ParametricFit, fit_isoflop, fit_parametric, fit_power_law
from .laws import B_OPT, D_OPT, ETA_OPT, M_OPT, PowerLaw, optimal_allocation, optimal_hyperparameters

__all__ = [
    "B_OPT", "D_OPT", "ETA_OPT", "IsoFLOPFit", "M_OPT", "M_closed_form", "ParametricFit", "PowerLaw",
    "compute_budget", "fit_isoflop", "fit_parametric", "fit_power_law", "flops_per_token", "gpu_hours_for",
    "mfu", "mtp_flops_per_token", "mtp_parameter_counts", "non_embedding_params", "optimal_allocation",
    "optimal_hyperparameters", "parameter_counts", "six_n1", "six_n2", "training_cost",
]
