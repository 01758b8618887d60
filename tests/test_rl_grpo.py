import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from dslearn.rl.grpo import group_advantages, grpo_loss, per_token_kl, reinforce_loss


def test_group_advantages_hand_case():
    stats = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), group_size=4)
    s = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    expected = [0.5 / (s + 1e-4), -0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.5 / (s + 1e-4), 0, 0, 0, 0]
    torch.testing.assert_close(stats.advantages, torch.tensor(expected))
    assert stats.zero_variance_groups == 1 and stats.n_groups == 2
    no_std = group_advantages(torch.tensor([3.0, 1.0]), group_size=2, scale_std=False)
    assert no_std.advantages.tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.ones(5), group_size=2)


def test_k3_kl_is_non_negative_and_zero_at_equality():
    logp = torch.log(torch.tensor([0.1, 0.5, 0.9]))
    assert torch.all(per_token_kl(logp, logp) == 0)
    ref = torch.log(torch.tensor([0.3, 0.2, 0.95]))
    kl = per_token_kl(logp, ref)
    r = torch.exp(ref - logp)
    torch.testing.assert_close(kl, r - torch.log(r) - 1)
    assert torch.all(kl > 0)


def test_clipped_loss_hand_case():
    # one response, two tokens: ratio 1.5 (clipped to 1.2 for A > 0) and 0.5 (unclipped: min picks it)
    old = torch.log(torch.tensor([[0.2, 0.4]]))
    logp = torch.log(torch.tensor([[0.3, 0.2]])).requires_grad_()
    loss, m = grpo_loss(logp, old, torch.tensor([2.0]), torch.ones(1, 2), eps_low=0.2)
    assert loss.item() == pytest.approx(-(1.2 * 2 + 0.5 * 2) / 2)
    assert m["clip_fraction"] == pytest.approx(0.5)
    loss.backward()  # the clipped token gets no gradient, the other −A·ρ/2
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -2.0 * 0.5 / 2]]))


def test_loss_types_aggregate_as_documented():
    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(3, 5, generator=g) * 0.1 - 1, torch.randn(3, 5, generator=g) * 0.1 - 1
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.0, -0.5, 2.0])
    per_tok = -torch.min(torch.exp(logp - old) * adv[:, None],
                         torch.exp(logp - old).clamp(0.8, 1.2) * adv[:, None]) * mask
    expect = {"grpo": (per_tok.sum(1) / mask.sum(1)).mean(), "bnpo": per_tok.sum() / mask.sum(),
              "dapo": per_tok.sum() / mask.sum(), "dr_grpo": per_tok.sum() / (3 * 8)}
    for kind, want in expect.items():
        got, _ = grpo_loss(logp, old, adv, mask, loss_type=kind, max_completion_length=8)
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, old, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logp, old, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, beta=0.1)


def test_reinforce_with_group_baseline():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    loss = reinforce_loss(logp, torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    assert loss.item() == pytest.approx(((1.0 + 2.0) / 2 + (-0.5)) / 2)


# --- outside reference: TRL's GRPOTrainer._compute_loss ---------------------------------------
def _trl_loss(loss_type, logp, old, ref, adv, mask, beta, eps_low, eps_high, max_len, bias_corr):
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer", reason="TRL is the outside reference for GRPO")
    trainer = object.__new__(trl_grpo.GRPOTrainer)  # only the loss code runs: no model, no data, no accelerate
    fake_acc = SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction: x,
                               num_processes=1, sync_gradients=True)
    trainer.__dict__.update(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=max_len,
        accelerator=fake_acc, _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=defaultdict(
            lambda: defaultdict(list)),
        args=SimpleNamespace(use_bias_correction_kl=bias_corr, delta=None, steps_per_generation=1),
    )
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    B, T = logp.shape
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    return trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta, eps_high, bias_corr", [(0.0, 0.2, False), (0.04, 0.28, False), (0.04, 0.2, True)])
def test_matches_trl(loss_type, beta, eps_high, bias_corr):
    """Same log-probs, advantages and masks: dslearn's loss and gradients equal TRL 1.16's GRPO loss, with
    the plain k3 KL of DeepSeekMath (use_bias_correction_kl=False) and with TRL 1.16's default (True)."""
    g = torch.Generator().manual_seed(1)
    B, T = 6, 7
    old = torch.log_softmax(torch.randn(B, T, 11, generator=g), -1)[..., 0]
    logp_a = (old + 0.3 * torch.randn(B, T, generator=g)).requires_grad_()
    logp_b = logp_a.detach().clone().requires_grad_()
    ref = old + 0.1 * torch.randn(B, T, generator=g)
    mask = (torch.arange(T)[None] < torch.tensor([7, 5, 3, 7, 1, 6])[:, None]).float()
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 1.0]), group_size=3).advantages
    ours, _ = grpo_loss(logp_a, old, adv, mask, ref_logp=ref, beta=beta, eps_low=0.2, eps_high=eps_high,
                        loss_type=loss_type, max_completion_length=T, kl_bias_correction=bias_corr)
    theirs = _trl_loss(loss_type, logp_b, old, ref, adv, mask, beta, 0.2, eps_high, T, bias_corr=bias_corr)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(logp_a.grad, logp_b.grad, atol=1e-7, rtol=1e-5)
