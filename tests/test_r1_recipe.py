"""Chapter 09's evaluation (pass@1 over k samples, maj@k, pass@k), R1's reward in GRPO, and the recipe's stages."""

import itertools
import shutil

import pytest
import torch

from dslearn.config import ModelConfig
from dslearn.model import CausalLM
from dslearn.rl import evaluate as E
from dslearn.rl import recipe as R
from dslearn.rl import template as T
from dslearn.rl import world as W
from dslearn.rl.trainer import GRPOTrainer
from dslearn.train import CheckpointError

TINY = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   max_position_embeddings=192)


def right(p, think=None):
    return W.response(p, think or W.annotate(p))


def wrong(p, answer="7"):
    return T.encode_response(f"{W.WORDS[p.language]['so']} {answer}", answer)


# --- evaluation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, c, k", [(4, 1, 1), (4, 1, 4), (5, 2, 2), (6, 0, 3), (6, 6, 2), (7, 3, 4)])
def test_pass_at_k_unbiased_matches_enumeration(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    assert E.pass_at_k_unbiased(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="k <= n"):
        E.pass_at_k_unbiased(3, 1, 4)


def test_evaluate_on_scripted_samples(monkeypatch):
    p1, p2 = W.Problem(12, 89, "en"), W.Problem(123, 989, "da")
    mixed = W.annotate(p1, "en", switch_at=1)
    scripted = {
        p1: [right(p1), right(p1, mixed), wrong(p1), [*b"101", T.EOS]],  # c = 2; malformed last
        p2: [wrong(p2, "5"), wrong(p2, "5"), right(p2, W.annotate(p2, slips={1}, checks={1})), right(p2)],
    }

    def fake(model, problems, n, temperature=1.0, seed=0, max_new_tokens=160):
        return [scripted[p][:n] for p in problems]

    monkeypatch.setattr(E, "sample_responses", fake)
    out = E.evaluate(CausalLM(TINY, seed=0), [p1, p2], k=2, n=4)
    assert out["pass@1"] == 0.5
    assert out["pass@2"] == pytest.approx(5 / 6)  # 1 − C(2,2)/C(4,2) for each problem
    assert out["maj@2"] == 0.5  # p1: both votes right; p2: both votes "5"
    assert out["greedy"] == 0.5  # the first sample stands in for greedy
    assert out["format"] == 7 / 8 and out["mixed"] == 1 / 8
    assert out["self_check_rate"] == 1 / 8 and out["checks_per_response"] == 1 / 8
    assert out["by_difficulty"][2]["maj@2"] == 1.0 and out["by_difficulty"][3]["maj@2"] == 0.0
    lens = [len(r) for p in (p1, p2) for r in scripted[p]]
    assert out["response_len"] == pytest.approx(sum(lens) / 8)


def test_majority_vote_ignores_malformed_and_breaks_ties_by_first_seen():
    assert E._majority([None, "3", "4", "4", None, None]) == "4"
    assert E._majority(["4", "3", "3", "4"]) == "4"
    assert E._majority([None, None]) is None


def test_evaluate_runs_a_real_model_and_checks_k():
    model = CausalLM(TINY, seed=0)
    ps = W.problems(3, digits=2, split="held_out", seed=0)
    out = E.evaluate(model, ps, k=2, max_new_tokens=8)
    assert out["problems"] == 3 and 0 <= out["pass@1"] <= out["pass@2"] <= 1 and out["response_len"] <= 8
    with pytest.raises(ValueError, match="n >= k"):
        E.evaluate(model, ps, k=3, n=2)


# --- R1's reward in GRPO ------------------------------------------------------------------------------
def test_score_responses_is_accuracy_format_and_weighted_consistency():
    p = W.Problem(9985, 47, "da")
    resp = [right(p), right(p, W.annotate(p, switch_at=2)), wrong(p), [*b"x"]]
    rewards, m = R.score_responses([p], resp, 4, lam=0.5, w_format=0.1)
    assert rewards.tolist() == pytest.approx([1 + 0.1 + 0.5, 1 + 0.1 + 0.5 * 2 / 5, 0.1 + 0.5, 0.0])
    assert m["accuracy"] == 0.5 and m["format"] == 0.75 and m["mixed"] == 0.25 and m["accuracy_d4"] == 0.5


def _rl(tmp_path, name, steps, lam=0.5, model=None):
    cfg = R.rl_config(steps=steps, prompts_per_step=2, group_size=2, max_new_tokens=12, eval_every=100,
                      eval_samples=1)
    train, held = R.default_problems("train", 2), W.problems(2, 2, "en", "held_out")
    return R.reasoning_rl(model or CausalLM(TINY, seed=0), cfg, lam, train, held, run_dir=tmp_path / name,
                          checkpoint_every=2)


def test_reasoning_rl_logs_r1_metrics_and_resumes_exactly(tmp_path):
    full, records = _rl(tmp_path, "full", 3)
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 3 and {"consistency", "self_check_rate", "response_len", "accuracy_d2"} <= set(train[0])
    assert "heldout_pass@1" in [r for r in records if r["kind"] == "eval"][-1]
    _rl(tmp_path, "part", 2)
    resumed, rest = _rl(tmp_path, "part", 3)
    assert [r["loss"] for r in rest if r["kind"] == "train"] == [r["loss"] for r in train[2:]]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match=r"task_config differs .* lam \(checkpoint 0.5, now 0.0\)"):
        _rl(tmp_path, "full", 3, lam=0.0)


