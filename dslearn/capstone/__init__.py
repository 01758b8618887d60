"""Chapter 10's capstone: a miniature DeepSeek-V3 sized by chapter 01's laws and trained stage by stage
(``dslearn capstone``). ``sizing`` (the preset's derivation, accounting beside V3), ``stages`` (what each stage
does), ``pipeline`` (the plan, resumable stages, --until/--from), ``report`` (report.md and figures)."""

from .pipeline import (
    POST_TRAINING,
    Context,
    Stage,
    all_stages,
    describe_plan,
    make_plan,
    reduced_plan,
    run,
    stage_names,
)
from .sizing import accounting, accounting_table, derivation, family, fitted_laws, size_for_budget
from .stages import CapstoneError

__all__ = ["POST_TRAINING", "CapstoneError", "Context", "Stage", "accounting", "accounting_table", "all_stages",
           "derivation", "describe_plan", "family", "fitted_laws", "make_plan", "reduced_plan", "run",
           "size_for_budget", "stage_names"]
