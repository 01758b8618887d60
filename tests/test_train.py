import json
import math

import pytest
import torch
from helpers import FAST

from dslearn.model import CausalLM
from dslearn.train import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    load_checkpoint,
    load_model_from_checkpoint,
    lr_at,
    read_metrics,
)
from dslearn.train import checkpoint as ckpt_module


def make_trainer(cfg, streams, run_dir=None, **overrides):
    train, val = streams
    return Trainer(CausalLM(cfg, seed=0), TrainConfig(**(FAST | overrides)), train, val, run_dir=run_dir)


# --- schedule -----------------------------------------------------------------------------
def test_multistep_schedule_follows_deepseek_llm():
    lrs = [lr_at(s, 100, 1.0, warmup_steps=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up
    assert lrs[10] == lrs[79] == 1.0
    assert lrs[80] == lrs[89] == pytest.approx(0.316)
    assert lrs[90] == lrs[99] == pytest.approx(0.1)


def test_cosine_and_constant():
    assert lr_at(0, 100, 1.0, 0, "cosine") == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 0, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(50, 100, 1.0, 0, "cosine", min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_at(99, 100, 2.0, 0, "constant") == 2.0
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 10, 1.0, kind="linear")


# --- training -----------------------------------------------------------------------------
def test_loss_falls_and_metrics_are_logged(tiny_config, text_streams, tmp_path):
    trainer = make_trainer(tiny_config, text_streams, tmp_path / "run", steps=40, eval_every=20)
    result = trainer.fit()
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert [r["step"] for r in result.val] == [20, 40]
    assert result.val[-1]["val_bpb"] < result.val[0]["val_bpb"]
    rows = read_metrics(tmp_path / "run", "train")
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens"} <= set(rows[0])
    assert read_metrics(tmp_path / "run" / "metrics.jsonl", "val")[-1]["val_bpb"] == result.val[-1]["val_bpb"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train_config"]["steps"] == 40
    assert result.tokens_per_s > 0


def test_every_run_logs_mfu_unless_asked_not_to(tiny_config, text_streams, tmp_path):
    """MFU is on by default: every logged throughput has an ``mfu`` beside it, against the matmul peak measured
    once per process (cached: the second trainer reuses it), and the result holds the run's MFU."""
    from dslearn.train.mfu import matmul_peak, mfu, model_flops_per_token

    trainer = make_trainer(tiny_config, text_streams, tmp_path / "run", steps=3, eval_every=3)
    result = trainer.fit()
    assert trainer.loop.peak_flops == matmul_peak("fp32", "cpu") and matmul_peak.cache_info().currsize >= 1
    assert trainer.loop.flops_per_token == model_flops_per_token(tiny_config, FAST["seq_len"])
    rows = read_metrics(tmp_path / "run", "train")
    assert all(0 < r["mfu"] == pytest.approx(mfu(trainer.loop.flops_per_token, r["tokens_per_s"],
                                                   trainer.loop.peak_flops)) for r in rows)
    assert 0 < result.mfu < 1
    off = Trainer(CausalLM(tiny_config, seed=0), TrainConfig(**(FAST | {"steps": 2})), *text_streams, log_mfu=False)
    result = off.fit()
    assert off.loop.peak_flops is None and math.isnan(result.mfu) and result.tokens_per_s > 0


class Interrupt(Exception):
    pass


def test_resume_continues_exactly(tiny_config, text_streams, tmp_path):
    """An interrupted run resumed from its checkpoint computes exactly the losses and weights of
    an uninterrupted one (CPU, fp32)."""
    full = make_trainer(tiny_config, text_streams, tmp_path / "full", steps=10, checkpoint_every=4)
    full_losses = full.fit().losses

    broken = make_trainer(tiny_config, text_streams, tmp_path / "broken", steps=10, checkpoint_every=4)
    real_step = broken.step_function

    def crash_at_step_6(step):
        if step == 6:
            raise Interrupt("power cut")
        return real_step(step)

    broken.step_function = crash_at_step_6
    with pytest.raises(Interrupt):
        broken.fit()
    # a fresh process: new model, new trainer, same run directory
    resumed = make_trainer(tiny_config, text_streams, tmp_path / "broken", steps=10, checkpoint_every=4)
    assert resumed.maybe_resume() and resumed.step == 4
    resumed_losses = resumed.fit().losses
    assert resumed_losses == full_losses[4:]  # bit-for-bit equal floats
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    steps = [r["step"] for r in read_metrics(tmp_path / "broken", "train")]
    assert steps == list(range(1, 11)), "the resumed log must not repeat or skip steps"


def test_resume_refuses_a_changed_recipe(tiny_config, text_streams, tmp_path):
    make_trainer(tiny_config, text_streams, tmp_path / "r", steps=3).fit()
    with pytest.raises(CheckpointError, match=r"lr \(checkpoint 0.003, now 0.001\)"):
        make_trainer(tiny_config, text_streams, tmp_path / "r", steps=3, lr=1e-3).fit()
    with pytest.raises(CheckpointError, match="already holds a run"):
        make_trainer(tiny_config, text_streams, tmp_path / "r", steps=3).fit(resume=False)
    # cosmetic settings may change
    make_trainer(tiny_config, text_streams, tmp_path / "r", steps=3, log_every=2).fit()


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tiny_config, text_streams, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_config, text_streams, tmp_path / "run", steps=2)
    trainer.fit()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert (ckpt_dir / "LATEST").read_text() == "step_000002"
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.step = 3
    with torch.no_grad():
        trainer.model.lm_head.weight.add_(1.0)

    def torn_write(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", torn_write)
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    monkeypatch.undo()
    assert (ckpt_dir / "LATEST").read_text() == "step_000002"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["LATEST", "step_000002"], "no debris left behind"
    fresh = CausalLM(tiny_config, seed=1)
    assert load_checkpoint(tmp_path / "run", fresh)["step"] == 2
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_only_the_newest_checkpoints_are_kept(tiny_config, text_streams, tmp_path):
    make_trainer(tiny_config, text_streams, tmp_path / "run", steps=6, checkpoint_every=1, keep_checkpoints=2).fit()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert names == ["step_000005", "step_000006"]


def test_mismatched_or_missing_checkpoints(tiny_config, text_streams, tmp_path):
    make_trainer(tiny_config, text_streams, tmp_path / "run", steps=1).fit()
    other = CausalLM(tiny_config.replace(num_hidden_layers=3, intermediate_size=64))
    with pytest.raises(CheckpointError, match=r"intermediate_size: checkpoint 96 vs model 64.*num_hidden_layers"):
        load_checkpoint(tmp_path / "run", other)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "elsewhere", other)
    model = load_model_from_checkpoint(tmp_path / "run")
    assert model.config == tiny_config and not model.training


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, text_streams, tmp_path):
    trainer = make_trainer(tiny_config, text_streams, tmp_path / "run", steps=6, checkpoint_every=2)
    real_step = trainer.step_function

    def poison_after_step_3(step):
        if step == 3:
            with torch.no_grad():
                trainer.model.model.layers[0].mlp.up_proj.weight.fill_(float("nan"))
        return real_step(step)

    trainer.step_function = poison_after_step_3
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3.*step_000002, is kept"):
        trainer.fit()
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text() == "step_000002"
    events = read_metrics(tmp_path / "run", "event")
    assert events and events[0]["step"] == 3


def test_divergence_is_caught_without_a_checkpoint(tiny_config, text_streams):
    trainer = make_trainer(tiny_config, text_streams, steps=50, lr=1e6, warmup_steps=0, grad_clip=None)
    with pytest.raises(NonFiniteLossError, match="No checkpoint had been written yet"):
        trainer.fit()


def test_a_loss_spike_above_max_loss_stops_the_run(tiny_config, text_streams, tmp_path):
    from dslearn.train import DivergenceError

    trainer = make_trainer(tiny_config, text_streams, tmp_path / "run", steps=30, lr=30.0, warmup_steps=0,
                           schedule="constant", grad_clip=None, max_loss=8.0, checkpoint_every=1)
    with pytest.raises(DivergenceError, match=r"exceeded max_loss=8 at step (\d+)") as e:
        trainer.fit()
    assert not isinstance(e.value, NonFiniteLossError)
    step = int(e.value.args[0].split("at step ")[1].split()[0])
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text() == f"step_{step:06d}"
    with pytest.raises(ValueError, match="max_loss"):
        TrainConfig(max_loss=0.0)


def test_gradient_accumulation_matches_one_big_batch(tiny_config, text_streams):
    a = make_trainer(tiny_config, text_streams, steps=3, batch_size=8).fit().losses
    b = make_trainer(tiny_config, text_streams, steps=3, batch_size=8, grad_accum_steps=4).fit().losses
    assert a == pytest.approx(b, rel=1e-4)


def test_bf16_autocast_trains_close_to_fp32(tiny_config, text_streams):
    fp32 = make_trainer(tiny_config, text_streams, steps=20).fit()
    bf16 = make_trainer(tiny_config, text_streams, steps=20, bf16=True).fit()
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], rel=0.02)
    assert bf16.losses[-1] < 0.6 * bf16.losses[0]


