"""Distillation (DeepSeek-R1 §2.4, §4.1): SFT a smaller student on a stronger model's verified samples.

R1 fine-tunes Qwen and Llama bases on 800k samples from DeepSeek-R1 and finds that, for small models,
this beats running large-scale RL on the small model itself (Table 6: distilled Qwen-32B vs RL on
Qwen-32B). The miniature comparison, at equal student compute:

    distill   teacher samples k responses per training problem; keep the verified ones (well-formed, the exact
              sum, written wholly in the prompt's language: R1's rejection-sampling filter); SFT the student
              on them (prompt masked) — ``distill``
    RL        GRPO on the student directly, same problems — ``trainer.GRPOTrainer``

**Compute** is counted in FLOPs of the student, 2N per token of a forward pass and 6N per token of a
forward + backward (N = the student's parameters; attention's share is ignored, the same for both):

    SFT step     6N · batch_size · seq_len                       (padded positions are computed too)
    GRPO step    2N · (P + R) · (2 + [β > 0]) + 6N · μ · (P + R)
                 P, R: the step's prompt and response tokens — sampling (cached: each token once), the
                 π_old pass, the π_ref pass when β > 0, then μ updates

The teacher's sampling is *not* charged to the distilled student — R1's comparison does not charge it either
(``teacher_flops`` reports it beside).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data.sft import SFTStream
from ..generate import generate
from ..train.trainer import TrainConfig, Trainer
from .template import STOP
from .world import reward_parts


def forward_flops(n_params: int, tokens: int) -> float:
    return 2.0 * n_params * tokens


def train_flops(n_params: int, tokens: int) -> float:
    return 6.0 * n_params * tokens


def sft_step_flops(n_params: int, cfg: TrainConfig, seq_len: int) -> float:
    return train_flops(n_params, cfg.batch_size * seq_len)


def grpo_step_flops(n_params: int, prompt_tokens: int, response_tokens: int, inner_steps: int, beta: float) -> float:
    t = prompt_tokens + response_tokens
    return forward_flops(n_params, t) * (2 + (beta > 0)) + train_flops(n_params, t) * inner_steps


@torch.no_grad()
def verified_samples(teacher, problems: Sequence, k: int, max_new_tokens: int = 160, temperature: float = 1.0,
                     seed: int = 0, per_problem: int = 1) -> tuple[list[tuple[list[int], list[int]]], dict]:
    """Sample k responses per problem from ``teacher`` and keep, per problem, up to ``per_problem`` distinct
    responses that are well-formed, right and wholly in the prompt's language. Returns the (prompt, response)
    pairs and counts: sampled, verified, kept, problems covered, teacher tokens generated."""
    if k < 1 or per_problem < 1:
        raise ValueError(f"k and per_problem must be >= 1, got k={k}, per_problem={per_problem}")
    g = torch.Generator().manual_seed(seed)
    prompts = [p.prompt_ids for p in problems for _ in range(k)]
    outs = generate(teacher, prompts, max_new_tokens, temperature, stop=[STOP], generator=g)
    pairs, kept, verified = [], {}, 0
    for i, o in enumerate(outs):
        p = problems[i // k]
        r = reward_parts(p, o.tokens)
        if r.accuracy == 1.0 and r.consistency == 1.0:
            verified += 1
            mine = kept.setdefault(i // k, set())
            if len(mine) < per_problem and tuple(o.tokens) not in mine:
                mine.add(tuple(o.tokens))
                pairs.append((list(prompts[i]), list(o.tokens)))
    stats = {"sampled": len(outs), "verified": verified, "kept": len(pairs), "problems_covered": len(kept),
             "teacher_tokens": sum(len(p) + len(o.tokens) for p, o in zip(prompts, outs))}
    return pairs, stats


def teacher_flops(teacher, stats: dict) -> float:
    return forward_flops(teacher.num_parameters(), stats["teacher_tokens"])


def distill(student, pairs: Sequence[tuple[list[int], list[int]]], cfg: TrainConfig, run_dir: str | Path | None = None,
            evaluate: Callable[[object], dict] | None = None, eval_every: int = 0) -> tuple[object, list[dict]]:
    """SFT ``student`` on (prompt, response) ``pairs`` (e.g. ``verified_samples`` of a teacher) on the one training
    core (``dslearn.train.Trainer``'s SFT step function, prompt tokens masked), exact resume from ``run_dir``.
    Every record carries ``flops`` (the student's cumulative training FLOPs); eval records add ``evaluate(model)``
    (at step 0, every ``eval_every`` steps and at the end). Returns (student, records)."""
    if not pairs:
        raise ValueError("distill needs at least one (prompt, response) pair")
    seq_len = cfg.seq_len or max(len(p) + len(r) for p, r in pairs)
    cfg = TrainConfig(**{**cfg.to_dict(), "seq_len": seq_len})
    trainer = Trainer(student, cfg, SFTStream(pairs), run_dir=run_dir)
    per_step = sft_step_flops(student.num_parameters(), cfg, seq_len)

    def run_eval() -> dict:
        was = student.training
        student.eval()
        out = {"step": trainer.step, "flops": trainer.step * per_step, **(evaluate(student) if evaluate else {})}
        student.train(was)
        return out

    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        trainer.maybe_resume()
    out = trainer.loop.fit(trainer.step_function, evaluate=run_eval, eval_every=eval_every, eval_first=True,
                           eval_kind="eval", show=("loss",))
    records = [{**r, "flops": r["step"] * per_step} if r["kind"] == "train" else r for r in out.records]
    student.eval()
    return student, records
