"""Preferences: pairs by a documented rule, a Bradley–Terry reward model, and DPO (DeepSeek-LLM §5, R1 §2.3.4).

DeepSeek-LLM aligns its chat model with SFT then DPO; DeepSeek-R1's last stage ("RL for all scenarios")
adds a learned reward model for what rules cannot check. Both start from **preference pairs**
(prompt x, chosen y_w, rejected y_l). Here the "human labellers" are a documented program:

    helpfulness rule (``prefer``)   a response that is correct beats one that is wrong;
                                    of two correct ones, the shorter wins if it is shorter by ≥ ``min_gap``
                                    tokens (concise-and-correct over verbose); two wrong ones: no preference

**Bradley–Terry reward model.** P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)); r is a dslearn ``CausalLM``
backbone with a scalar head read at the last real token (after the final RMSNorm), trained on
−log σ(r_w − r_l) (``RewardModel``, ``train_reward_model``).

**DPO** (Rafailov et al. 2023) skips the reward model: with π_ref the starting policy and
log-ratios h_w = log π_θ(y_w|x) − log π_ref(y_w|x) (summed over the response's tokens), h_l likewise,

    sigmoid   −log σ(β (h_w − h_l))                                  DPO; TRL loss_type="sigmoid"
              −(1−ε) log σ(βΔ) − ε log σ(−βΔ)   with label_smoothing ε   conservative DPO (cDPO)
    robust    [−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε)            rDPO; TRL loss_type="robust"
    ipo       (h_w/|y_w| − h_l/|y_l| − 1/(2β))²                       IPO, per-token averaged as in TRL

``dpo_loss`` equals TRL 1.16's ``DPOTrainer._compute_loss`` for these (tests/test_preference.py runs TRL's
own code on the same log-probs). TRL 1.16's "sigmoid" ignores label_smoothing (cDPO lives there only in the
"aot" branch, which for one pair — nothing to sort — is exactly cDPO; the test compares pair by pair).

Both trainers are step functions on ``dslearn.train.TrainingLoop`` (the one training core): same
clipping, guards, checkpoints and exact resume as pretraining, SFT and GRPO. Pairs of step s are a pure
function of (seed, s): an endless sequence of seeded permutations, as in ``dslearn.data.sft``.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check_int
from ..generate import generate
from ..train.loop import LoopConfig, MicroBatch, Step, TrainingLoop
from .template import STOP
from .trainer import GRPOTrainer
from .world import annotate, response, reward_parts

DPO_LOSS_TYPES = ("sigmoid", "robust", "ipo")


# --- the loss --------------------------------------------------------------------------------
def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0, loss_type: str = "sigmoid", chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The DPO loss (mean over pairs, to minimise) and its diagnostics; inputs (B,) summed response log-probs.

    label_smoothing ε: the probability that a label is flipped (cDPO for "sigmoid", rDPO for "robust").
    chosen_lengths / rejected_lengths: response token counts, needed by "ipo" only."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    shapes = {tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                       ref_rejected_logps)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"the four log-prob tensors must share one shape (B,), got {sorted(shapes)}")
    h_w = policy_chosen_logps.float() - ref_chosen_logps.float()
    h_l = policy_rejected_logps.float() - ref_rejected_logps.float()
    delta = h_w - h_l
    eps = label_smoothing
    if loss_type == "sigmoid":
        per_pair = -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    elif loss_type == "robust":
        per_pair = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    else:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type='ipo' needs chosen_lengths and rejected_lengths (response token counts)")
        ipo_delta = h_w / chosen_lengths.float().clamp(min=1.0) - h_l / rejected_lengths.float().clamp(min=1.0)
        per_pair = (ipo_delta - 1 / (2 * beta)) ** 2
    with torch.no_grad():
        metrics = {"rewards/chosen": float(beta * h_w.mean()), "rewards/rejected": float(beta * h_l.mean()),
                   "rewards/margin": float(beta * delta.mean()), "rewards/accuracy": float((delta > 0).float().mean())}
    return per_pair.mean(), metrics


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """−log σ(r_w − r_l), mean over pairs, and the share of pairs ordered right."""
    margin = r_chosen.float() - r_rejected.float()
    m = margin.detach()
    return -F.logsigmoid(margin).mean(), {"accuracy": float((m > 0).float().mean()), "margin": float(m.mean())}


# --- preference pairs by a documented rule ----------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One annotated response to a prompt: token ids and whether its final answer checks."""
    prompt: tuple[int, ...]
    response: tuple[int, ...]
    correct: bool


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


