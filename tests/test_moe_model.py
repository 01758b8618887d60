"""A tiny DeepSeekMoE CausalLM end to end: it trains, the trainer logs its balance metrics and
updates V3's bias, checkpoints carry the bias, and dense models are untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import FAST, V3_GATING, moe_config

from dslearn.model import CausalLM
from dslearn.train import TrainConfig, Trainer, load_model_from_checkpoint, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def moe_cfg(**kw):
    """helpers.moe_config with a dense first layer, as V2/V3 have."""
    return moe_config(**(dict(first_k_dense_replace=1) | kw))


V2 = dict(topk_method="group_limited_greedy", aux_loss_alpha=0.003, device_aux_loss_alpha=0.05,
          comm_aux_loss_alpha=0.02, capacity_factor=1.0, drop_exempt_fraction=0.25)
V3 = V3_GATING | dict(bias_update_speed=0.01, seq_aux_loss_alpha=1e-4)


@pytest.mark.parametrize("gating", [V2, V3], ids=["v2", "v3"])
def test_tiny_moe_trains_and_logs_balance(gating, text_streams, tmp_path):
    model = CausalLM(moe_cfg(**gating), seed=0)
    trainer = Trainer(model, TrainConfig(**(FAST | dict(steps=30, eval_every=15))), *text_streams, run_dir=tmp_path)
    result = trainer.fit()
    assert result.losses[-1] < 0.5 * result.losses[0]
    rows = read_metrics(tmp_path, "train")
    assert len(rows) == 30
    last = rows[-1]
    for key in ("moe/maxvio", "moe/l1/maxvio", "moe/entropy", "moe/load_entropy", "moe/aux_loss", "ce_loss",
                "moe/l1/expert7", "moe/dropped_frac"):
        assert key in last, key
    assert sum(last[f"moe/l1/expert{j}"] for j in range(8)) == pytest.approx(1.0)
    groups = [last[f"moe/l1/group{g}"] for g in range(4)]  # 8 experts in 4 device/node groups of 2
    pairs = [last[f"moe/l1/expert{2 * g}"] + last[f"moe/l1/expert{2 * g + 1}"] for g in range(4)]
    assert groups == pytest.approx(pairs)
    assert last["loss"] == pytest.approx(last["ce_loss"] + last["moe/aux_loss"], rel=1e-5)
    bias = model.model.layers[1].mlp.gate.e_score_correction_bias
    if gating is V3:
        assert bias.abs().max() > 0 and model.model.layers[1].mlp.bias_updates == 30
        assert last["moe/dropped_frac"] == 0  # V3 drops nothing
        reloaded = load_model_from_checkpoint(tmp_path / "checkpoints")  # the bias is saved with the model
        torch.testing.assert_close(reloaded.model.layers[1].mlp.gate.e_score_correction_bias, bias)
    else:
        assert bias.abs().max() == 0
        assert any(r["moe/dropped"] > 0 for r in rows)  # capacity factor 1.0 drops some overflow


def test_validation_loss_is_pure_cross_entropy(text_streams):
    model = CausalLM(moe_cfg(**V2), seed=0)
    x, y = text_streams[0].batch(0, 2, 32, 0)
    model.train()
    out = model(x, y)
    assert out.loss.item() == pytest.approx(out.metrics["ce_loss"] + out.metrics["moe/aux_loss"], rel=1e-6)
    model.eval()
    out = model(x, y)
    ce = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
    assert out.loss.item() == pytest.approx(ce.item(), rel=1e-6) and "moe/aux_loss" not in out.metrics


def test_dense_models_are_unchanged(tiny_config, text_streams):
    model = CausalLM(tiny_config, seed=0)
    x, y = text_streams[0].batch(0, 2, 32, 0)
    out = model(x, y)
    assert out.metrics == {}
    assert torch.equal(out.loss, F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten()))


def test_moe_model_generates_with_a_cache():
    model = CausalLM(moe_cfg(**V3), seed=0).eval()
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        state = model.new_decode_state(2, 16)
        model(ids[:, :6], state=state)
        step = model(ids[:, 6:], state=state).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
