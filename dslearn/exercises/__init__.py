"""Exercises with checkers: ``check("rmsnorm", my_rms_norm)`` → a PASS / FAIL / TODO line with a hint.

Chapters register their exercises in their own module here (``baseline`` for notebook 00, …);
importing this package registers them all.
"""

from . import baseline, fp8, mla, moe, mtp, parallel, r1, rl, scaling  # noqa: F401  (register the chapters' exercises)
from .core import Result, check, exercise, list_exercises

__all__ = ["Result", "check", "exercise", "list_exercises"]
