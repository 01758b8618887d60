"""Scoring a checkpoint on chapter 09's problems the way DeepSeek-R1 reports results (§3, "Evaluation Setup").

API::

    evaluate(model, problems, k, temperature=1.0, seed=0, n=None, max_new_tokens=160) -> dict
    sample_responses(model, problems, n, temperature, seed, max_new_tokens) -> list[list[list[int]]]
    pass_at_k_unbiased(n, c, k) -> float

R1 samples k responses per problem (temperature 0.6 there) and reports

    pass@1 = (1/k) Σ_i p_i           the mean accuracy of the k samples — *not* greedy decoding
    cons@k (maj@k)                  the majority answer of the k samples, checked once

and Codex's pass@k (at least one of k samples right) is estimated without bias from n ≥ k samples of
which c are right: pass@k = 1 − C(n−c, k) / C(n, k). Greedy (temperature 0) accuracy is reported
beside them. A response that ``template.parse`` rejects has no answer: it is wrong and does not vote.

Also measured over all samples: format rate, language consistency (R1 §2.3.2; 0 for a malformed
response), the share of mixed-language responses (well-formed, consistency < 1), the self-check rate
(share of responses with at least one ``check`` line) and checks per response, the mean response length
(tokens), and every accuracy figure per difficulty (operand digits).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from math import comb

import torch

from ..generate import generate
from .template import STOP, parse
from .world import Problem, reward_parts


def pass_at_k_unbiased(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n, c of them right, is right)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


@torch.no_grad()
def sample_responses(model, problems: list[Problem], n: int, temperature: float = 1.0, seed: int = 0,
                     max_new_tokens: int = 160, rows_per_batch: int = 256) -> list[list[list[int]]]:
    """n responses per problem (token ids after the prompt, EOS included when the model stopped), sampled in
    batches of at most ``rows_per_batch`` sequences from one generator seeded by ``seed``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    prompts = [p.prompt_ids for p in problems for _ in range(n)]
    out = []
    for i in range(0, len(prompts), rows_per_batch):
        out += [o.tokens for o in generate(model, prompts[i:i + rows_per_batch], max_new_tokens, temperature,
                                           stop=[STOP], generator=g)]
    return [out[j * n:(j + 1) * n] for j in range(len(problems))]


def _majority(answers: list[str | None]) -> str | None:
    """The most common answer among the well-formed ones (ties: the one seen first); None if there is none."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


def _normalise(answer: str) -> str:
    return str(int(answer)) if answer.lstrip("-").isdigit() else answer


def evaluate(model, problems: list[Problem], k: int, temperature: float = 1.0, seed: int = 0, n: int | None = None,
             max_new_tokens: int = 160, greedy: bool = True) -> dict:
    """pass@1 (mean over the samples), maj@k, pass@k, greedy accuracy and the response statistics of ``model``
    on ``problems`` (n ≥ k samples each, default n = k), overall and per difficulty (``by_difficulty``)."""
    n = k if n is None else n
    if k < 1 or n < k:
        raise ValueError(f"k must be >= 1 and n >= k, got k={k}, n={n}")
    if not problems:
        raise ValueError("problems is empty")
    was = model.training
    model.eval()
    samples = sample_responses(model, problems, n, temperature, seed, max_new_tokens)
    greedy_resp = [r[0] for r in sample_responses(model, problems, 1, 0.0, 0, max_new_tokens)] if greedy else None
    model.train(was)
    per_problem, stats = [], defaultdict(list)
    for i, (p, resp) in enumerate(zip(problems, samples)):
        parts = [reward_parts(p, r) for r in resp]
        parsed = [parse(r) for r in resp]
        answers = [_normalise(x.answer) if x is not None else None for x in parsed]
        c = int(sum(x.accuracy for x in parts))
        row = {"difficulty": p.difficulty, "pass@1": c / n, f"pass@{k}": pass_at_k_unbiased(n, c, k),
               f"maj@{k}": float(_majority(answers[:k]) == p.answer)}
        if greedy_resp is not None:
            row["greedy"] = reward_parts(p, greedy_resp[i]).accuracy
        per_problem.append(row)
        for x in parts:
            stats["format"].append(x.format)
            stats["consistency"].append(x.consistency)
            stats["mixed"].append(float(x.format == 1.0 and x.consistency < 1.0))
            stats["self_check_rate"].append(float(x.checks > 0))
            stats["checks_per_response"].append(float(x.checks))
            stats["response_len"].append(float(x.length))
    keys = [key for key in per_problem[0] if key != "difficulty"]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    out = {key: mean(per_problem, key) for key in keys}
    out.update({key: sum(v) / len(v) for key, v in stats.items()})
    out["by_difficulty"] = {}
    for d in sorted({r["difficulty"] for r in per_problem}):
        rows = [r for r in per_problem if r["difficulty"] == d]
        out["by_difficulty"][d] = {"problems": len(rows), **{key: mean(rows, key) for key in keys}}
    out.update({"k": k, "n": n, "problems": len(problems), "temperature": temperature})
    return out
