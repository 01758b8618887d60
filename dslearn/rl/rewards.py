"""Rule-based rewards (DeepSeek-R1 §2.2.2): accuracy and format, checked by code, hard to game.

R1-Zero's reward has two parts. **Accuracy**: the final answer, extracted from a fixed place, is
compared with the truth by a program. **Format**: the response must put its reasoning in
``<think>…</think>`` and its answer in ``<answer>…</answer>``. RL optimises whatever the checker lets
through, so the checker is strict (public reproductions saw every trick below):

    trick                                          rule here
    repeated or nested tags                        exactly one <think> block and one <answer> block, in that order
    an empty or whitespace answer                  the answer must be non-empty
    text after </answer> (a second try)            nothing but whitespace after </answer>
    a long wrong answer collecting format reward   format reward is small next to accuracy; long answers fail
                                                   (> 64 characters; > 1000 for code)
    code in the answer (eval, __import__)          answers are evaluated by an AST whitelist (safe_eval), never eval;
                                                   code answers run only in the sandbox, on hidden tests

    response = <think> reasoning </think> <answer> answer </answer>

``total_reward = w_acc · accuracy + w_fmt · format`` (R1 also adds a language-consistency reward; our
byte-level tasks have one language).
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

from .safe_eval import UnsafeExpression, numbers_used, safe_eval
from .sandbox import Limits, run_code
from .tasks import Problem

MAX_ANSWER_CHARS = {"arithmetic": 64, "countdown": 64, "code": 1000}  # by task family
_FORMAT = re.compile(r"\A\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*\Z", re.DOTALL)
_TAG = re.compile(r"</?(think|answer)>")


def parse_response(text: str, max_answer_chars: int = 64) -> tuple[str, str] | None:
    """(thinking, answer) if ``text`` has exactly the required shape, else None."""
    m = _FORMAT.match(text)
    if m is None or len(_TAG.findall(text)) != 4:
        return None
    answer = m.group("answer").strip()
    if not answer or len(answer) > max_answer_chars:
        return None
    return m.group("think"), answer


def format_reward(text: str, family: str = "arithmetic") -> float:
    return 1.0 if parse_response(text, MAX_ANSWER_CHARS[family]) is not None else 0.0


def extract_answer(text: str, family: str = "arithmetic") -> str | None:
    """The answer of a well-formed response (accuracy is only ever judged on well-formed ones)."""
    parsed = parse_response(text, MAX_ANSWER_CHARS[family])
    return parsed[1] if parsed else None


def _as_number(answer: str) -> Fraction | None:
    try:
        return safe_eval(answer)
    except UnsafeExpression:
        return None


def accuracy_reward(problem: Problem, text: str, limits: Limits | None = None) -> float:
    """1.0 if the response's answer is right for ``problem``, else 0.0 (code: every hidden test passes)."""
    if problem.family not in MAX_ANSWER_CHARS:
        raise ValueError(f"no accuracy rule for task family {problem.family!r}")
    answer = extract_answer(text, problem.family)
    if answer is None:
        return 0.0
    if problem.family == "code":
        return run_code(answer, "f", list(problem.tests), limits or Limits()).reward
    if problem.family == "arithmetic":  # the answer must be the number itself, not an expression for it
        if not re.fullmatch(r"-?\d+", answer):
            return 0.0
        return float(int(answer) == int(problem.answer))
    if problem.family == "countdown":
        value = _as_number(answer)
        if value is None or value != problem.target:
            return 0.0
        used, available = Counter(numbers_used(answer)), Counter(problem.numbers)
    return float(all(used[k] <= available[k] for k in used))


def total_reward(problem: Problem, text: str, w_accuracy: float = 1.0, w_format: float = 0.1) -> float:
    return w_accuracy * accuracy_reward(problem, text) + w_format * format_reward(text, problem.family)
