import json

import pytest
import torch

from dslearn.config import ModelConfig
from dslearn.model import CausalLM
from dslearn.rl import rollout
from dslearn.rl.base_model import base_corpus, carry_problems, needs_carry, worked_solution
from dslearn.rl.rewards import accuracy_reward
from dslearn.rl.trainer import GRPOConfig, GRPOTrainer, completion_logps
from dslearn.train import CheckpointError

CFG = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=96)


def test_base_corpus_mixes_right_and_slipped_solutions():
    train, held = carry_problems("train"), carry_problems("held_out")
    assert all(needs_carry(p) for p in train[:50]) and not {p.question for p in train} & {p.question for p in held}
    p = train[0]
    assert accuracy_reward(p, worked_solution(p, slip=False)) == 1.0
    assert accuracy_reward(p, worked_solution(p, slip=True)) == 0.0
    text = base_corpus(400, slip_rate=0.5, seed=0).decode()
    assert 0.3 < text.count("+1=") / 400 < 0.7
    assert not any(q.question in text for q in held)
    with pytest.raises(ValueError, match="slip_rate"):
        base_corpus(10, slip_rate=1.5)


def test_completion_logps_match_one_sequence_at_a_time():
    model = CausalLM(CFG, seed=0).eval()
    problems = carry_problems("train")[:2]
    responses = [[60, 116, 104], [60, 116, 104, 105, 110, 107], [65], [66, 67]]
    logp, mask, _ = completion_logps(model, problems, responses, group_size=2)
    for i, r in enumerate(responses):
        ids = torch.tensor([rollout.prompt_ids(problems[i // 2]) + r])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        want = lp[torch.arange(ids.shape[1] - 1), ids[0, 1:]][-len(r):]
        got = logp[i][mask[i].bool()]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_grpo_step_moves_probability_towards_rewarded_samples(monkeypatch):
    torch.manual_seed(0)
    model = CausalLM(CFG, seed=0)
    train, held = carry_problems("train")[:4], carry_problems("held_out")[:2]
    good, bad = [60, 116], [33, 33, 33]  # rewarded and unrewarded responses, two of each per group
    monkeypatch.setattr("dslearn.rl.trainer.sample", lambda m, probs, G, *a, **k: [good, bad, good, bad] * len(probs))
    monkeypatch.setattr("dslearn.rl.trainer.score",
                        lambda probs, resp, G: (torch.tensor([float(r == good) for r in resp]), torch.zeros(len(resp))))
    trainer = GRPOTrainer(model, GRPOConfig(prompts_per_step=2, group_size=4, lr=1e-2, inner_steps=2, progress=False),
                          train, held)

    def mean_logp(resp):
        probs = train[:1]
        with torch.no_grad():
            lp, m, _ = completion_logps(model, probs, [resp], 1)
        return (lp * m).sum().item()

    before = mean_logp(good), mean_logp(bad)
    rec = trainer.train_step()
    after = mean_logp(good), mean_logp(bad)
    assert after[0] > before[0] and after[1] < before[1]
    assert rec["zero_variance_share"] == 0.0 and rec["accuracy"] == 0.5


def test_trainer_refuses_leaks_and_bad_configs():
    model = CausalLM(CFG)
    train = carry_problems("train")[:3]
    with pytest.raises(ValueError, match="also appear in training"):
        GRPOTrainer(model, GRPOConfig(), train, train[:1])
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="ppo")


def test_grpo_run_checkpoints_and_resumes_exactly(tmp_path):
    train, held = carry_problems("train")[:20], carry_problems("held_out")[:3]
    cfg = GRPOConfig(steps=4, prompts_per_step=2, group_size=2, max_new_tokens=8, eval_every=100, eval_samples=1,
                     progress=False)
    full = GRPOTrainer(CausalLM(CFG, seed=0), cfg, train, held, run_dir=tmp_path / "full")
    full_rec = [r for r in full.fit(checkpoint_every=2) if r["kind"] == "train"]
    part = GRPOTrainer(CausalLM(CFG, seed=0), GRPOConfig(**{**cfg.__dict__, "steps": 2}), train, held,
                       run_dir=tmp_path / "part")  # steps may change on resume: the LR is constant
    part.fit(checkpoint_every=2)
    resumed = GRPOTrainer(CausalLM(CFG, seed=0), cfg, train, held, run_dir=tmp_path / "part")
    with pytest.raises(CheckpointError, match=r"grpo_config differs .* in lr \(checkpoint 0.0005, now 1.0\)"):
        GRPOTrainer(CausalLM(CFG, seed=0), GRPOConfig(**{**cfg.__dict__, "lr": 1.0}), train, held,
                    run_dir=tmp_path / "full").fit()
    rest = [r for r in resumed.fit(checkpoint_every=2) if r["kind"] == "train"]
    assert [r["loss"] for r in rest] == [r["loss"] for r in full_rec[2:]]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_rl_exercises():
    from dslearn.exercises import check
    from dslearn.rl import group_advantages, per_token_kl

    assert check("group_advantages", lambda r, g: group_advantages(r, g).advantages).passed
    assert check("group_advantages", lambda r, g: r - r.mean()).status == "FAIL"
    assert check("k3_kl", per_token_kl).passed
    assert check("k3_kl", lambda lp, ref: torch.exp(lp - ref) - (lp - ref) - 1).status == "FAIL"


def test_grpo_from_the_shipped_base_model_raises_held_out_accuracy():
    """A tiny real run: six GRPO steps from experiments/rl/base lift greedy accuracy on held-out problems."""
    from pathlib import Path

    from safetensors.torch import load_model

    base = Path(__file__).resolve().parents[1] / "experiments" / "rl" / "base"
    model = CausalLM(ModelConfig.from_dict(json.loads((base / "config.json").read_text())))
    load_model(model, str(base / "model.safetensors"))
    cfg = GRPOConfig(steps=6, prompts_per_step=12, group_size=8, lr=1.5e-4, eval_every=6, eval_samples=1,
                     progress=False)
    records = GRPOTrainer(model, cfg, carry_problems("train"), carry_problems("held_out")[:40]).fit()
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[-1]["heldout_greedy"] >= evals[0]["heldout_greedy"] + 0.2, evals
