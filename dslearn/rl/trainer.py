"""The GRPO training loop: sample groups, score them, and take clipped policy-gradient steps.

One step (DeepSeekMath Algorithm 1, with π_old = the policy that sampled):

    1. draw ``prompts_per_step`` training problems (a pure function of seed and step)
    2. sample G responses each from the current policy with the KV-cached sampler
    3. rewards r = accuracy + w_format · format;  A = group_advantages(r)
    4. log-probs of the sampled tokens under π_old (the sampling policy, frozen) and π_ref (the base model)
    5. ``inner_steps`` (μ) optimiser steps on grpo_loss (or reinforce_loss) with those fixed samples

Logged per step: reward, accuracy, format rate, response length, KL to the reference, policy entropy,
clip fraction, share of zero-variance groups, rollout tokens/s; every ``eval_every`` steps the greedy
accuracy and pass@1 on held-out problems. Checkpoints and exact resume reuse the pretraining trainer's
machinery (train/checkpoint.py): the samples of step s depend only on (seed, s).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..train.checkpoint import LATEST, load_checkpoint, save_checkpoint
from ..train.metrics import MetricsLog
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
    algorithm: str = "grpo"  # "grpo" or "reinforce" (group baseline, no ratio/clip/KL)
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
        for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "inner_steps", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"GRPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2: a group of one has no baseline")


def completion_logps(model, problems: list[Problem], responses: list[list[int]], group_size: int,
                     with_entropy: bool = False):
    """Per-token log-probs (B, L−1) of each response under ``model``, the mask of response tokens, and (when
    asked: it costs a pass over the vocabulary) the policy's entropy at those positions, else None.
    Sequences are prompt + response, right-padded."""
    seqs = [prompt_ids(problems[i // group_size]) + r for i, r in enumerate(responses)]
    B, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.zeros(B, L, dtype=torch.long)
    valid = torch.zeros(B, L, dtype=torch.bool)
    mask = torch.zeros(B, L - 1)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        valid[i, :len(s)] = True
        p = len(s) - len(responses[i])
        mask[i, p - 1:len(s) - 1] = 1.0  # position t predicts token t+1
    logits = model(ids, attention_mask=valid).logits[:, :-1].float()  # (B, L−1, V)
    logprobs = F.log_softmax(logits, -1)
    logp = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, L−1)
    entropy = -(logprobs.exp() * logprobs).sum(-1).detach() if with_entropy else None
    return logp, mask, entropy


class GRPOTrainer:
    def __init__(self, model, cfg: GRPOConfig, train_problems: list[Problem], eval_problems: list[Problem],
                 run_dir: str | Path | None = None):
        if not train_problems or not eval_problems:
            raise ValueError("GRPOTrainer needs training and held-out problems")
        overlap = {p.question for p in train_problems} & {p.question for p in eval_problems}
        if overlap:
            raise ValueError(f"{len(overlap)} held-out problem(s) also appear in training, e.g. {sorted(overlap)[0]!r}")
        self.cfg, self.model = cfg, model
        self.train_problems, self.eval_problems = train_problems, eval_problems
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.beta != 0.0 else None
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.step = 0
        self.run_dir = Path(run_dir) if run_dir else None
        self.log = MetricsLog(self.run_dir / "metrics.jsonl") if self.run_dir else None

    # ------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        was = self.model.training
        out = pass_at_k(self.model, self.eval_problems, self.cfg.eval_samples, seed=10_000 + self.step,
                        max_new_tokens=self.cfg.max_new_tokens)
        self.model.train(was)
        return {"step": self.step, "heldout_greedy": out["greedy"], "heldout_pass@1": out["pass@1"],
                f"heldout_pass@{self.cfg.eval_samples}": out[f"pass@{self.cfg.eval_samples}"]}

    def train_step(self) -> dict:
        cfg, G = self.cfg, self.cfg.group_size
        rng = random.Random(cfg.seed * 1_000_003 + self.step)
        problems = [rng.choice(self.train_problems) for _ in range(cfg.prompts_per_step)]
        # 1–2. sample groups with the current (= old) policy
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        self.model.eval()
        with torch.no_grad():
            responses = sample(self.model, problems, G, cfg.max_new_tokens, cfg.temperature, gen)
        rollout_s = time.perf_counter() - t0
        # 3. rewards and group advantages
        acc, fmt = score(problems, responses, G)
        rewards = acc + cfg.w_format * fmt
        stats = group_advantages(rewards, G, scale_std=cfg.scale_std)
        # 4. old and reference log-probs, fixed for the inner steps
        with torch.no_grad():
            old_logp, mask, entropy = completion_logps(self.model, problems, responses, G, with_entropy=True)
            ref_logp = completion_logps(self.ref, problems, responses, G)[0] if self.ref is not None else None
        # 5. μ optimiser steps
        self.model.train()
        for _ in range(cfg.inner_steps):
            logp, _, _ = completion_logps(self.model, problems, responses, G)
            if cfg.algorithm == "reinforce":
                loss, m = reinforce_loss(logp, stats.advantages, mask), {"kl": 0.0, "clip_fraction": 0.0}
            else:
                loss, m = grpo_loss(logp, old_logp, stats.advantages, mask, ref_logp=ref_logp, beta=cfg.beta,
                                    eps_low=cfg.eps_low, eps_high=cfg.eps_high, loss_type=cfg.loss_type,
                                    max_completion_length=cfg.max_new_tokens)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
        n_tokens = sum(len(r) for r in responses)
        self.step += 1
        return {"kind": "train", "step": self.step, "reward": rewards.mean().item(), "accuracy": acc.mean().item(),
                "format": fmt.mean().item(), "response_len": n_tokens / len(responses), "loss": loss.item(),
                "kl": m["kl"], "clip_fraction": m["clip_fraction"],
                "entropy": float((entropy * mask).sum() / mask.sum().clamp(min=1)),
                "zero_variance_share": stats.zero_variance_groups / stats.n_groups,
                "rollout_tokens_per_s": n_tokens / rollout_s}

    # ------------------------------------------------------------------------------------
    def save(self) -> None:
        save_checkpoint(self.run_dir / "checkpoints", self.model, self.optimizer, self.step,
                        {"grpo_config": dataclasses.asdict(self.cfg)})

    def maybe_resume(self) -> bool:
        ckpt = self.run_dir / "checkpoints" if self.run_dir else None
        if ckpt is None or not (ckpt / LATEST).is_file():
            return False
        meta = load_checkpoint(ckpt, self.model, self.optimizer)
        free = {"steps", "progress", "eval_every", "eval_samples"}  # no effect on a step's numbers (constant LR)
        saved, now = meta.get("grpo_config", {}), dataclasses.asdict(self.cfg)
        changed = sorted(k for k in now if k not in free and saved.get(k) != now[k])
        if changed:
            raise ValueError(f"the GRPO config differs from the checkpoint's in {changed}; use a new run directory")
        self.step = meta["step"]
        self.log.truncate_after(self.step)
        return True

    def fit(self, checkpoint_every: int = 0) -> list[dict]:
        """Train to ``cfg.steps``; returns every train and eval record of this call."""
        cfg = self.cfg
        if self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.maybe_resume()
            (self.run_dir / "grpo_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        records = []

        def record(r: dict) -> None:
            records.append(r)
            if self.log:
                self.log.append(r)

        if self.step == 0:
            record({"kind": "eval", **self.evaluate()})
        bar = tqdm(total=cfg.steps, initial=self.step, desc="GRPO", unit="step", disable=not cfg.progress)
        try:
            while self.step < cfg.steps:
                rec = self.train_step()
                record(rec)
                bar.update(1)
                bar.set_postfix(acc=f"{rec['accuracy']:.2f}", len=f"{rec['response_len']:.0f}")
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    record({"kind": "eval", **self.evaluate()})
                due = checkpoint_every and self.step % checkpoint_every == 0
                if self.run_dir and (due or self.step == cfg.steps):
                    self.save()
        finally:
            bar.close()
        return records
