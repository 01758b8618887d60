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

The shipped base (``experiments/rl/r1_zero.py`` pretrains it: ``BASE_STEPS`` steps, ``SLIP_RATE``) has the
architecture ``base_config()``; ``load_base()`` reads it for chapter 08's notebook and scripts and chapter 09.
"""

from __future__ import annotations

import random
from pathlib import Path

from safetensors.torch import load_model

from ..config import ModelConfig
from ..model import CausalLM
from .tasks import Problem

PROMPT_TEMPLATE = "{question}\n"
BASE_STEPS, SLIP_RATE = 900, 0.7  # the shipped base's pretraining recipe
N_EVAL = 100  # held-out problems chapter 08's evaluations use: carry_problems("held_out")[:N_EVAL]
SHIPPED_BASE = Path(__file__).resolve().parents[2] / "experiments" / "rl" / "base"


def base_config() -> ModelConfig:
    """The base model: 4 dense layers, d = 128, byte vocabulary, 128 positions (0.87M parameters)."""
    return ModelConfig(vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                       num_attention_heads=4, max_position_embeddings=128)


def load_base(directory: str | Path | None = None) -> CausalLM:
    """The pretrained base from ``directory`` (default: the shipped ``experiments/rl/base``)."""
    path = Path(directory) if directory is not None else SHIPPED_BASE
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no base model at {weights}; run python experiments/rl/r1_zero.py to pretrain it")
    model = CausalLM(base_config())
    load_model(model, str(weights))
    return model


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
