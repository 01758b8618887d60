"""The loop core (dslearn.train.loop): metrics reduction over micro-batches, gradient accumulation,
hooks, RNG state, one error for an incompatible run directory, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from resume_helpers import MLA_MOE, fit, pretrain_trainer, run_child, without_timing
from torch import nn

from dslearn.data import SFTStream
from dslearn.model import CausalLM
from dslearn.train import (
    CheckpointError,
    LoopConfig,
    MicroBatch,
    Step,
    TrainConfig,
    Trainer,
    TrainingLoop,
    load_checkpoint,
    load_model_from_checkpoint,
    read_metrics,
    reduce_metrics,
)

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Linear(3, 1, bias=False)
        self.updates = 0

    def after_optimizer_step(self):
        self.updates += 1


def fake_step(n_micro: int, n_updates: int = 1):
    """A step function whose micro-batch metrics differ: micro-batch i reports m = i, moe/dropped = i + 1."""
    def step_fn(step):
        def micro(model):
            for i in range(n_micro):
                loss = model.w(torch.ones(1, 3)).sum() / n_micro
                yield MicroBatch(loss, {"m": float(i), "moe/dropped": float(i + 1)})
        return Step((micro(loop.model) for _ in range(n_updates)), metrics={"step_level": 7.0})
    loop = TrainingLoop(Tiny(), LoopConfig(steps=2, lr=1e-2, progress=False))
    return loop, step_fn


def test_metrics_are_averaged_over_micro_batches_and_counts_summed():
    loop, step_fn = fake_step(n_micro=4)
    rec = loop.fit(step_fn).records[0]
    assert rec["m"] == pytest.approx((0 + 1 + 2 + 3) / 4)  # a mean, not the last micro-batch's 3
    assert rec["moe/dropped"] == 1 + 2 + 3 + 4  # a count: summed
    assert rec["step_level"] == 7.0 and rec["step"] == 1
    assert reduce_metrics([{"a": 1.0}, {"a": 3.0, "b": 5.0}]) == {"a": 2.0, "b": 5.0}


def test_every_update_of_a_step_calls_the_hooks():
    loop, step_fn = fake_step(n_micro=2, n_updates=3)  # GRPO-like: μ = 3 updates per step
    loop.fit(step_fn)
    assert loop.model.updates == 3 * 2 and loop.step == 2


def test_moe_metrics_of_accumulated_micro_batches_are_their_mean(text_streams):
    x, y = text_streams[0].batch(0, 4, 16, 0)
    probe = CausalLM(MLA_MOE, seed=0).train()
    maxvio = [probe(xm, ym).metrics["moe/maxvio"] for xm, ym in zip(x.chunk(2), y.chunk(2))]
    assert maxvio[0] != maxvio[1]
    cfg = TrainConfig(steps=1, batch_size=4, seq_len=16, grad_accum_steps=2, progress=False)
    trainer = Trainer(CausalLM(MLA_MOE, seed=0), cfg, text_streams[0])
    rec = trainer.loop.fit(trainer.step_function).records[0]
    assert rec["moe/maxvio"] == pytest.approx(sum(maxvio) / 2, rel=1e-6)


def grads_of_one_step(model, cfg, data):
    trainer = Trainer(model, cfg, data)
    trainer.model.train()
    total = 0.0
    for update in trainer.step_function(0).updates:
        for loss, _ in update:
            loss.backward()
            total += loss.item()
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("data", ["text", "sft"])
def test_accumulated_loss_and_gradient_equal_the_whole_batch(tiny_config, text_streams, data):
    """Micro-batches are weighted by their share of target tokens: with SFT's masks they hold different
    numbers of response tokens, and the sum of the shares is still the whole batch's mean loss."""
    stream = text_streams[0] if data == "text" else SFTStream(
        [("What is 1+1?", "2"), ("Say hello.", "hello there"), ("x", "a much longer response"), ("Q", "ok")])
    base = dict(steps=1, batch_size=4, seq_len=32, progress=False)
    loss1, g1 = grads_of_one_step(CausalLM(tiny_config, seed=0), TrainConfig(**base), stream)
    loss4, g4 = grads_of_one_step(CausalLM(tiny_config, seed=0), TrainConfig(**base, grad_accum_steps=4), stream)
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    assert g1.keys() == g4.keys()
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_resume_restores_rng_state_and_moe_bias_counters(tmp_path):
    trainer = pretrain_trainer(tmp_path / "run", steps=2)
    trainer.fit()
    mlp = trainer.model.model.layers[1].mlp
    assert mlp.bias_updates == 2
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step_000002" / "meta.json").read_text())
    assert meta["counters"] == {"model.layers.1.mlp": {"bias_updates": 2}}
    saved_rng = torch.get_rng_state()
    torch.rand(5)  # the global generator moves on
    again = pretrain_trainer(tmp_path / "run", steps=2)
    assert again.model.model.layers[1].mlp.bias_updates == 0
    assert again.maybe_resume()
    assert torch.equal(torch.get_rng_state(), saved_rng)
    assert again.model.model.layers[1].mlp.bias_updates == 2
    torch.testing.assert_close(again.model.model.layers[1].mlp.gate.e_score_correction_bias,
                               mlp.gate.e_score_correction_bias, rtol=0, atol=0)


def test_an_incompatible_run_dir_is_one_error_naming_the_fields(tmp_path):
    from resume_helpers import grpo_trainer

    pretrain_trainer(tmp_path / "run", steps=1).fit()
    with pytest.raises(CheckpointError, match=r"train_config differs .* batch_size \(checkpoint 4, now 8\), "
                                              r"lr \(checkpoint 0.003, now 0.001\)"):
        pretrain_trainer(tmp_path / "run", steps=1, lr=1e-3, batch_size=8).fit()
    with pytest.raises(CheckpointError, match=r"holds a different kind of run \(train_config, no grpo_config\)"):
        grpo_trainer(tmp_path / "run").fit()
    with pytest.raises(CheckpointError, match=r"different model config \(hidden_size: checkpoint 32 vs model 64"):
        pretrain_trainer(tmp_path / "run", config=MLA_MOE.replace(hidden_size=64), steps=1).fit()


def test_pretraining_resumes_exactly_after_sigkill(tmp_path):
    """A V3-MoE pretraining run (gradient accumulation, bias updates) killed with SIGKILL after step 2's
    checkpoint and restarted with the same command logs and ends exactly like an uninterrupted run."""
    run = tmp_path / "run"
    killed = run_child("pretrain", run, kill_after=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / "checkpoints" / "LATEST").read_text() == "step_000002"
    assert max(r["step"] for r in read_metrics(run)) == 2
    done = run_child("pretrain", run)
    assert done.returncode == 0, done.stderr
    ref = fit("pretrain", tmp_path / "ref")
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(tmp_path / "ref"))
    resumed = load_model_from_checkpoint(run).state_dict()
    for name, value in ref.model.state_dict().items():
        assert torch.equal(resumed[name], value), name
    assert load_checkpoint(run, CausalLM(MLA_MOE))["counters"] == {"model.layers.1.mlp": {"bias_updates": 4}}
