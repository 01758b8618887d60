import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dslearn.config import ModelConfig
from dslearn.model import CausalLM
from dslearn.rl.preference import (
    Candidate,
    PreferenceConfig,
    PreferencePair,
    bradley_terry_loss,
    dpo,
    dpo_loss,
    pair_batch_indices,
    prefer,
    preference_pairs,
    reward_accuracy,
    sequence_logps,
    split_pairs,
    train_reward_model,
)


# --- outside reference: TRL's DPOTrainer._compute_loss ------------------------------------------
def _trl_dpo(loss_type, chosen_tok, rejected_tok, mask_c, mask_r, ref_c, ref_r, beta, label_smoothing):
    """TRL 1.16's own loss code on given per-token log-probs (the model is a stub returning them, the reference
    log-probs are 'precomputed'): no tokenizer, no data, no accelerate."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer", reason="TRL is the outside reference for DPO")
    trainer = object.__new__(dpo_trainer.DPOTrainer)
    acc = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer.__dict__.update(
        model=SimpleNamespace(training=True), accelerator=acc, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=label_smoothing, use_weighting=False, _tp_size=1, _total_train_tokens=0,
        _metrics=defaultdict(lambda: defaultdict(list)), args=SimpleNamespace())
    per_tok = torch.cat([chosen_tok, rejected_tok])
    B2, T = per_tok.shape
    pad = torch.zeros(B2 // 2, 1)
    completion_mask = torch.cat([torch.cat([pad, mask_c], 1), torch.cat([pad, mask_r], 1)])  # prompt token, then T

    def model(**kwargs):  # TRL's fused head returns 0 at label -100: the masked per-token log-probs
        return SimpleNamespace(log_probs=per_tok * completion_mask[:, 1:], entropy=torch.zeros(B2, T),
                               mean_logits=torch.zeros(B2, T), is_top1=torch.zeros(B2, T, dtype=torch.bool))
    inputs = {"input_ids": torch.zeros(B2, T + 1, dtype=torch.long), "attention_mask": torch.ones(B2, T + 1),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    return dpo_trainer.DPOTrainer._compute_loss(trainer, model, inputs, False)


def _case(seed=0, B=6, T=7):
    g = torch.Generator().manual_seed(seed)
    chosen = -3 * torch.rand(B, T, generator=g)
    rejected = -3 * torch.rand(B, T, generator=g)
    mask_c = (torch.arange(T)[None] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).float()
    mask_r = (torch.arange(T)[None] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).float()
    ref_c = (chosen * mask_c).sum(1) + torch.randn(B, generator=g)
    ref_r = (rejected * mask_r).sum(1) + torch.randn(B, generator=g)
    return chosen, rejected, mask_c, mask_r, ref_c, ref_r


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("loss_type, label_smoothing", [("sigmoid", 0.0), ("robust", 0.0), ("robust", 0.1),
                                                         ("robust", 0.3), ("ipo", 0.0)])
def test_dpo_loss_matches_trl(beta, loss_type, label_smoothing):
    """Same log-probs: dslearn's DPO loss and its gradient equal TRL 1.16's within 1e-6."""
    chosen, rejected, mask_c, mask_r, ref_c, ref_r = _case(int(beta * 100))
    a_c, a_r = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    b_c, b_r = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    ours, _ = dpo_loss((a_c * mask_c).sum(1), (a_r * mask_r).sum(1), ref_c, ref_r, beta, label_smoothing,
                       loss_type, mask_c.sum(1), mask_r.sum(1))
    theirs = _trl_dpo(loss_type, b_c, b_r, mask_c, mask_r, ref_c, ref_r, beta, label_smoothing)
    assert abs(ours.item() - theirs.item()) < 1e-6
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(a_c.grad, b_c.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(a_r.grad, b_r.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("label_smoothing", [0.05, 0.2, 0.4])
def test_conservative_dpo_matches_trl_pair_by_pair(beta, label_smoothing):
    """cDPO (sigmoid with label smoothing): TRL 1.16 keeps that formula only in its 'aot' branch, which sorts
    over the batch; on one pair nothing is sorted and it is exactly cDPO. Compared pair by pair."""
    chosen, rejected, mask_c, mask_r, ref_c, ref_r = _case(7)
    for i in range(chosen.shape[0]):
        s = slice(i, i + 1)
        ours, _ = dpo_loss((chosen[s] * mask_c[s]).sum(1), (rejected[s] * mask_r[s]).sum(1), ref_c[s], ref_r[s],
                           beta, label_smoothing)
        theirs = _trl_dpo("aot", chosen[s], rejected[s], mask_c[s], mask_r[s], ref_c[s], ref_r[s], beta,
                          label_smoothing)
        assert abs(ours.item() - theirs.item()) < 1e-6


def test_dpo_loss_hand_case_and_errors():
    z = torch.zeros(1)
    loss, m = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), z - 2, z - 2, beta=0.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 2))))
    assert m["rewards/accuracy"] == 1.0 and m["rewards/margin"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(z, z, z, z, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(z, z, z, z, label_smoothing=0.5)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(z, z, z, z, loss_type="ipo")
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(z, torch.zeros(2), z, z)


def test_bradley_terry_loss():
    loss, m = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    want = -(F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(-1.0))).item() / 2
    assert loss.item() == pytest.approx(want)
    assert m["accuracy"] == 0.5


# --- the preference rule --------------------------------------------------------------------
def test_helpfulness_rule():
    p = (1, 2)
    right_short, right_long = Candidate(p, (5,) * 10, True), Candidate(p, (5,) * 20, True)
    wrong_short, wrong_long = Candidate(p, (6,) * 3, False), Candidate(p, (6,) * 30, False)
    assert prefer(right_long, wrong_short) and not prefer(wrong_short, right_long)  # correct first
    assert prefer(right_short, right_long) and not prefer(right_long, right_short)  # then concise
    assert not prefer(Candidate(p, (5,) * 18, True), right_long, min_gap=4)  # 2 tokens shorter: no preference
    assert not prefer(wrong_short, wrong_long) and not prefer(wrong_long, wrong_short)  # wrong vs wrong: none
    pairs = preference_pairs([right_short, right_long, wrong_short, wrong_long, right_short], max_per_prompt=10)
    got = {(len(x.chosen), len(x.rejected)) for x in pairs}
    assert got == {(10, 20), (10, 3), (10, 30), (20, 3), (20, 30)}
    assert len(preference_pairs([right_short, right_long, wrong_short, wrong_long], max_per_prompt=2)) == 2


def test_split_is_by_prompt_and_batches_are_a_function_of_step():
    pairs = [PreferencePair((i,), (1,), (2,)) for i in range(10) for _ in range(3)]
    train, held = split_pairs(pairs, held_out=0.3, seed=1)
    assert len(held) == 9 and not {p.prompt for p in train} & {p.prompt for p in held}
    assert pair_batch_indices(7, 3, 4, seed=2) == pair_batch_indices(7, 3, 4, seed=2)
    epoch0 = [i for s in range(7) for i in pair_batch_indices(7, s, 1, seed=5)]
    assert sorted(epoch0) == list(range(7))  # each pair once per epoch


# --- models: sequence log-probs, the reward model, DPO --------------------------------------------------
def _tiny(seed=0):
    cfg = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=32)
    return CausalLM(cfg, seed=seed)


def _toy_pairs(n=24, seed=0):
    """Prompts of 2-3 tokens; chosen = the responses that start with token 3, rejected with token 4."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = tuple(int(t) for t in torch.randint(5, 32, (2 + i % 2,), generator=g))
        body = tuple(int(t) for t in torch.randint(5, 32, (3 + i % 3,), generator=g))
        out.append(PreferencePair(prompt, (3,) + body, (4,) + body[::-1]))
    return out