def prefer(a: Candidate, b: Candidate, min_gap: int = 4) -> bool:
    """The helpfulness rule: is ``a`` preferred to ``b``? Correct beats wrong; of two correct responses the
    one shorter by at least ``min_gap`` tokens wins; two wrong responses are not ranked."""
    if a.correct != b.correct:
        return a.correct
    return a.correct and len(a.response) + min_gap <= len(b.response)


def preference_pairs(candidates: Sequence[Candidate], max_per_prompt: int = 4, min_gap: int = 4,
                     seed: int = 0) -> list[PreferencePair]:
    """Every (chosen, rejected) the rule ranks among the candidates of each prompt (distinct responses only),
    at most ``max_per_prompt`` per prompt drawn by ``seed``; prompts in order of first appearance."""
    check_int("preference_pairs", "max_per_prompt", max_per_prompt, 1)
    by_prompt: dict[tuple[int, ...], dict[tuple[int, ...], Candidate]] = {}
    for c in candidates:
        by_prompt.setdefault(c.prompt, {}).setdefault(c.response, c)
    rng = random.Random(seed)
    out = []
    for prompt, uniq in by_prompt.items():
        cs = list(uniq.values())
        ranked = [PreferencePair(prompt, a.response, b.response) for a in cs for b in cs
                  if a is not b and prefer(a, b, min_gap)]
        rng.shuffle(ranked)
        out.extend(ranked[:max_per_prompt])
    return out


def split_pairs(pairs: Sequence[PreferencePair], held_out: float = 0.2, seed: int = 0):
    """(train, held_out) split **by prompt**: no held-out prompt is seen in training."""
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:max(1, round(held_out * len(prompts)))])
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


# --- batching and sequence log-probs -------------------------------------------------------------
def _padded(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]):
    """prompt + response right-padded: ids (B, L), valid (B, L), response mask (B, L−1) over the positions whose
    next token is a response token, and the index of each sequence's last token."""
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    B, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.zeros(B, L, dtype=torch.long)
    valid = torch.zeros(B, L, dtype=torch.bool)
    mask = torch.zeros(B, L - 1)
    for i, (s, r) in enumerate(zip(seqs, responses)):
        ids[i, :len(s)] = torch.tensor(s)
        valid[i, :len(s)] = True
        mask[i, len(s) - len(r) - 1:len(s) - 1] = 1.0
    last = valid.long().sum(1) - 1
    return ids, valid, mask, last


def sequence_logps(model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> torch.Tensor:
    """log π(response | prompt) summed over the response's tokens, (B,) fp32 — DPO's sequence log-prob."""
    if any(len(r) == 0 for r in responses):
        raise ValueError("every response needs at least one token")
    ids, valid, mask, _ = _padded(prompts, responses)
    logits = model(ids, attention_mask=valid).logits[:, :-1].float()
    logp = F.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * mask).sum(1)


def pair_batch_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Indices of step ``step``'s pairs: positions step·B … step·B+B−1 of seeded per-epoch permutations."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[k]))
    return out


