"""Sampling responses for a batch of problems with dslearn's cached generator, and scoring them."""

from __future__ import annotations

import torch

from ..data import ByteTokenizer
from ..generate import generate
from .base_model import PROMPT_TEMPLATE
from .rewards import accuracy_reward, format_reward
from .tasks import Problem

TOKENIZER = ByteTokenizer()
STOP = TOKENIZER.encode("</answer>")


def prompt_ids(problem: Problem) -> list[int]:
    return TOKENIZER.encode(PROMPT_TEMPLATE.format(question=problem.question))


def sample(model, problems: list[Problem], group_size: int, max_new_tokens: int = 64, temperature: float = 1.0,
           generator: torch.Generator | None = None, decode: str = "eager") -> list[list[int]]:
    """G responses per problem (token ids, ending at </answer> when the model stops there), in group order.
    ``decode``: generate()'s path ("compiled" for the compiled static step: bench/rollout_throughput.py)."""
    prompts = [prompt_ids(p) for p in problems for _ in range(group_size)]
    outs = generate(model, prompts, max_new_tokens, temperature=temperature, stop=[STOP], generator=generator,
                    decode=decode)
    return [o.tokens for o in outs]


def score(problems: list[Problem], responses: list[list[int]], group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy, format) rewards per response, in group order."""
    acc, fmt = [], []
    for i, tokens in enumerate(responses):
        text = TOKENIZER.decode(tokens)
        p = problems[i // group_size]
        acc.append(accuracy_reward(p, text))
        fmt.append(format_reward(text, p.family))
    return torch.tensor(acc), torch.tensor(fmt)


@torch.no_grad()
def pass_at_k(model, problems: list[Problem], k: int, temperature: float = 1.0, seed: int = 0,
              max_new_tokens: int = 64) -> dict:
    """pass@1 (mean accuracy of single samples), pass@k (any of k right), and greedy accuracy."""
    g = torch.Generator().manual_seed(seed)
    acc, _ = score(problems, sample(model, problems, k, max_new_tokens, temperature, g), k)
    acc = acc.view(len(problems), k)
    greedy, _ = score(problems, sample(model, problems, 1, max_new_tokens, 0.0), 1)
    return {"pass@1": acc.mean().item(), f"pass@{k}": (acc.max(1).values > 0).float().mean().item(),
            "greedy": greedy.mean().item()}