def test_sequence_logps_equals_the_sum_of_token_logps():
    model = _tiny().eval()
    prompts, responses = [(7, 8, 9), (10,)], [(3, 4), (5, 6, 7, 8)]
    got = sequence_logps(model, prompts, responses)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids = torch.tensor([list(p) + list(r)])
        lp = F.log_softmax(model(ids).logits[0, :-1].float(), -1)
        want = sum(lp[len(p) - 1 + j, r[j]] for j in range(len(r)))
        assert abs(got[i].item() - want.item()) < 1e-5


def test_reward_model_learns_the_rule_and_resumes_exactly(tmp_path):
    pairs = _toy_pairs(32)
    train, held = split_pairs(pairs, held_out=0.25)
    cfg = PreferenceConfig(steps=30, batch_size=8, lr=3e-3, eval_every=30)
    rm, records = train_reward_model(_tiny(), train, cfg, eval_pairs=held)
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[0]["heldout_accuracy"] <= 0.5 and evals[-1]["heldout_accuracy"] == 1.0
    assert reward_accuracy(rm, held) == evals[-1]["heldout_accuracy"]
    # interrupted at step 10, resumed to 30: identical weights
    cfg10 = PreferenceConfig(**{**cfg.__dict__, "steps": 10})
    train_reward_model(_tiny(), train, cfg10, run_dir=tmp_path / "rm", eval_pairs=held)
    rm2, _ = train_reward_model(_tiny(), train, cfg, run_dir=tmp_path / "rm", eval_pairs=held)
    for (k, a), b in zip(rm.state_dict().items(), rm2.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=k)


