"""The DeepSeek-R1 recipe (§2.3) in miniature: one function per stage, all on the one training core.

API (each stage takes a model, trains it **in place** and returns ``(model, records)``; pass
``copy.deepcopy(model)`` to keep the input; with ``run_dir`` set a stage writes its metrics log and
checkpoints there and resumes exactly from them)::

    base_config(context=192) -> ModelConfig                 the chapter's tiny model
    pretrain_base(model, n_docs, cfg, seed, run_dir)        next-token pretraining on world.base_corpus
    cold_start_data(n, seed) -> [(prompt ids, response ids)] the annotator's readable, correct solutions
    cold_start_sft(model, pairs, cfg, run_dir)              SFT, loss masked on the prompt (SFTStream)
    r1_task(lam, w_format, ...) -> RLTask                    the chat template + R1's rule rewards for GRPO
    reasoning_rl(model, cfg, lam, train, eval, run_dir)     GRPO, reward = accuracy + w_format·format + λ·consistency
    rejection_sample(model, problems, n, ...) -> (pairs, stats)   keep verified, well-formed, non-mixed samples
    rejection_sampling_sft(base, pairs, n_plain, cfg, run_dir)    SFT *from the base* on them + plain text
    sft_config(**overrides) -> TrainConfig                  the SFT defaults

The pipeline R1 reports, and where each piece lives here::

    base ──cold-start SFT──► ──reasoning RL (+consistency)──► RL ckpt ──rejection sampling──► SFT data
      └───────────────────────────── SFT from the base on the RL checkpoint's verified samples + plain text ─┘
                                     (then all-scenario RL, DPO and distillation: rl/preference.py)

Every stage trains with ``dslearn.train.Trainer`` (pretraining, SFT) or ``rl.trainer.GRPOTrainer``,
both thin step functions on ``dslearn.train.TrainingLoop``; records are the loop's train/eval records.
"""

from __future__ import annotations

import random

import torch

from ..config import ModelConfig
from ..data import SFTStream, TokenStream
from ..train import TrainConfig, Trainer
from .evaluate import evaluate, sample_responses
from .template import STOP
from .trainer import GRPOConfig, GRPOTrainer, RLTask
from .world import LANGUAGES, Problem, base_corpus, cold_start_pairs, mixed_problems, plain_pairs, reward_parts

LEVELS = (2, 3, 4)  # the difficulties the recipe trains and evaluates on


def base_config(context: int = 192) -> ModelConfig:
    """A 4-layer, 128-wide byte-level model (~0.8M parameters): the chapter's base."""
    return ModelConfig(vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                       num_attention_heads=4, max_position_embeddings=context)


def sft_config(**overrides) -> TrainConfig:
    """SFT defaults: AdamW at 5e-4 with a short warm-up and a cosine decay, no validation pass."""
    return TrainConfig(**{"steps": 300, "batch_size": 16, "lr": 5e-4, "warmup_steps": 20, "schedule": "cosine",
                          "weight_decay": 0.0, "eval_every": 0, "progress": False, **overrides})


def _records(result, kind: str = "train") -> list[dict]:
    first = result.steps_done - len(result.losses)
    return ([{"kind": kind, "step": first + i + 1, "loss": x} for i, x in enumerate(result.losses)]
            + [{"kind": "val", **v} for v in result.val])


