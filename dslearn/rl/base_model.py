"""A base model for R1-Zero in miniature: pretrained on imperfect worked solutions.

GRPO can only reinforce what the policy already sometimes does: a group of G samples with equal rewards
gives no gradient. Every public GRPO demo therefore starts from a pretrained model that solves some
problems — pass@1 low, pass@G high. Ours is a tiny dslearn model pretrained from scratch on text that
mixes the task domain with *imperfect* worked solutions:

    What is 47 + 38?
    <think>7+8=15, 4+3+1=8</think><answer>85</answer>       (right: the carry is kept)
    What is 29 + 56?
    <think>9+6=15, 2+5=7</think><answer>75</answer>         (a slip: the carry is forgotten)

Every problem needs a carry, and in a fraction ``slip_rate`` of the solutions the carry is dropped — so
the pretrained model knows the format and the digit sums, and carries only some of the time. RL's job
is then to make the right habit the only one. That is the honest shape of R1-Zero at this scale:
sharpening a skill that is already in the base distribution, not creating one.

Problems are all two-digit additions with a carry, split by ``tasks.is_held_out`` (the prompt hash):
held-out prompts never appear in pretraining.
"""

from __future__ import annotations

import random

from .tasks import Problem

PROMPT_TEMPLATE = "{question}\n"


def needs_carry(problem: Problem) -> bool:
    a, b = (int(t) for t in problem.question.removeprefix("What is ").removesuffix("?").split(" + "))
    return (a % 10) + (b % 10) >= 10


def carry_problems(split: str = "train", seed: int = 0) -> list[Problem]:
    """Every two-digit addition a + b that needs a carry (about 3,600), in one split, shuffled by seed."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    out = []
    for a in range(10, 100):
        for b in range(10, 100):
            p = Problem("arithmetic", f"What is {a} + {b}?", str(a + b))
            if needs_carry(p) and p.split == split:
                out.append(p)
    random.Random(seed).shuffle(out)
    return out


def worked_solution(problem: Problem, slip: bool) -> str:
    """The response text; with ``slip`` the carry is forgotten (and the answer is wrong by 10)."""
    a, b = (int(t) for t in problem.question.removeprefix("What is ").removesuffix("?").split(" + "))
    ones = a % 10 + b % 10
    carry = 0 if slip else ones // 10
    tens = a // 10 + b // 10 + carry
    carry_txt = "" if slip else "+1"
    answer = tens * 10 + ones % 10
    return f"<think>{a % 10}+{b % 10}={ones}, {a // 10}+{b // 10}{carry_txt}={tens}</think><answer>{answer}</answer>"


def base_corpus(n_problems: int, slip_rate: float = 0.6, seed: int = 0) -> bytes:
    """Pretraining text: prompts followed by worked solutions, a fraction ``slip_rate`` of them wrong."""
    if not 0 <= slip_rate <= 1:
        raise ValueError(f"slip_rate must be in [0, 1], got {slip_rate}")
    rng = random.Random(seed)
    pool = carry_problems("train")
    docs = []
    for _ in range(n_problems):  # drawn with replacement: a problem is solved right some times, wrong others
        p = rng.choice(pool)
        docs.append(PROMPT_TEMPLATE.format(question=p.question) + worked_solution(p, rng.random() < slip_rate))
    return ("\n\n".join(docs) + "\n\n").encode()
