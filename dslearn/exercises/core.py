"""The exercise checker: a learner passes their own function and gets PASS / FAIL with a hint.

Each exercise is a checker function registered under a name. It receives the learner's function,
calls it on test inputs and raises ``AssertionError`` with a precise message when something is off.
``check(name, fn)`` runs it and returns a ``Result`` that prints as one line:

    [PASS] rmsnorm: matches dslearn's RMSNorm on 4 test cases
    [FAIL] rmsnorm: case 2 (eps=1e-2): max abs difference 0.031 > 1e-5
           hint: divide by sqrt(mean(x²) + eps), not by sqrt(mean(x²)) + eps
    [TODO] rmsnorm: not attempted yet (your function raises NotImplementedError)

A function that still raises ``NotImplementedError`` is "not attempted", not a failure, so a
notebook with untouched exercises still runs top to bottom.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Exercise:
    name: str
    checker: Callable
    hint: str
    summary: str


@dataclass
class Result:
    name: str
    status: str  # "PASS", "FAIL" or "TODO"
    message: str
    hint: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def __str__(self) -> str:
        text = f"[{self.status}] {self.name}: {self.message}"
        if self.status != "PASS" and self.hint:
            text += f"\n       hint: {self.hint}"
        return text

    __repr__ = __str__


_REGISTRY: dict[str, Exercise] = {}


def assert_tensor_close(got, want, what: str, atol: float = 1e-5) -> None:
    """For checkers: a learner's tensor must have ``want``'s shape and be within ``atol`` of it everywhere."""
    import torch

    assert isinstance(got, torch.Tensor), f"{what}: expected a tensor, got {type(got).__name__}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    err = (got.float() - want.float()).abs().max().item()
    assert err <= atol, f"{what}: max abs difference {err:.3g} > {atol:g}"


def exercise(name: str, hint: str):
    """Register ``checker(learner_fn) -> str`` (a success summary) as exercise ``name``."""

    def register(checker: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"exercise {name!r} is registered twice")
        _REGISTRY[name] = Exercise(name, checker, hint, (checker.__doc__ or "").strip().split("\n")[0])
        return checker

    return register


def list_exercises() -> dict[str, str]:
    """{name: one-line description} of every registered exercise."""
    return {name: ex.summary for name, ex in _REGISTRY.items()}


def check(name: str, fn: Callable) -> Result:
    """Run exercise ``name`` against the learner's function ``fn``."""
    if name not in _REGISTRY:
        raise KeyError(f"no exercise named {name!r}; available: {sorted(_REGISTRY)}")
    ex = _REGISTRY[name]
    if not callable(fn):
        return Result(name, "FAIL", f"expected a function, got {type(fn).__name__}", ex.hint)
    try:
        summary = ex.checker(fn)
    except NotImplementedError:
        return Result(name, "TODO", "not attempted yet (your function raises NotImplementedError)", ex.hint)
    except AssertionError as e:
        return Result(name, "FAIL", str(e) or "a check failed", ex.hint)
    except Exception as e:  # the learner's code crashed: show where, in their code
        frame = traceback.extract_tb(e.__traceback__)[-1]
        return Result(name, "FAIL", f"your function raised {type(e).__name__}: {e} "
                                    f"(line {frame.lineno}: {frame.line})", ex.hint)
    return Result(name, "PASS", summary or "all checks passed")