def pretrain_base(model, n_docs: int = 60_000, cfg: TrainConfig | None = None, corpus_kwargs: dict | None = None,
                  seed: int = 0, run_dir=None):
    """Next-token pretraining on ``world.base_corpus(n_docs, **corpus_kwargs)`` (validation: a corpus drawn
    with another seed). Returns (model, records)."""
    cfg = cfg or TrainConfig(steps=1000, batch_size=32, seq_len=model.config.max_position_embeddings, lr=3e-3,
                             warmup_steps=50, schedule="cosine", eval_every=500, eval_windows=32, progress=False)
    kw = dict(corpus_kwargs or {})
    train = TokenStream(base_corpus(n_docs, seed=seed, **kw), name="base corpus")
    val = TokenStream(base_corpus(max(200, n_docs // 50), seed=seed + 1_000, **kw), name="base validation")
    result = Trainer(model, cfg, train, val, run_dir=run_dir).fit()
    return model, _records(result)


def cold_start_data(n: int = 600, seed: int = 0, levels=LEVELS) -> list[tuple[list[int], list[int]]]:
    """R1's cold-start data: n readable, correct worked solutions (reasoning, then a summary) in the prompt's
    language, from the annotator (``world.cold_start_pairs``)."""
    return cold_start_pairs(n, levels=levels, seed=seed)


def _sft(model, pairs, cfg: TrainConfig, run_dir, name: str):
    stream = SFTStream(pairs, name=name)
    result = Trainer(model, cfg, stream, None, run_dir=run_dir).fit()
    return model, _records(result)


def cold_start_sft(model, pairs=None, cfg: TrainConfig | None = None, run_dir=None):
    """SFT on the cold-start pairs (default ``cold_start_data()``), the loss masked on the prompt."""
    return _sft(model, pairs if pairs is not None else cold_start_data(), cfg or sft_config(), run_dir, "cold start")


# --- reasoning RL -------------------------------------------------------------------------------------------
def score_responses(problems: list[Problem], responses: list[list[int]], group_size: int, lam: float = 0.0,
                    w_format: float = 0.1) -> tuple[torch.Tensor, dict]:
    """R1's rule reward per response, accuracy + w_format · format + λ · consistency, and the step's means:
    accuracy, format, consistency, mixed share, self-check rate, checks per response, accuracy per difficulty."""
    parts = [reward_parts(problems[i // group_size], r) for i, r in enumerate(responses)]
    rewards = torch.tensor([x.accuracy + w_format * x.format + lam * x.consistency for x in parts])
    n = len(parts)
    metrics = {"accuracy": sum(x.accuracy for x in parts) / n, "format": sum(x.format for x in parts) / n,
               "consistency": sum(x.consistency for x in parts) / n,
               "mixed": sum(x.format == 1.0 and x.consistency < 1.0 for x in parts) / n,
               "self_check_rate": sum(x.checks > 0 for x in parts) / n,
               "checks_per_response": sum(x.checks for x in parts) / n}
    for d in sorted({p.difficulty for p in problems}):
        acc = [x.accuracy for i, x in enumerate(parts) if problems[i // group_size].difficulty == d]
        metrics[f"accuracy_d{d}"] = sum(acc) / len(acc)
    return rewards, metrics


def r1_task(lam: float = 0.0, w_format: float = 0.1, eval_temperature: float = 1.0) -> RLTask:
    """The GRPO task of chapter 09: template prompts, EOS stop, R1's reward with consistency weight λ,
    and ``evaluate.evaluate`` on the held-out problems (keys prefixed ``heldout_``)."""
    def score(problems, responses, group_size):
        return score_responses(problems, responses, group_size, lam, w_format)

    def heldout(model, problems, samples, seed, max_new_tokens):
        ev = evaluate(model, problems, samples, temperature=eval_temperature, seed=seed, max_new_tokens=max_new_tokens)
        return {f"heldout_{k}": v for k, v in ev.items() if k not in ("k", "n", "problems", "temperature")}

    return RLTask(prompt=lambda p: p.prompt_ids, stop=STOP, score=score, evaluate=heldout,
                  config={"reward": "accuracy + w_format*format + lam*consistency", "lam": lam,
                          "w_format": w_format, "eval_temperature": eval_temperature})


def rl_config(**overrides) -> GRPOConfig:
    """GRPO defaults for chapter 09 (room for long, checked solutions: 160 new tokens)."""
    return GRPOConfig(**{"steps": 40, "prompts_per_step": 8, "group_size": 8, "max_new_tokens": 160, "lr": 1.5e-4,
                         "eval_every": 10, "eval_samples": 4, "progress": False, **overrides})


def default_problems(split: str, n_per_level: int, seed: int = 0) -> list[Problem]:
    """n_per_level problems for every (difficulty in LEVELS, language)."""
    return mixed_problems(n_per_level, LEVELS, LANGUAGES, split, seed)


def reasoning_rl(model, cfg: GRPOConfig | None = None, lam: float = 0.0, train_problems=None, eval_problems=None,
                 w_format: float = 0.1, run_dir=None, checkpoint_every: int = 0):
    """GRPO with reward = accuracy + w_format · format + λ · language consistency (R1 §2.3.2).
    Default problems: 300 training and 10 held-out per (difficulty, language)."""
    train_problems = train_problems if train_problems is not None else default_problems("train", 300)
    eval_problems = eval_problems if eval_problems is not None else default_problems("held_out", 10)
    trainer = GRPOTrainer(model, cfg or rl_config(), train_problems, eval_problems, run_dir=run_dir,
                          task=r1_task(lam, w_format))
    return model, trainer.fit(checkpoint_every=checkpoint_every)


# --- rejection sampling -------------------------------------------------------------------------------------
def rejection_sample(model, problems: list[Problem], n: int, temperature: float = 1.0, seed: int = 0,
                     keep_per_problem: int = 2, max_new_tokens: int = 160):
    """Sample n responses per problem and keep up to ``keep_per_problem`` distinct ones that are verified
    correct, well-formed and not mixed-language (consistency 1). Returns (pairs, stats): the kept
    (prompt ids, response ids) and {"sampled", "kept", "correct", "well_formed", "consistent", "problems_kept"}."""
    if keep_per_problem < 1:
        raise ValueError(f"keep_per_problem must be >= 1, got {keep_per_problem}")
    was = model.training
    model.eval()
    samples = sample_responses(model, problems, n, temperature, seed, max_new_tokens)
    model.train(was)
    pairs, stats = [], {"sampled": 0, "correct": 0, "well_formed": 0, "consistent": 0, "kept": 0, "problems_kept": 0}
    for p, resp in zip(problems, samples):
        kept = []
        for r in resp:
            x = reward_parts(p, r)
            stats["sampled"] += 1
            stats["well_formed"] += int(x.format)
            stats["correct"] += int(x.accuracy)
            stats["consistent"] += int(x.format == 1.0 and x.consistency == 1.0)
            if x.accuracy == 1.0 and x.consistency == 1.0 and r not in kept and len(kept) < keep_per_problem:
                kept.append(r)
        pairs += [(p.prompt_ids, r) for r in kept]
        stats["kept"] += len(kept)
        stats["problems_kept"] += bool(kept)
    return pairs, stats


def rejection_sampling_sft(base_model, pairs, n_plain: int = 0, cfg: TrainConfig | None = None, seed: int = 0,
                           run_dir=None, allow_empty: bool = False):
    """SFT of ``base_model`` (R1 retrains from the base, not from the RL checkpoint) on the rejection-sampled
    reasoning pairs mixed with ``n_plain`` non-reasoning pairs (``world.plain_pairs``: continue a snippet
    of the corpus, no think block). Empty ``pairs`` is an error unless ``allow_empty`` (then only the plain
    pairs are trained on: the capstone's seconds-long test plan, whose RL checkpoint solves nothing)."""
    if not pairs and not (allow_empty and n_plain):
        raise ValueError("pairs is empty: rejection sampling kept nothing to train on")
    data = list(pairs) + (plain_pairs(n_plain, seed=seed) if n_plain else [])
    random.Random(seed).shuffle(data)
    return _sft(base_model, data, cfg or sft_config(), run_dir, "rejection sampling")


__all__ = ["LEVELS", "base_config", "cold_start_data", "cold_start_sft", "default_problems", "pretrain_base",
           "r1_task", "reasoning_rl", "rejection_sample", "rejection_sampling_sft", "rl_config", "score_responses",
           "sft_config"]