def test_grpo_trainer_without_a_task_keeps_chapter_08_run_config():
    from dslearn.rl.base_model import carry_problems

    t = GRPOTrainer(CausalLM(TINY, seed=0), R.rl_config(), carry_problems("train")[:4], carry_problems("held_out")[:2])
    assert set(t.loop.run_config) == {"grpo_config"}


# --- stages -------------------------------------------------------------------------------------------
def _interrupt_after(run, step):
    """Make run's checkpoint at ``step`` the newest, as if the process had died right after writing it."""
    ckpts = run / "checkpoints"
    for d in ckpts.glob("step_*"):
        if int(d.name.split("_")[1]) > step:
            shutil.rmtree(d)
    (ckpts / "LATEST").write_text(f"step_{step:06d}")


def test_cold_start_sft_learns_the_template_and_resumes_exactly(tmp_path):
    pairs = R.cold_start_data(40, seed=0)
    cfg = R.sft_config(steps=4, batch_size=4, checkpoint_every=2, lr=3e-3)
    model, records = R.cold_start_sft(CausalLM(TINY, seed=0), pairs, cfg, run_dir=tmp_path / "a")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["loss"] < records[0]["loss"]
    _interrupt_after(tmp_path / "a", 2)
    again, rest = R.cold_start_sft(CausalLM(TINY, seed=0), pairs, cfg, run_dir=tmp_path / "a")
    assert [r["step"] for r in rest] == [3, 4] and [r["loss"] for r in rest] == [r["loss"] for r in records[2:]]
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_pretrain_base_on_the_world_corpus():
    from dslearn.train import TrainConfig

    cfg = TrainConfig(steps=3, batch_size=2, seq_len=64, lr=3e-3, warmup_steps=0, eval_every=0, eval_windows=2,
                      progress=False)
    _, records = R.pretrain_base(CausalLM(TINY, seed=0), n_docs=200, cfg=cfg)
    assert [r["kind"] for r in records] == ["train"] * 3 + ["val"]


def test_rejection_sample_keeps_only_verified_consistent_distinct_samples(monkeypatch):
    ps = [W.Problem(12, 89, "en"), W.Problem(45, 67, "da")]
    scripted = {ps[0]: [right(ps[0]), right(ps[0]), right(ps[0], W.annotate(ps[0], switch_at=1)), wrong(ps[0])],
                ps[1]: [wrong(ps[1])] * 4}
    monkeypatch.setattr(R, "sample_responses", lambda model, problems, n, *a, **k: [scripted[p] for p in problems])
    pairs, stats = R.rejection_sample(CausalLM(TINY, seed=0), ps, 4)
    assert pairs == [(ps[0].prompt_ids, right(ps[0]))]  # the duplicate and the mixed one are dropped
    assert stats == {"sampled": 8, "correct": 3, "well_formed": 8, "consistent": 7, "kept": 1, "problems_kept": 1}


def test_rejection_sampling_sft_trains_on_reasoning_and_plain_pairs():
    pairs = R.cold_start_data(8, seed=1)
    model, records = R.rejection_sampling_sft(CausalLM(TINY, seed=0), pairs, n_plain=4,
                                              cfg=R.sft_config(steps=2, batch_size=4))
    assert len(records) == 2
    with pytest.raises(ValueError, match="pairs is empty"):
        R.rejection_sampling_sft(model, [], n_plain=4)
