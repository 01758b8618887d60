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
    with pytest.raises(ValueError, match="inner_steps must be 1"):
        GRPOConfig(algorithm="reinforce", inner_steps=2)


def test_on_policy_reinforce_takes_grpo_s_first_update(monkeypatch):
    """At μ = 1 and β = 0, GRPO's ratio is 1 and its clip inactive: the update equals REINFORCE's with the same
    advantages — so the shipped comparison (GRPO μ = 2 vs REINFORCE μ = 1) isolates the later, clipped updates."""
    good, bad = [60, 116], [33, 33, 33]
    monkeypatch.setattr("dslearn.rl.trainer.sample", lambda m, probs, G, *a, **k: [good, bad, bad, good] * len(probs))
    monkeypatch.setattr("dslearn.rl.trainer.score",
                        lambda probs, resp, G: (torch.tensor([float(r == good) for r in resp]), torch.zeros(len(resp))))
    train, held = carry_problems("train")[:4], carry_problems("held_out")[:2]
    models = {}
    for algorithm in ("grpo", "reinforce"):
        cfg = GRPOConfig(prompts_per_step=2, group_size=4, lr=1e-2, inner_steps=1, algorithm=algorithm, progress=False)
        trainer = GRPOTrainer(CausalLM(CFG, seed=0), cfg, train, held)
        trainer.train_step()
        models[algorithm] = trainer.model
    moved = 0.0
    for (name, p), q in zip(models["grpo"].named_parameters(), models["reinforce"].parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
        moved = max(moved, (p - CausalLM(CFG, seed=0).get_parameter(name)).abs().max().item())
    assert moved > 1e-3  # the step did move the weights


def test_load_base_reads_the_shipped_base(tmp_path):
    from dslearn.rl.base_model import SHIPPED_BASE, base_config, load_base

    assert ModelConfig.from_dict(json.loads((SHIPPED_BASE / "config.json").read_text())) == base_config()
    assert load_base().num_parameters() == CausalLM(base_config()).num_parameters()
    with pytest.raises(FileNotFoundError, match="r1_zero.py"):
        load_base(tmp_path)


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
    from dslearn.rl.base_model import load_base

    model = load_base()
    cfg = GRPOConfig(steps=6, prompts_per_step=12, group_size=8, lr=1.5e-4, eval_every=6, eval_samples=1,
                     progress=False)
    records = GRPOTrainer(model, cfg, carry_problems("train"), carry_problems("held_out")[:40]).fit()
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[-1]["heldout_greedy"] >= evals[0]["heldout_greedy"] + 0.2, evals


# --- GRPO on an MLA + V3-MoE policy: the loop core's hooks, aux loss and resume ----------------------
def test_grpo_moves_the_routing_bias_of_an_mla_moe_policy(monkeypatch):
    from resume_helpers import even_byte_reward, grpo_trainer

    monkeypatch.setattr("dslearn.rl.trainer.score", even_byte_reward)
    trainer = grpo_trainer(None, inner_steps=2)
    mlp = trainer.model.model.layers[1].mlp
    biases, update = [mlp.gate.e_score_correction_bias.clone()], mlp.after_optimizer_step

    def update_and_record():
        update()
        biases.append(mlp.gate.e_score_correction_bias.clone())

    mlp.after_optimizer_step = update_and_record
    rec = trainer.train_step()
    assert len(biases) == 3 and mlp.bias_updates == 2  # after each of the μ = 2 inner optimizer steps
    assert not torch.equal(biases[1], biases[0])  # the bias moves during RL
    assert rec["moe/aux_loss"] > 0 and "moe/l1/maxvio" in rec and rec["zero_variance_share"] < 1
    assert rec["loss"] == pytest.approx(rec["policy_loss"] + rec["moe/aux_loss"], rel=1e-5, abs=1e-7)


def test_the_moe_balance_loss_enters_the_grpo_loss(monkeypatch):
    """The gradient of the gate's weight changes with the sequence-wise α: the aux loss is in the loss."""
    from resume_helpers import MLA_MOE, even_byte_reward, grpo_trainer

    monkeypatch.setattr("dslearn.rl.trainer.score", even_byte_reward)
    grads = {}
    for alpha in (0.0, 0.1):
        trainer = grpo_trainer(None, config=MLA_MOE.replace(seq_aux_loss_alpha=alpha), inner_steps=1)
        step = trainer.step_function(0)
        (loss, metrics), = next(iter(step.updates))
        loss.backward()
        grads[alpha] = trainer.model.model.layers[1].mlp.gate.weight.grad.clone()
        assert ("moe/aux_loss" in metrics) == (alpha > 0)
    assert not torch.allclose(grads[0.0], grads[0.1])


def test_grpo_on_mla_moe_resumes_exactly_after_sigkill(tmp_path, monkeypatch):
    """Killed with SIGKILL right after step 2's checkpoint and rerun with the same command, a GRPO run logs
    exactly the rewards, losses and metrics of an uninterrupted run and ends with identical weights and
    routing biases."""
    import signal

    from resume_helpers import MLA_MOE, even_byte_reward, fit, run_child, without_timing

    from dslearn.train import load_checkpoint, load_model_from_checkpoint, read_metrics

    run = tmp_path / "run"
    killed = run_child("grpo", run, kill_after=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / "checkpoints" / "LATEST").read_text() == "step_000002"
    done = run_child("grpo", run)
    assert done.returncode == 0, done.stderr
    monkeypatch.setattr("dslearn.rl.trainer.score", even_byte_reward)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = fit("grpo", tmp_path / "ref")
    finally:
        torch.set_num_threads(n)
    got, want = without_timing(read_metrics(run)), without_timing(read_metrics(tmp_path / "ref"))
    assert [r["kind"] for r in got] == ["eval", "train", "train", "train", "eval"]
    assert got == want
    resumed = load_model_from_checkpoint(run).state_dict()
    for name, value in ref.model.state_dict().items():
        assert torch.equal(resumed[name], value), name
    assert load_checkpoint(run, CausalLM(MLA_MOE))["counters"] == {"model.layers.1.mlp": {"bias_updates": 6}}
