"""Balance: the four loss formulas (against literal loops over t and i), V3's bias update, V2's
token dropping, and the load metrics."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import moe_layer_config

from dslearn.moe import (
    DeepSeekMoE,
    capacity_keep_mask,
    comm_balance_loss,
    device_balance_loss,
    expert_balance_loss,
    load_metrics,
    max_violation,
    route,
    sequence_balance_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def case(T=24, E=8, K=2, seed=0, scoring="softmax"):
    logits = torch.randn(T, E, generator=torch.Generator().manual_seed(seed))
    r = route(logits, top_k=K, scoring_func=scoring)
    return r.scores, r.topk_idx


# --- loss formulas, literally -------------------------------------------------------------------
def test_expert_device_and_comm_losses_follow_the_v2_formulas():
    T, E, K, D, M = 24, 8, 2, 4, 2
    s, idx = case(T, E, K)
    chosen = [set(row) for row in idx.tolist()]
    f = [E / (K * T) * sum(i in chosen[t] for t in range(T)) for i in range(E)]
    P = [sum(s[t, i].item() for t in range(T)) / T for i in range(E)]
    assert expert_balance_loss(s, idx).item() == pytest.approx(sum(fi * pi for fi, pi in zip(f, P)), rel=1e-5)
    groups = [range(d * E // D, (d + 1) * E // D) for d in range(D)]
    f_dev = [sum(f[i] for i in g) / len(g) for g in groups]
    P_dev = [sum(P[i] for i in g) for g in groups]
    assert device_balance_loss(s, idx, D).item() == pytest.approx(sum(a * b for a, b in zip(f_dev, P_dev)), rel=1e-5)
    sent = [D / (M * T) * sum(any(i in groups[d] for i in chosen[t]) for t in range(T)) for d in range(D)]
    assert comm_balance_loss(s, idx, D, M).item() == pytest.approx(sum(a * b for a, b in zip(sent, P_dev)), rel=1e-5)


def test_sequence_wise_loss_follows_the_v3_formula():
    B, T, E, K = 3, 10, 8, 2
    s, idx = case(B * T, E, K, seed=1, scoring="sigmoid")
    s, idx = s.view(B, T, E), idx.view(B, T, K)
    per_seq = []
    for b in range(B):
        f = [E / (K * T) * sum(i in idx[b, t].tolist() for t in range(T)) for i in range(E)]
        P = [sum((s[b, t, i] / s[b, t].sum()).item() for t in range(T)) / T for i in range(E)]
        per_seq.append(sum(fi * pi for fi, pi in zip(f, P)))
    assert sequence_balance_loss(s, idx).item() == pytest.approx(sum(per_seq) / B, rel=1e-5)


def test_losses_are_one_at_perfect_balance_and_push_affinity_off_busy_experts():
    T, E = 8, 4
    idx = torch.arange(T)[:, None] % E  # every expert exactly T/E tokens
    s = torch.full((T, E), 1 / E)
    assert expert_balance_loss(s, idx).item() == pytest.approx(1.0)
    assert device_balance_loss(s, idx, 2).item() == pytest.approx(1.0)
    assert comm_balance_loss(s, idx, 2, 1).item() == pytest.approx(1.0)
    # collapse: every token picks expert 0 → the gradient lowers expert 0's affinity
    logits = torch.zeros(T, E, requires_grad=True)
    expert_balance_loss(logits.softmax(-1), torch.zeros(T, 1, dtype=torch.long)).backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_layer_adds_alpha_weighted_losses_only_in_training():
    layer = DeepSeekMoE(moe_layer_config(topk_method="group_limited_greedy", aux_loss_alpha=0.003,
                                         device_aux_loss_alpha=0.05, comm_aux_loss_alpha=0.02))
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    layer(x)
    r = layer.gate(x.view(-1, 32))
    expected = (0.003 * expert_balance_loss(r.scores, r.topk_idx) + 0.05 * device_balance_loss(r.scores, r.topk_idx, 4)
                + 0.02 * comm_balance_loss(r.scores, r.topk_idx, 4, 2))
    assert layer.aux_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    layer.eval()
    layer(x)
    assert layer.aux_loss is None


# --- V3's aux-loss-free bias ----------------------------------------------------------------------
def v3_layer(**kw) -> DeepSeekMoE:
    layer = DeepSeekMoE(moe_layer_config(**(dict(scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
                                                 bias_update_speed=0.01) | kw)))
    with torch.no_grad():  # a skewed router: expert 0 and 1 attract most tokens
        layer.gate.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
        layer.gate.weight[:2] += 0.2
    return layer


def test_bias_update_moves_load_toward_balance_without_gradients():
    layer = v3_layer()
    bias = layer.gate.e_score_correction_bias
    assert not bias.requires_grad and all(p is not bias for p in layer.parameters())
    x = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(1)) + 0.5
    vio = []
    for _ in range(60):
        y = layer(x)
        y.sum().backward()
        vio.append(layer.stats["maxvio"])
        layer.after_optimizer_step()
    assert bias.grad is None
    assert vio[0] > 1.0 and vio[-1] < 0.35 * vio[0], vio[::10]
    assert bias[:2].max() < 0 < bias[2:].max()  # the busy experts were pushed down
    assert layer.bias_updates == 60


def test_bias_changes_only_in_training_and_stops_on_schedule():
    layer = v3_layer(bias_update_until=3)
    bias = layer.gate.e_score_correction_bias
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(2))
    layer.eval()
    layer(x)
    layer.after_optimizer_step()
    assert bias.abs().sum() == 0  # evaluation never moves the bias
    layer.train()
    for _ in range(5):
        layer(x)
        layer.after_optimizer_step()
    assert layer.bias_updates == 3
    steps = bias.abs() / 0.01  # each update moved every bias by exactly ±γ (or 0 at exactly mean load)
    torch.testing.assert_close(steps, steps.round(), atol=1e-5, rtol=0)
    assert steps.max() <= 3
    before = bias.clone()
    layer.config = layer.config.replace(bias_update_speed=0.5, bias_update_until=None)  # γ comes from the config
    layer(x)
    layer.after_optimizer_step()
    assert (bias - before).abs().max().item() == pytest.approx(0.5)


def test_bias_update_step_is_plus_minus_gamma():
    from dslearn.moe import update_bias

    b = torch.zeros(4)
    step = update_bias(b, torch.tensor([10.0, 2.0, 4.0, 4.0]), 0.001)
    torch.testing.assert_close(b, torch.tensor([-0.001, 0.001, 0.001, 0.001]))
    torch.testing.assert_close(step, b)


# --- V2 token dropping and metrics ----------------------------------------------------------------
def test_capacity_drops_the_lowest_affinity_overflow_and_spares_exempt_tokens():
    idx = torch.zeros(4, 1, dtype=torch.long)  # 4 tokens, all to expert 0 (device 0 of 2)
    w = torch.tensor([[0.9], [0.5], [0.7], [0.6]])
    keep = capacity_keep_mask(idx, w, n_experts=2, n_group=2, capacity_factor=1.0)  # capacity ceil(4/2) = 2
    assert keep.flatten().tolist() == [True, False, True, False]
    exempt = torch.tensor([False, True, False, False])
    keep = capacity_keep_mask(idx, w, 2, 2, 1.0, exempt)
    assert keep.flatten().tolist() == [True, True, False, False]
    assert capacity_keep_mask(idx, w, 2, 2, 2.0).all()  # capacity 4: nothing dropped


def test_load_metrics():
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [0, 3]])
    s = torch.full((4, 4), 0.25)
    m = load_metrics(idx, s, 4, 2, keep=torch.tensor([[True, True], [True, False], [True, True], [True, True]]))
    assert m["load"].tolist() == [4, 2, 1, 1] and m["group_load"].tolist() == [6, 2]
    assert m["maxvio"] == pytest.approx(4 / 2 - 1) and m["group_maxvio"] == pytest.approx(6 / 4 - 1)
    assert m["dropped"] == 1 and m["dropped_frac"] == pytest.approx(1 / 8)
    assert m["entropy"] == pytest.approx(math.log(4))
    assert max_violation(torch.ones(5)) == 0.0
