"""Runs shared by the SIGKILL resume tests and the child processes they start.

A child (``run_child``) trains in a fresh interpreter with one thread and, when asked, kills itself
with SIGKILL right after writing the checkpoint of step ``kill_after``: no ``finally``, no flush, the
way a preempted job dies. The test then reruns the same command and compares its log and weights
with an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from dslearn.config import ModelConfig
from dslearn.data import TokenStream
from dslearn.model import CausalLM
from dslearn.train import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
TIMING = {"tokens_per_s", "rollout_tokens_per_s", "mfu"}  # wall-clock figures: the only fields allowed to differ

# MLA attention + DeepSeekMoE with V3 routing: sigmoid, node-limited top-K with the bias, the bias update
# (γ) and the sequence-wise balance loss (α); a byte vocabulary
MLA_MOE = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=96, attention_type="mla", kv_lora_rank=16,
                      qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1, n_group=2, topk_group=1,
                      first_k_dense_replace=1, scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
                      routed_scaling_factor=2.5, bias_update_speed=0.01, seq_aux_loss_alpha=0.01)


def even_byte_reward(problems, responses, group_size):
    """A dense deterministic reward (share of even bytes): groups of an untrained policy still differ."""
    acc = torch.tensor([sum(t % 2 == 0 for t in r) / max(len(r), 1) for r in responses])
    return acc, torch.zeros(len(responses))


def pretrain_trainer(run_dir, config: ModelConfig = MLA_MOE, **overrides) -> Trainer:
    text = ("def add(a, b):\n    return a + b\n\n" * 60).encode()
    cfg = TrainConfig(**(dict(steps=4, batch_size=4, seq_len=16, grad_accum_steps=2, lr=3e-3, warmup_steps=1,
                              eval_every=2, eval_windows=4, log_every=1, checkpoint_every=1, progress=False)
                         | overrides))
    return Trainer(CausalLM(config, seed=0), cfg, TokenStream(text[:1500]), TokenStream(text[1500:]), run_dir=run_dir)


def grpo_trainer(run_dir, config: ModelConfig = MLA_MOE, **overrides):
    from dslearn.rl.base_model import carry_problems
    from dslearn.rl.trainer import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(**(dict(steps=3, prompts_per_step=2, group_size=3, max_new_tokens=6, lr=1e-2, inner_steps=2,
                             eval_every=100, eval_samples=1, progress=False) | overrides))
    return GRPOTrainer(CausalLM(config, seed=0), cfg, carry_problems("train")[:20], carry_problems("held_out")[:2],
                       run_dir=run_dir)


def fit(kind: str, run_dir):
    """The run a child executes (and the in-process reference repeats); returns the trainer."""
    torch.manual_seed(0)
    if kind == "grpo":
        trainer = grpo_trainer(run_dir)
        trainer.fit(checkpoint_every=1)
    else:
        trainer = pretrain_trainer(run_dir)
        trainer.fit()
    return trainer


def child_main(kind: str, run_dir: str, kill_after: int) -> None:
    torch.set_num_threads(1)
    if kind == "grpo":
        import dslearn.rl.trainer as rl
        rl.score = even_byte_reward
    if kill_after:
        from dslearn.train import TrainingLoop
        save = TrainingLoop.save

        def save_then_die(self):
            path = save(self)
            if self.step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        TrainingLoop.save = save_then_die
    fit(kind, run_dir)


def run_child(kind: str, run_dir, kill_after: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    code = "import sys, resume_helpers as h; h.child_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))"
    return subprocess.run([sys.executable, "-c", code, kind, str(run_dir), str(kill_after)], env=env,
                          capture_output=True, text=True, timeout=300)


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]
