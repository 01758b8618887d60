"""Verifiable tasks for RL from rule-based rewards (DeepSeek-R1 §2.2, in miniature).

R1-Zero learns from problems whose answers a program can check: no reward model, nothing to game but
the checker. Two families here are generated procedurally, with seeds and difficulty knobs:

- ``arithmetic``: "What is 47 + 385 * 2?" — multi-digit integer expressions; the reference answer is
  the exact value (integers only: operands of ÷ are chosen to divide exactly).
- ``countdown``: reach a target from given numbers with + − × ÷, each number used at most once — the
  game the TinyZero-style R1-Zero reproductions use. Problems are built from a random expression over
  the numbers, so every one has a solution (the reference), though the model may find another.
- ``code``: "Write a Python function f(...) that ..." from a few templates with random constants; the
  answer is a function, checked by running hidden test cases in the sandbox (sandbox.py).

Every problem carries its prompt, its reference answer and a ``split``: a problem is held out when
the hash of its prompt falls in the first ``held_out_percent`` of 100 buckets, so the training and
held-out sets never share a prompt, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from fractions import Fraction

from .safe_eval import safe_eval

PROMPT_SUFFIX = " Think inside <think></think>, then give only the answer inside <answer></answer>."


@dataclass(frozen=True)
class Problem:
    family: str  # "arithmetic", "countdown" or "code"
    question: str  # the task in words
    answer: str  # a reference answer (for countdown: one valid expression)
    numbers: tuple[int, ...] = ()  # countdown: the numbers available
    target: int | None = None  # countdown: the value to reach
    tests: tuple = ()  # code: ((args, expected), ...) run against the answer in the sandbox
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt(self) -> str:
        return self.question + PROMPT_SUFFIX

    @property
    def split(self) -> str:
        return "held_out" if is_held_out(self.question) else "train"


def is_held_out(question: str, held_out_percent: int = 10) -> bool:
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % 100 < held_out_percent


def _check_knobs(n: int, **knobs) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    for name, (value, low, high) in knobs.items():
        if not low <= value <= high:
            raise ValueError(f"{name} must be in {low}..{high}, got {value}")


def _strip_outer(expr: str) -> str:
    """'(a + b)' → 'a + b' when the outer parentheses wrap the whole expression."""
    if not (expr.startswith("(") and expr.endswith(")")):
        return expr
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(expr) - 1:
            return expr
    return expr[1:-1]


def _random_expression(rng: random.Random, values: list[int], ops: str) -> str | None:
    """Combine all ``values`` (in order) with random operators; None if a ÷ would not be exact."""
    expr, acc = str(values[0]), Fraction(values[0])
    for v in values[1:]:
        op = rng.choice(ops)
        if op == "/" and (v == 0 or (acc / v).denominator != 1):
            return None
        expr = f"({expr} {op} {v})" if op in "+-" else f"{expr} {op} {v}"
        acc = safe_eval(expr)
    return _strip_outer(expr)


def arithmetic(n: int, digits: int = 2, terms: int = 2, ops: str = "+-*", seed: int = 0,
               split: str | None = None) -> list[Problem]:
    """n problems "What is a op b (op c …)?" with ``digits``-digit operands and ``terms`` operands.

    ``split`` ("train" / "held_out") keeps only problems of that split (drawing until n are found)."""
    _check_knobs(n, digits=(digits, 1, 6), terms=(terms, 2, 6))
    if not ops or set(ops) - set("+-*/"):
        raise ValueError(f"ops must be a non-empty string over '+-*/', got {ops!r}")
    rng = random.Random(f"arithmetic-{seed}-{digits}-{terms}-{ops}")
    out, seen = [], set()
    for _ in range(200 * n):
        values = [rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1) for _ in range(terms)]
        expr = _random_expression(rng, values, ops)
        if expr is None:
            continue
        question = f"What is {expr}?"
        if question in seen or (split is not None and ("held_out" if is_held_out(question) else "train") != split):
            continue
        seen.add(question)
        out.append(Problem("arithmetic", question, str(safe_eval(expr)), meta={"digits": digits, "terms": terms}))
        if len(out) == n:
            return out
    raise ValueError(f"could not draw {n} distinct {split or ''} problems with these knobs; ask for fewer")


def countdown(n: int, n_numbers: int = 3, max_number: int = 20, ops: str = "+-*/", seed: int = 0,
              split: str | None = None) -> list[Problem]:
    """n Countdown problems: reach a target from ``n_numbers`` numbers in 1..max_number."""
    _check_knobs(n, n_numbers=(n_numbers, 2, 6), max_number=(max_number, 2, 1000))
    rng = random.Random(f"countdown-{seed}-{n_numbers}-{max_number}-{ops}")
    out, seen = [], set()
    for _ in range(200 * n):
        numbers = [rng.randint(1, max_number) for _ in range(n_numbers)]
        expr = _random_expression(rng, numbers, ops)
        if expr is None:
            continue
        target = safe_eval(expr)
        if target.denominator != 1 or target <= 0:
            continue
        shown = sorted(numbers)
        question = f"Using the numbers {shown}, each at most once, with + - * /, make {int(target)}."
        if question in seen or (split is not None and ("held_out" if is_held_out(question) else "train") != split):
            continue
        seen.add(question)
        out.append(Problem("countdown", question, expr, tuple(shown), int(target)))
        if len(out) == n:
            return out
    raise ValueError(f"could not draw {n} distinct {split or ''} problems with these knobs; ask for fewer")


# --- code ---------------------------------------------------------------------------------
def _code_templates(rng: random.Random):
    k, c = rng.randint(2, 9), rng.randint(-9, 9)
    m = rng.randint(2, 5)
    return [
        (f"Write a Python function f(x) that returns {k} * x + {c}.",
         f"def f(x):\n    return {k} * x + {c}", lambda x: k * x + c, lambda r: (r.randint(-50, 50),)),
        (f"Write a Python function f(xs) that returns the sum of the elements of the list xs divisible by {m}.",
         f"def f(xs):\n    return sum(v for v in xs if v % {m} == 0)",
         lambda xs: sum(v for v in xs if v % m == 0),
         lambda r: ([r.randint(-20, 20) for _ in range(r.randint(0, 8))],)),
        ("Write a Python function f(s) that returns the string s reversed.",
         "def f(s):\n    return s[::-1]", lambda s: s[::-1],
         lambda r: ("".join(r.choice("abcdef") for _ in range(r.randint(0, 8))),)),
        (f"Write a Python function f(n) that returns the sum of the first n multiples of {k} ({k}, {2 * k}, ...).",
         f"def f(n):\n    return {k} * n * (n + 1) // 2", lambda n: k * n * (n + 1) // 2,
         lambda r: (r.randint(0, 30),)),
        ("Write a Python function f(xs) that returns the largest element of the non-empty list xs minus the smallest.",
         "def f(xs):\n    return max(xs) - min(xs)", lambda xs: max(xs) - min(xs),
         lambda r: ([r.randint(-30, 30) for _ in range(r.randint(1, 8))],)),
    ]


def code(n: int, n_tests: int = 5, seed: int = 0, split: str | None = None) -> list[Problem]:
    """n function-writing problems, each with ``n_tests`` hidden test cases and a reference solution."""
    _check_knobs(n, n_tests=(n_tests, 1, 50))
    rng = random.Random(f"code-{seed}-{n_tests}")
    out, seen = [], set()
    for _ in range(200 * n):
        question, solution, fn, draw = rng.choice(_code_templates(rng))
        if question in seen or (split is not None and ("held_out" if is_held_out(question) else "train") != split):
            continue
        seen.add(question)
        cases = []
        for _ in range(n_tests):
            args = draw(rng)
            cases.append((args, fn(*args)))
        out.append(Problem("code", question, solution, tests=tuple(cases)))
        if len(out) == n:
            return out
    raise ValueError(f"could not draw {n} distinct {split or ''} problems with these knobs; ask for fewer")