def test_after_optimizer_step_hooks_are_called(tiny_config, text_streams):
    """Any module defining after_optimizer_step() is found and called once after every update."""
    model = CausalLM(tiny_config, seed=0)
    calls = []
    model.model.layers[0].mlp.after_optimizer_step = lambda: calls.append(trainer.step)
    trainer = Trainer(model, TrainConfig(**(FAST | dict(steps=3))), *text_streams)
    trainer.fit()
    assert calls == [0, 1, 2]


@pytest.mark.parametrize("changes, message", [
    (dict(steps=0), "steps"), (dict(batch_size=6, grad_accum_steps=4), "divisible"),
    (dict(lr=float("nan")), "lr"), (dict(lr=0.0), "lr"), (dict(schedule="step"), "schedule"),
    (dict(grad_clip=0.0), "grad_clip"), (dict(warmup_steps=-1), "warmup_steps"), (dict(seq_len=0), "seq_len"),
])
def test_bad_train_config(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_trainer_checks_lengths_up_front(tiny_config, text_streams):
    from dslearn.data import CorpusError, TokenStream

    with pytest.raises(ValueError, match="exceeds the model's context"):
        make_trainer(tiny_config, text_streams, seq_len=65)
    with pytest.raises(CorpusError, match="need at least"):
        Trainer(CausalLM(tiny_config), TrainConfig(**FAST), TokenStream(b"x" * 20, "train"))


def test_resuming_a_finished_run_reports_where_it_ended(tiny_config, text_streams, tmp_path):
    first = make_trainer(tiny_config, text_streams, tmp_path / "r", steps=3).fit()
    again = make_trainer(tiny_config, text_streams, tmp_path / "r", steps=3).fit()
    assert again.losses == [] and again.steps_done == 3
    assert again.val[-1]["val_loss"] == first.val[-1]["val_loss"]
