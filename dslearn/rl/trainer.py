"""The GRPO training loop: sample groups, score them, and take clipped policy-gradient steps.

One step (DeepSeekMath Algorithm 1, with π_old = the policy that sampled):

    1. draw ``prompts_per_step`` training problems (a pure function of seed and step)
    2. sample G responses each from the current policy with the KV-cached sampler
    3. rewards r = accuracy + w_format · format;  A = group_advantages(r)
    4. log-probs of the sampled tokens under π_old (the sampling policy, frozen) and π_ref (the base model)
    5. ``inner_steps`` (μ) optimiser steps on grpo_loss with those fixed samples: the first is on-policy
       (ρ = 1), the later ones off-policy, corrected by the ratio ρ and clipped

``algorithm="reinforce"`` is the on-policy baseline: reinforce_loss (−A_i · mean log π(o_i), the same
group-standardised A_i, no ratio, no clipping, no KL) with μ = 1 — the only μ at which it is REINFORCE
(a second update on the same samples would be off-policy with no correction). At μ = 1 and β = 0 its
gradient equals GRPO's (ρ = 1 and ∇ρ = ∇log π there; the clip is inactive): the comparison with GRPO
at μ = 2 measures what the second, ratio-corrected and clipped update per batch of samples buys.

Logged per step: reward, accuracy, format rate, response length, KL to the reference, policy entropy,
clip fraction, share of zero-variance groups, rollout tokens/s, and (MoE policies) the ``moe/*`` balance
metrics; every ``eval_every`` steps the greedy accuracy and pass@1 on held-out problems.

There is no second training loop here: ``GRPOTrainer`` builds a step function (steps 1–4, then μ
lazily evaluated updates of one micro-batch each) and runs it on ``dslearn.train.TrainingLoop``, the
core pretraining and SFT use. So GRPO gets the same gradient clipping and non-finite guard, the
``after_optimizer_step()`` hooks after every inner step (V3's routing bias keeps moving during RL),
the same checkpoints and exact resume (RNG state and MoE bias counters included; the samples of step
s depend only on (seed, s) and the weights), and the same ``CheckpointError`` for a run directory
that holds an incompatible run. The inner loss is the GRPO (or REINFORCE) loss plus the model's
``aux_loss`` (MoE balance losses), so an MoE policy keeps its balance objective.

**Pluggable task** (chapter 09). By default the trainer runs chapter 08's task: prompts from
``rollout.prompt_ids``, sampling stopped at ``</answer>``, reward ``accuracy + w_format · format`` and
``rollout.pass_at_k`` on the held-out problems. ``GRPOTrainer(..., task=...)`` swaps all four for an
``RLTask`` (e.g. ``recipe.R1Task``: the chat template's prompt, EOS as the stop token, accuracy + format
+ λ · language consistency, and ``evaluate.evaluate``); the task's ``config`` (its reward weights) is
saved with the checkpoints and must match on resume. Without a task the trainer computes exactly what
it did before (chapter 08's tests hold it).

Metrics of the μ inner steps are averaged (``loss``, ``kl``, ``clip_fraction``, ``moe/*``: see
``dslearn.train.loop`` for the reduction rules).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import check_int
from ..generate import generate
from ..train.loop import LoopConfig, LoopWrapper, MicroBatch, Step, TrainingLoop
from .grpo import LOSS_TYPES, group_advantages, grpo_loss, reinforce_loss
from .rollout import pass_at_k, prompt_ids, sample, score
from .tasks import Problem


@dataclass
class GRPOConfig:
    steps: int = 60
    prompts_per_step: int = 16
    group_size: int = 8  # G
    max_new_tokens: int = 64  # the worked solutions are ~46 bytes: leave room
    temperature: float = 1.0
    lr: float = 5e-4
    beta: float = 0.0  # KL coefficient (0: no reference model needed)
    eps_low: float = 0.2
    eps_high: float | None = None  # None → eps_low (symmetric clipping)
    loss_type: str = "grpo"
    scale_std: bool = True  # divide advantages by the group's std (Dr. GRPO: False)
    algorithm: str = "grpo"  # "grpo" or "reinforce" (on-policy, μ = 1: group baseline, no ratio/clip/KL)
    inner_steps: int = 2  # μ: optimiser steps per batch of samples
    w_format: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 10
    eval_samples: int = 4  # samples per held-out problem for pass@1
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.algorithm not in ("grpo", "reinforce"):
            raise ValueError(f"algorithm must be 'grpo' or 'reinforce', got {self.algorithm!r}")
        for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "inner_steps", "eval_every",
                     "eval_samples"):
            check_int("GRPOConfig", name, getattr(self, name), 1)
        if self.algorithm == "reinforce" and self.inner_steps != 1:
            raise ValueError(f"algorithm='reinforce' is on-policy: inner_steps must be 1, got {self.inner_steps} "
                             "(later updates on the same samples need GRPO's ratio and clipping)")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2: a group of one has no baseline")

    # fields that do not change a training step's numbers (the LR is constant): free to change on resume
    COSMETIC = ("steps", "progress", "eval_every", "eval_samples")

    def loop_config(self, checkpoint_every: int = 0) -> LoopConfig:
        """The loop core's settings: AdamW(0.9, 0.99) without weight decay, constant LR, clipping."""
        return LoopConfig(steps=self.steps, lr=self.lr, schedule="constant", weight_decay=0.0, beta1=0.9,
                          beta2=0.99, grad_clip=self.grad_clip, checkpoint_every=checkpoint_every,
                          progress=self.progress, desc="GRPO")


