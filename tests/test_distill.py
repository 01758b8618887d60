from types import SimpleNamespace

import pytest
import torch

from dslearn.config import ModelConfig
from dslearn.model import CausalLM
from dslearn.rl import world
from dslearn.rl.distill import distill, grpo_step_flops, sft_step_flops, teacher_flops, verified_samples
from dslearn.rl.preference import carry_columns
from dslearn.train import TrainConfig

CFG = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=128)


def test_verified_samples_keep_right_well_formed_single_language_responses(monkeypatch):
    probs = world.problems(3, 2, "da", seed=1)
    p0, p1, p2 = probs
    cands = [  # k = 2 per problem
        world.response(p0, world.annotate(p0)),                           # right, da: kept
        world.response(p0, world.annotate(p0)),                           # the same again: not kept twice
        world.response(p1, world.annotate(p1, slips=set(carry_columns(p1)))),  # wrong: dropped
        world.response(p1, world.annotate(p1, switch_at=0)),              # right but written in en: dropped
        world.response(p2, world.annotate(p2))[:-1],                      # no EOS: malformed, dropped
        world.response(p2, world.annotate(p2, checks={0, 1, 2})),         # right: kept
    ]
    assert world.reward_parts(p1, cands[2]).accuracy == 0.0 and world.reward_parts(p1, cands[3]).accuracy == 1.0
    monkeypatch.setattr("dslearn.rl.distill.generate",
                        lambda m, prompts, *a, **k: [SimpleNamespace(tokens=c) for c in cands])
    pairs, stats = verified_samples(None, probs, k=2, per_problem=2)
    assert [r for _, r in pairs] == [cands[0], cands[5]] and pairs[1][0] == p2.prompt_ids
    assert stats["sampled"] == 6 and stats["verified"] == 3 and stats["kept"] == 2 and stats["problems_covered"] == 2
    assert stats["teacher_tokens"] == sum(len(p.prompt_ids) * 2 for p in probs) + sum(len(c) for c in cands)
    assert teacher_flops(SimpleNamespace(num_parameters=lambda: 10), stats) == 20 * stats["teacher_tokens"]


def test_flop_accounting():
    assert sft_step_flops(100, TrainConfig(batch_size=4), seq_len=32) == 6 * 100 * 4 * 32
    assert grpo_step_flops(100, 30, 70, inner_steps=2, beta=0.0) == 2 * 100 * 100 * 2 + 6 * 100 * 100 * 2
    assert grpo_step_flops(100, 30, 70, inner_steps=1, beta=0.04) == 2 * 100 * 100 * 3 + 6 * 100 * 100


def test_distill_learns_the_teacher_s_samples_and_resumes_exactly(tmp_path):
    probs = world.problems(8, 2, "en", seed=3)
    pairs = [(p.prompt_ids, world.response(p, world.annotate(p))) for p in probs]
    cfg = TrainConfig(steps=12, batch_size=4, lr=3e-3, warmup_steps=0, schedule="constant", weight_decay=0.0,
                      progress=False, log_every=1)
    calls = []

    def evaluate(model):
        calls.append(model.training)
        return {"probe": 1.0}
    student, records = distill(CausalLM(CFG, seed=0), pairs, cfg, evaluate=evaluate, eval_every=6)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert train[-1]["loss"] < 0.8 * train[0]["loss"]
    assert [e["step"] for e in evals] == [0, 6, 12] and calls == [False] * 3 and evals[0]["probe"] == 1.0
    seq_len = max(len(p) + len(r) for p, r in pairs)
    per_step = sft_step_flops(student.num_parameters(), cfg, seq_len)
    assert train[3]["flops"] == 4 * per_step and evals[1]["flops"] == 6 * per_step

    class Interrupted(Exception):
        pass

    def stop_at_6(model):
        if calls.append(None) or len(calls) > 4:  # the first run's evaluation at step 6: interrupt it
            raise Interrupted
        return {}
    every = TrainConfig(**{**cfg.to_dict(), "checkpoint_every": 1})
    with pytest.raises(Interrupted):
        distill(CausalLM(CFG, seed=0), pairs, every, run_dir=tmp_path / "d", evaluate=stop_at_6, eval_every=6)
    resumed, rest = distill(CausalLM(CFG, seed=0), pairs, every, run_dir=tmp_path / "d")
    assert [r["step"] for r in rest if r["kind"] == "train"] == list(range(6, 13))
    for a, b in zip(student.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="at least one"):
        distill(CausalLM(CFG), [], cfg)