# --- the Bradley–Terry reward model --------------------------------------------------------------------
class RewardModel(nn.Module):
    """r(x, y): a CausalLM backbone, its final RMSNorm, and a scalar head read at the last real token."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def config(self):  # checkpoints record the backbone's config
        return self.lm.config

    def forward(self, ids: torch.Tensor, valid: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        out = self.lm(ids, attention_mask=valid, return_hidden=True)
        h = self.lm.model.norm(out.hidden[torch.arange(ids.shape[0]), last])  # (B, d)
        self._aux = out.aux_loss
        return self.value_head(h.float()).squeeze(-1)

    @torch.no_grad()
    def score(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
              batch_size: int = 64) -> torch.Tensor:
        """r(x, y) for each (prompt, response), (B,), in eval mode."""
        was = self.training
        self.eval()
        out = []
        for i in range(0, len(prompts), batch_size):
            ids, valid, _, last = _padded(prompts[i:i + batch_size], responses[i:i + batch_size])
            out.append(self(ids, valid, last))
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0)


@dataclass
class PreferenceConfig:
    """Settings of the reward-model and DPO stages (AdamW, constant LR after warm-up, clipping)."""
    steps: int = 100
    batch_size: int = 16  # pairs per step
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    beta: float = 0.1  # DPO only
    label_smoothing: float = 0.0  # DPO only
    loss_type: str = "sigmoid"  # DPO only
    eval_every: int = 25
    seed: int = 0
    progress: bool = False

    COSMETIC = ("steps", "progress", "eval_every")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            check_int("PreferenceConfig", name, getattr(self, name), 1)
        check_int("PreferenceConfig", "warmup_steps", self.warmup_steps, 0)
        if not self.lr > 0:
            raise ValueError(f"PreferenceConfig.lr must be > 0, got {self.lr}")
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"PreferenceConfig.loss_type must be one of {DPO_LOSS_TYPES}, got {self.loss_type!r}")
        if not self.beta > 0:
            raise ValueError(f"PreferenceConfig.beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"PreferenceConfig.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    def loop_config(self, desc: str) -> LoopConfig:
        return LoopConfig(steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps, schedule="constant",
                          weight_decay=self.weight_decay, beta1=0.9, beta2=0.95, grad_clip=self.grad_clip,
                          progress=self.progress, desc=desc)


def _fit(loop: TrainingLoop, step_fn, evaluate, cfg: PreferenceConfig, checkpoint_every: int) -> list[dict]:
    loop.cfg = dataclasses.replace(loop.cfg, checkpoint_every=checkpoint_every)
    if loop.run_dir:
        loop.run_dir.mkdir(parents=True, exist_ok=True)
        loop.resume()
    return loop.fit(step_fn, evaluate=evaluate, eval_every=cfg.eval_every, eval_first=True, eval_kind="eval",
                    show=("loss", "accuracy")).records


@torch.no_grad()
def reward_accuracy(rm: RewardModel, pairs: Sequence[PreferencePair]) -> float:
    """Share of pairs with r(chosen) > r(rejected)."""
    if not pairs:
        raise ValueError("reward_accuracy needs at least one pair")
    rc = rm.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    rr = rm.score([p.prompt for p in pairs], [p.rejected for p in pairs])
    return float((rc > rr).float().mean())


def train_reward_model(backbone, pairs: Sequence[PreferencePair], cfg: PreferenceConfig,
                       run_dir: str | Path | None = None, eval_pairs: Sequence[PreferencePair] = (),
                       checkpoint_every: int = 0) -> tuple[RewardModel, list[dict]]:
    """Bradley–Terry on ``pairs`` from a CausalLM backbone (copied: the caller's model is left as it is).
    Returns the reward model and the records (train: loss, accuracy, margin; eval: held-out accuracy)."""
    if not pairs:
        raise ValueError("train_reward_model needs at least one preference pair")
    rm = RewardModel(copy.deepcopy(backbone))
    loop = TrainingLoop(rm, cfg.loop_config("reward model"), run_dir,
                        {"reward_model_config": dataclasses.asdict(cfg)}, cosmetic=PreferenceConfig.COSMETIC)

    def step_fn(step: int) -> Step:
        batch = [pairs[i] for i in pair_batch_indices(len(pairs), step, cfg.batch_size, cfg.seed)]
        prompts = [p.prompt for p in batch] * 2
        ids, valid, _, last = _padded(prompts, [p.chosen for p in batch] + [p.rejected for p in batch])
        ntok = int(valid.sum())

        def micro():
            r = rm(ids, valid, last)
            loss, m = bradley_terry_loss(*r.chunk(2))
            if rm._aux is not None:
                loss = loss + rm._aux
            yield MicroBatch(loss, m)
        return Step([micro()], tokens=ntok)

    def evaluate() -> dict:
        return {"step": loop.step, "heldout_accuracy": reward_accuracy(rm, eval_pairs)} if eval_pairs else \
            {"step": loop.step}

    records = _fit(loop, step_fn, evaluate, cfg, checkpoint_every)
    rm.eval()
    return rm, records


def dpo(model, pairs: Sequence[PreferencePair], cfg: PreferenceConfig, run_dir: str | Path | None = None,
        eval_pairs: Sequence[PreferencePair] = (), evaluate: Callable[[object], dict] | None = None,
        checkpoint_every: int = 0) -> tuple[object, list[dict]]:
    """DPO from ``model`` (trained in place; π_ref = a frozen copy of it as given, before any resume).
    Eval records hold the held-out implicit-reward accuracy (β·h_w > β·h_l) and whatever ``evaluate(model)``
    returns (e.g. task accuracy). Returns (model, records)."""
    if not pairs:
        raise ValueError("dpo needs at least one preference pair")
    ref = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def ref_logps(ps):
        return (sequence_logps(ref, [p.prompt for p in ps], [p.chosen for p in ps]),
                sequence_logps(ref, [p.prompt for p in ps], [p.rejected for p in ps]))

    ref_c, ref_r = ref_logps(pairs)  # precomputed once, as TRL's precompute_ref_log_probs
    loop = TrainingLoop(model, cfg.loop_config("DPO"), run_dir, {"dpo_config": dataclasses.asdict(cfg)},
                        cosmetic=PreferenceConfig.COSMETIC)

    def step_fn(step: int) -> Step:
        idx = pair_batch_indices(len(pairs), step, cfg.batch_size, cfg.seed)
        batch = [pairs[i] for i in idx]

        def micro():
            prompts = [p.prompt for p in batch] * 2
            both = [p.chosen for p in batch] + [p.rejected for p in batch]
            ids, valid, mask, _ = _padded(prompts, both)
            out = model(ids, attention_mask=valid)
            logp = F.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            pc, pr = (logp * mask).sum(1).chunk(2)
            lengths = torch.tensor([len(r) for r in both], dtype=torch.float32)
            loss, m = dpo_loss(pc, pr, ref_c[idx], ref_r[idx], cfg.beta, cfg.label_smoothing, cfg.loss_type,
                               *lengths.chunk(2))
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
            yield MicroBatch(loss, {**m, "accuracy": m["rewards/accuracy"], **out.metrics})
        return Step([micro()])

    held = ref_logps(eval_pairs) if eval_pairs else None

    @torch.no_grad()
    def run_eval() -> dict:
        was = model.training
        model.eval()
        rec: dict = {"step": loop.step}
        if held is not None:
            pc = sequence_logps(model, [p.prompt for p in eval_pairs], [p.chosen for p in eval_pairs])
            pr = sequence_logps(model, [p.prompt for p in eval_pairs], [p.rejected for p in eval_pairs])
            rec["heldout_accuracy"] = float(((pc - held[0]) > (pr - held[1])).float().mean())
        if evaluate is not None:
            rec.update(evaluate(model))
        model.train(was)
        return rec

    records = _fit(loop, step_fn, run_eval, cfg, checkpoint_every)
    model.eval()
    return model, records


# --- chapter 09's world: annotated and sampled candidates ---------------------------------------------
def carry_columns(problem) -> list[int]:
    """Columns of a + b (0 = ones) that receive a carry: where a slip or a self-check can happen."""
    a, b, c, out = problem.a, problem.b, 0, []
    col = 0
    while a or b:
        if c:
            out.append(col)
        c = int(a % 10 + b % 10 + c >= 10)
        a, b, col = a // 10, b // 10, col + 1
    return out  # a carry out of the last column is written ("put 1"), not summed: no column to slip


def annotated_candidates(problem, seed: int = 0) -> list[Candidate]:
    """The "labellers'" four responses to a problem of ``dslearn.rl.world`` (the annotator writes them):

        concise     correct, no self-checks
        checked     correct, every carry column self-checked (longer)
        slipped     one carry column forgets its carry, unchecked: wrong
        slipped+    the same slip, every *other* carry column checked: wrong and long

    The rule ranks concise ≻ checked ≻ {slipped, slipped+} (the second only when the checks add ≥ min_gap
    tokens). The slipped column is drawn by ``seed``. A problem whose only carry leaves the last column has no
    column to slip or check: it gets the concise response alone (and gives no pair)."""
    cols = carry_columns(problem)
    prompt = tuple(problem.prompt_ids)
    texts = {"concise": (annotate(problem), True)}
    if cols:
        slip = random.Random(f"slip-{seed}-{problem.a}-{problem.b}").choice(cols)
        texts.update({"checked": (annotate(problem, checks=set(cols)), True),
                      "slipped": (annotate(problem, slips={slip}), False),
                      "slipped+": (annotate(problem, slips={slip}, checks=set(cols) - {slip}), False)})
    return [Candidate(prompt, tuple(response(problem, t)), ok) for t, ok in texts.values()]


@torch.no_grad()
def sampled_candidates(model, problems, k: int, max_new_tokens: int = 160, temperature: float = 1.0,
                       seed: int = 0) -> list[Candidate]:
    """k sampled responses per problem from ``model``, each labelled by the rule checker (``world.reward_parts``:
    well-formed and the exact sum)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [p.prompt_ids for p in problems for _ in range(k)]
    outs = generate(model, prompts, max_new_tokens, temperature, stop=[STOP], generator=g)
    return [Candidate(tuple(prompts[i]), tuple(o.tokens), reward_parts(problems[i // k], o.tokens).accuracy == 1.0)
            for i, o in enumerate(outs) if o.tokens]


# --- RL for all scenarios: rule rewards + the reward model in GRPO ------------------------------------
def with_reward_model(task, rm: RewardModel, w_rm: float = 1.0, w_rule: float = 1.0):
    """A copy of a GRPO task (``trainer.RLTask``) whose reward is w_rule · (the task's rule reward) + w_rm · r(x, y).
    Step metrics gain ``rm_score`` (the mean RM score of the samples) and ``rule_reward``; the weights join the
    task's config, so a resume with other weights is refused. w_rule = 0 is the reward-hacking probe: the
    policy sees only the learned reward, and the rule metrics (accuracy, …) show what it does to them."""
    if w_rm < 0 or w_rule < 0 or w_rm == w_rule == 0:
        raise ValueError(f"w_rm and w_rule must be >= 0 and not both 0, got w_rm={w_rm}, w_rule={w_rule}")
    rm.eval().requires_grad_(False)

    def score(problems, responses, group_size):
        rule, metrics = task.score(problems, responses, group_size)
        prompts = [task.prompt(problems[i // group_size]) for i in range(len(responses))]
        r = rm.score(prompts, responses)
        return w_rule * rule + w_rm * r, {**metrics, "rm_score": r.mean().item(), "rule_reward": rule.mean().item()}

    return dataclasses.replace(task, score=score, config={**dict(task.config), "w_rm": w_rm, "w_rule": w_rule})


def all_scenario_rl(model, rm: RewardModel, train_problems, eval_problems, cfg, task, w_rm: float = 1.0,
                    w_rule: float = 1.0, run_dir: str | Path | None = None,
                    checkpoint_every: int = 0) -> tuple[object, list[dict]]:
    """R1 §2.3.4 in miniature: GRPO (``cfg``: a ``trainer.GRPOConfig``) from ``model`` on rule rewards (``task``)
    plus a learned reward model. Returns (model, records) — train records carry ``rm_score`` beside the rule
    metrics, eval records the task's held-out evaluation."""
    trainer = GRPOTrainer(model, cfg, train_problems, eval_problems, run_dir=run_dir,
                          task=with_reward_model(task, rm, w_rm, w_rule))
    return trainer.model, trainer.fit(checkpoint_every=checkpoint_every)