@dataclass
class RLTask:
    """What GRPO needs to know about a task besides its problems (the default: chapter 08's).

    prompt(problem) -> token ids; stop: the token sequence that ends a response; score(problems, responses,
    G) -> (rewards (N,), step metrics); evaluate(model, problems, samples, seed, max_new_tokens) -> a record;
    config: the reward settings, saved with checkpoints (a resume must not change them). With a task,
    ``GRPOConfig.w_format`` is not used: the task's ``score`` carries its own weights."""
    prompt: Callable[[object], list[int]]
    stop: Sequence[int]
    score: Callable[[list, list[list[int]], int], tuple[torch.Tensor, dict]]
    evaluate: Callable[..., dict]
    config: dict = field(default_factory=dict)


def completion_batch(problems: list[Problem], responses: list[list[int]], group_size: int,
                     prompt: Callable[[Problem], list[int]] = prompt_ids):
    """Prompt + response sequences, right-padded: ids (B, L), valid (B, L) bool, and the mask (B, L−1) of
    the positions whose next token is a response token."""
    seqs = [prompt(problems[i // group_size]) + r for i, r in enumerate(responses)]
    B, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.zeros(B, L, dtype=torch.long)
    valid = torch.zeros(B, L, dtype=torch.bool)
    mask = torch.zeros(B, L - 1)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        valid[i, :len(s)] = True
        p = len(s) - len(responses[i])
        mask[i, p - 1:len(s) - 1] = 1.0  # position t predicts token t+1
    return ids, valid, mask


def token_logps(logits: torch.Tensor, ids: torch.Tensor, with_entropy: bool = False):
    """log π(token t+1 | ≤ t) (B, L−1) from logits (B, L, V), and the entropy there (or None)."""
    logprobs = F.log_softmax(logits[:, :-1].float(), -1)  # (B, L−1, V)
    logp = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, L−1)
    entropy = -(logprobs.exp() * logprobs).sum(-1).detach() if with_entropy else None
    return logp, entropy


def completion_logps(model, problems: list[Problem], responses: list[list[int]], group_size: int,
                     with_entropy: bool = False):
    """Per-token log-probs (B, L−1) of each response under ``model``, the mask of response tokens, and (when
    asked: it costs a pass over the vocabulary) the policy's entropy at those positions, else None.
    Sequences are prompt + response, right-padded."""
    ids, valid, mask = completion_batch(problems, responses, group_size)
    logp, entropy = token_logps(model(ids, attention_mask=valid).logits, ids, with_entropy)
    return logp, mask, entropy


class GRPOTrainer(LoopWrapper):
    def __init__(self, model, cfg: GRPOConfig, train_problems: list[Problem], eval_problems: list[Problem],
                 run_dir: str | Path | None = None, task: RLTask | None = None):
        if not train_problems or not eval_problems:
            raise ValueError("GRPOTrainer needs training and held-out problems")
        overlap = {p.question for p in train_problems} & {p.question for p in eval_problems}
        if overlap:
            raise ValueError(f"{len(overlap)} held-out problem(s) also appear in training, e.g. {sorted(overlap)[0]!r}")
        self.cfg, self.task = cfg, task
        self.train_problems, self.eval_problems = train_problems, eval_problems
        # π_ref is the model as given, before any resume: the base policy
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.beta != 0.0 else None
        run_config = {"grpo_config": dataclasses.asdict(cfg)}
        if task is not None:
            run_config["task_config"] = dict(task.config)
        self.loop = TrainingLoop(model, cfg.loop_config(), run_dir, run_config, cosmetic=GRPOConfig.COSMETIC)
        self.model, self.optimizer = self.loop.model, self.loop.optimizer
        self.run_dir, self.log = self.loop.run_dir, self.loop.log

    # ------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        was = self.model.training
        if self.task is not None:
            out = self.task.evaluate(self.model, self.eval_problems, self.cfg.eval_samples, seed=10_000 + self.step,
                                     max_new_tokens=self.cfg.max_new_tokens)
            self.model.train(was)
            return {"step": self.step, **out}
        out = pass_at_k(self.model, self.eval_problems, self.cfg.eval_samples, seed=10_000 + self.step,
                        max_new_tokens=self.cfg.max_new_tokens)
        self.model.train(was)
        return {"step": self.step, "heldout_greedy": out["greedy"], "heldout_pass@1": out["pass@1"],
                f"heldout_pass@{self.cfg.eval_samples}": out[f"pass@{self.cfg.eval_samples}"]}

    def step_function(self, step: int) -> Step:
        """GRPO step ``step``: sample and score groups now; the μ inner updates run when the loop asks."""
        cfg, G = self.cfg, self.cfg.group_size
        rng = random.Random(cfg.seed * 1_000_003 + step)
        problems = [rng.choice(self.train_problems) for _ in range(cfg.prompts_per_step)]
        # 1–2. sample groups with the current (= old) policy
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        self.model.eval()
        with torch.no_grad():
            if self.task is None:
                responses = sample(self.model, problems, G, cfg.max_new_tokens, cfg.temperature, gen)
            else:
                prompts = [self.task.prompt(p) for p in problems for _ in range(G)]
                responses = [o.tokens for o in generate(self.model, prompts, cfg.max_new_tokens, cfg.temperature,
                                                        stop=[list(self.task.stop)], generator=gen)]
        rollout_s = time.perf_counter() - t0
        # 3. rewards and group advantages
        if self.task is None:
            acc, fmt = score(problems, responses, G)
            rewards = acc + cfg.w_format * fmt
            reward_metrics = {"accuracy": acc.mean().item(), "format": fmt.mean().item()}
        else:
            rewards, reward_metrics = self.task.score(problems, responses, G)
        stats = group_advantages(rewards, G, scale_std=cfg.scale_std)
        # 4. old and reference log-probs, fixed for the inner steps (eval mode: no balance losses, no load counted)
        ids, valid, mask = completion_batch(problems, responses, G, self.task.prompt if self.task else prompt_ids)
        with torch.no_grad():
            old_logp, entropy = token_logps(self.model(ids, attention_mask=valid).logits, ids, with_entropy=True)
            ref_logp = token_logps(self.ref(ids, attention_mask=valid).logits, ids)[0] if self.ref is not None else None

        # 5. μ optimiser steps on these fixed samples, one micro-batch each
        def updates():
            self.model.train()
            for _ in range(cfg.inner_steps):
                yield [self._policy_loss(ids, valid, mask, old_logp, ref_logp, stats.advantages)]

        n_tokens = sum(len(r) for r in responses)
        return Step(updates(), metrics={
            "reward": rewards.mean().item(), **reward_metrics,
            "response_len": n_tokens / len(responses),
            "entropy": float((entropy * mask).sum() / mask.sum().clamp(min=1)),
            "zero_variance_share": stats.zero_variance_groups / stats.n_groups,
            "rollout_tokens_per_s": n_tokens / rollout_s})

    def _policy_loss(self, ids, valid, mask, old_logp, ref_logp, advantages) -> MicroBatch:
        """One inner step's loss: GRPO (or REINFORCE) on the fixed samples + the model's auxiliary losses."""
        cfg = self.cfg
        out = self.model(ids, attention_mask=valid)
        logp, _ = token_logps(out.logits, ids)
        if cfg.algorithm == "reinforce":
            loss, m = reinforce_loss(logp, advantages, mask), {"kl": 0.0, "clip_fraction": 0.0}
        else:
            loss, m = grpo_loss(logp, old_logp, advantages, mask, ref_logp=ref_logp, beta=cfg.beta,
                                eps_low=cfg.eps_low, eps_high=cfg.eps_high, loss_type=cfg.loss_type,
                                max_completion_length=cfg.max_new_tokens)
        metrics = {"policy_loss": loss.item(), **m, **out.metrics}
        if out.aux_loss is not None:  # MoE balance losses (V2's α terms, V3's sequence-wise α)
            loss = loss + out.aux_loss
        return MicroBatch(loss, metrics)

    def train_step(self) -> dict:
        """One GRPO step through the loop core; returns its train record."""
        metrics, _ = self.loop.run_step(self.step_function)
        return {"kind": "train", "step": self.step, **metrics}

    # ------------------------------------------------------------------------------------
    def save(self) -> Path:
        return self.loop.save()

    def maybe_resume(self) -> bool:
        return self.loop.resume()

    def fit(self, checkpoint_every: int = 0) -> list[dict]:
        """Train to ``cfg.steps`` (resuming from run_dir's checkpoint when there is one); returns every
        train and eval record of this call."""
        self.loop.cfg = dataclasses.replace(self.loop.cfg, checkpoint_every=checkpoint_every)
        if self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.loop.resume()
            (self.run_dir / "grpo_config.json").write_text(json.dumps(dataclasses.asdict(self.cfg), indent=1))
        out = self.loop.fit(self.step_function, evaluate=self.evaluate, eval_every=self.cfg.eval_every,
                            eval_first=True, eval_kind="eval", show=("accuracy", "response_len"))
        return out.records