def test_dpo_raises_chosen_over_rejected_and_resumes_exactly(tmp_path):
    pairs = _toy_pairs(24)
    train, held = split_pairs(pairs, held_out=0.25)
    cfg = PreferenceConfig(steps=20, batch_size=6, lr=3e-3, beta=0.5, eval_every=20)
    model, records = dpo(_tiny(), train, cfg, eval_pairs=held)
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[0]["heldout_accuracy"] == 0.0  # π = π_ref at step 0: no pair strictly won
    assert evals[-1]["heldout_accuracy"] >= 0.8
    train_recs = [r for r in records if r["kind"] == "train"]
    assert train_recs[-1]["loss"] < train_recs[0]["loss"] < math.log(2) + 1e-4
    run = tmp_path / "dpo"
    dpo(_tiny(), train, PreferenceConfig(**{**cfg.__dict__, "steps": 8}), run_dir=run, eval_pairs=held)
    resumed, _ = dpo(_tiny(), train, cfg, run_dir=run, eval_pairs=held)
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=k)
    meta = json.loads(sorted((run / "checkpoints").glob("step_*"))[-1].joinpath("meta.json").read_text())
    assert meta["dpo_config"]["beta"] == 0.5


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="loss_type"):
        PreferenceConfig(loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        PreferenceConfig(beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        PreferenceConfig(label_smoothing=0.6)


# --- chapter 09's world ---------------------------------------------------------------------------
def test_carry_columns_and_the_annotated_candidates():
    from dslearn.rl import world
    from dslearn.rl.preference import annotated_candidates, carry_columns

    assert carry_columns(world.Problem(95, 17)) == [1]  # 5+7 carries into the tens; 9+1+1 carries out: "put 1"
    assert carry_columns(world.Problem(999, 1)) == [1, 2]
    assert len(annotated_candidates(world.Problem(425, 831))) == 1  # the only carry leaves the last column
    for p in world.problems(20, 3, "da", seed=2):
        if not carry_columns(p):
            continue
        concise, checked, slipped, slipped_more = annotated_candidates(p)
        parts = [world.reward_parts(p, list(c.response)) for c in (concise, checked, slipped, slipped_more)]
        assert [r.accuracy for r in parts] == [1.0, 1.0, 0.0, 0.0] == [float(c.correct) for c in
                                                                        (concise, checked, slipped, slipped_more)]
        assert all(r.format == 1.0 and r.consistency == 1.0 for r in parts)
        assert parts[1].checks == len(carry_columns(p)) and parts[0].checks == 0
        assert len(checked.response) > len(concise.response)
        pairs = preference_pairs([concise, checked, slipped, slipped_more], max_per_prompt=10)
        assert PreferencePair(concise.prompt, concise.response, checked.response) in pairs
        assert all(not any(c.response == x.chosen and not c.correct for c in (slipped, slipped_more)) for x in pairs)


def test_sampled_candidates_are_labelled_by_the_checker():
    from dslearn.rl import world
    from dslearn.rl.preference import sampled_candidates

    cfg = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=96)
    probs = world.problems(2, 2, "en")
    cands = sampled_candidates(CausalLM(cfg, seed=0), probs, k=3, max_new_tokens=20, seed=1)
    assert len(cands) == 6 and {c.prompt for c in cands} == {tuple(p.prompt_ids) for p in probs}
    for i, c in enumerate(cands):
        assert c.correct == (world.reward_parts(probs[i // 3], list(c.response)).accuracy == 1.0)


def test_r1_exercises():
    from dslearn.exercises import check
    from dslearn.rl.distill import grpo_step_flops

    def mine(pc, pr, rc, rr, beta, eps):
        d = beta * ((pc - rc) - (pr - rr))
        return (-(1 - eps) * F.logsigmoid(d) - eps * F.logsigmoid(-d)).mean()
    assert check("dpo_loss", mine).passed
    no_smoothing = lambda pc, pr, rc, rr, b, e: -F.logsigmoid(b * ((pc - rc) - (pr - rr))).mean()  # noqa: E731
    assert check("dpo_loss", no_smoothing).status == "FAIL"
    assert check("bradley_terry", lambda c, r: -F.logsigmoid(c - r).mean()).passed
    assert check("bradley_terry", lambda c, r: -F.logsigmoid(r - c).mean()).status == "FAIL"
    assert check("helpfulness_rule", prefer).passed
    assert check("helpfulness_rule", lambda a, b, g: len(a.response) < len(b.response)).status == "FAIL"
    assert check("grpo_flops", grpo_step_flops).passed
    assert check("grpo_flops", lambda n, p, r, mu, beta: 6 * n * (p + r) * mu).status == "FAIL"


# --- all-scenario RL: rule rewards + the reward model ------------------------------------------------
def test_reward_model_joins_the_rule_reward_and_the_run_config(tmp_path):
    from dslearn.rl import recipe, world
    from dslearn.rl.preference import RewardModel, all_scenario_rl, with_reward_model
    from dslearn.rl.trainer import GRPOConfig
    from dslearn.train import CheckpointError

    cfg = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=192)
    rm = RewardModel(CausalLM(cfg, seed=1))
    torch.nn.init.normal_(rm.value_head.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    task = recipe.r1_task()
    probs = world.problems(2, 2, "en")
    responses = [world.response(p, world.annotate(p)) for p in probs] + [[1, 2, 3], [0xFE]]
    group = [probs[0], probs[1]]
    rule, _ = task.score(group, responses, 2)
    r = rm.score([p.prompt_ids for p in (probs[0], probs[0], probs[1], probs[1])], responses)
    assert r.std() > 0  # the head reads something that differs between responses
    combined = with_reward_model(task, rm, w_rm=0.5, w_rule=2.0)
    got, metrics = combined.score(group, responses, 2)
    torch.testing.assert_close(got, 2.0 * rule + 0.5 * r)
    assert metrics["rm_score"] == pytest.approx(r.mean().item()) and metrics["rule_reward"] == pytest.approx(
        rule.mean().item())
    assert combined.config["w_rm"] == 0.5 and combined.config["lam"] == task.config["lam"]
    with pytest.raises(ValueError, match="w_rm"):
        with_reward_model(task, rm, w_rm=0.0, w_rule=0.0)

    gcfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=12, eval_every=2, eval_samples=1,
                      progress=False)
    train, held = world.problems(6, 2, "en"), world.problems(2, 2, "en", split="held_out")
    _, records = all_scenario_rl(CausalLM(cfg, seed=0), rm, train, held, gcfg, task, w_rm=1.0,
                                 run_dir=tmp_path / "rl")
    steps = [x for x in records if x["kind"] == "train"]
    assert len(steps) == 2 and all("rm_score" in x and "accuracy" in x for x in steps)
    with pytest.raises(CheckpointError, match="w_rm"):  # the reward weights are part of the run
        all_scenario_rl(CausalLM(cfg, seed=0), rm, train, held, gcfg, task, w_rm=2.0, run_dir=tmp_path / "rl")
