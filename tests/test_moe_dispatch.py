"""Fast grouped dispatch against the per-expert loop (values and gradients), and the expert layouts.

Tolerances: fp32, atol 1e-5 / rtol 1e-5 — the two paths sum each token's K contributions in a
different order (observed differences ≈ 1e-7 for unit-scale weights).
"""

from __future__ import annotations

import pytest
import torch

from dslearn.config import ModelConfig
from dslearn.moe import (
    DeepSeekMoE,
    combinations,
    fine_grained,
    fuse_expert_weights,
    grouped_dispatch,
    loop_dispatch,
    split_expert_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

TOL = dict(atol=1e-5, rtol=1e-5)


def _grads(fn, x, idx, w, gu, dn, keep, g_out):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, gu, dn)]
    y = fn(leaves[0], idx, leaves[1], leaves[2], leaves[3], keep)
    y.backward(g_out)
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("with_keep", [False, True], ids=["all", "dropped"])
@pytest.mark.parametrize("E, K", [(8, 2), (6, 1), (16, 6)])
def test_grouped_dispatch_equals_loop_values_and_grads(E, K, with_keep):
    g = torch.Generator().manual_seed(E * 10 + K)
    N, d, inter = 37, 16, 8
    x = torch.randn(N, d, generator=g)
    idx = torch.rand(N, E, generator=g).topk(K, dim=-1).indices
    idx[:5] = torch.arange(K)  # some experts get many tokens …
    idx = torch.where(idx == E - 1, 0, idx) if K == 1 else idx  # … and with K=1 one expert gets none
    w = torch.rand(N, K, generator=g)
    gu, dn = torch.randn(E, 2 * inter, d, generator=g) / 4, torch.randn(E, d, inter, generator=g) / 3
    keep = torch.rand(N, K, generator=g) > 0.3 if with_keep else None
    g_out = torch.randn(N, d, generator=g)
    fast = _grads(grouped_dispatch, x, idx, w, gu, dn, keep, g_out)
    ref = _grads(loop_dispatch, x, idx, w, gu, dn, keep, g_out)
    for name, a, b in zip(("out", "d_x", "d_weight", "d_gate_up", "d_down"), fast, ref):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    if with_keep:  # dropped assignments contribute nothing and receive no gradient
        assert fast[2][~keep].abs().max() == 0


def test_layer_paths_agree_and_train_the_same():
    cfg = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=16, n_shared_experts=1,
               n_group=2, topk_group=1, topk_method="group_limited_greedy", aux_loss_alpha=0.01,
               capacity_factor=1.0, drop_exempt_fraction=0.25)
    a, b = DeepSeekMoE(ModelConfig(**cfg, moe_impl="grouped")), DeepSeekMoE(ModelConfig(**cfg, moe_impl="loop"))
    a.reset_parameters(torch.Generator().manual_seed(0))  # fixed weights: whether tokens drop must not be luck
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 12, 32, generator=torch.Generator().manual_seed(0))
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, **TOL)
    (ya.square().sum() + a.aux_loss).backward()
    (yb.square().sum() + b.aux_loss).backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, **TOL, msg=lambda m, n=n: f"{n}: {m}")
    assert a.stats["dropped"] == b.stats["dropped"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden,inner", [(36, 10), (44, 7), (32, 86)])
def test_widths_grouped_mm_cannot_take_run_and_equal_the_loop(hidden, inner, dtype):
    """grouped_mm needs 16-byte strides; widths ModelConfig accepts that miss them (e.g. fine_grained(4, 1, 688, m=8)
    gives 86) must run — block by block — never crash, and still equal the reference loop."""
    cfg = dict(vocab_size=64, hidden_size=hidden, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
               n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=inner)
    a, b = DeepSeekMoE(ModelConfig(**cfg, moe_impl="grouped")), DeepSeekMoE(ModelConfig(**cfg, moe_impl="loop"))
    b.load_state_dict(a.state_dict())
    a, b = a.to(dtype), b.to(dtype)
    x = torch.randn(2, 8, hidden, generator=torch.Generator().manual_seed(0)).to(dtype)
    ya, yb = a(x), b(x)
    tol = TOL if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ya, yb, **tol)
    ya.float().square().sum().backward()
    yb.float().square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad.float(), pb.grad.float(), **(tol if dtype == torch.float32 else
                                   dict(atol=5e-2, rtol=5e-2)), msg=lambda m, n=n: f"{n}: {m}")


def test_per_expert_rename_table_round_trips():
    layer = DeepSeekMoE(ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, n_routed_experts=4, num_experts_per_tok=2,
                                    moe_intermediate_size=8, n_shared_experts=1))
    state = {f"model.layers.1.mlp.{k}": v for k, v in layer.state_dict().items()}
    split = split_expert_weights(state, prefix="model.layers.1.mlp.")
    assert "model.layers.1.mlp.experts.3.up_proj.weight" in split
    assert split["model.layers.1.mlp.experts.2.gate_proj.weight"].shape == (8, 32)
    assert split["model.layers.1.mlp.experts.2.down_proj.weight"].shape == (32, 8)
    assert "model.layers.1.mlp.shared_experts.down_proj.weight" in split  # untouched
    back = fuse_expert_weights(split)
    assert back.keys() == state.keys()
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_fine_grained_segmentation_keeps_parameters_and_multiplies_combinations():
    coarse = dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, n_shared_experts=0)
    fine = fine_grained(8, 2, 64, m=4, n_shared=1)
    assert fine == dict(n_routed_experts=31, num_experts_per_tok=7, moe_intermediate_size=16, n_shared_experts=1)
    total = lambda c: (c["n_routed_experts"] + c["n_shared_experts"]) * c["moe_intermediate_size"]
    active = lambda c: (c["num_experts_per_tok"] + c["n_shared_experts"]) * c["moe_intermediate_size"]
    assert total(fine) == total(coarse) and active(fine) == active(coarse)
    assert combinations(16, 2) == 120 and combinations(64, 8) == 4_426_165_368
    with pytest.raises(ValueError, match="m=3 must divide"):
        fine_grained(8, 2, 64, m=3)


def test_fallback_without_grouped_mm_gives_the_same(monkeypatch):
    """Older torch has no F.grouped_mm: the same sorted layout then runs slice by slice."""
    from dslearn.layers import grouped

    g = torch.Generator().manual_seed(7)
    x, w = torch.randn(30, 16, generator=g), torch.rand(30, 3, generator=g)
    idx = torch.rand(30, 8, generator=g).topk(3, dim=-1).indices
    gu, dn = torch.randn(8, 16, 16, generator=g) / 4, torch.randn(8, 16, 8, generator=g) / 3
    g_out = torch.randn(30, 16, generator=g)
    fast = _grads(grouped_dispatch, x, idx, w, gu, dn, None, g_out)
    monkeypatch.setattr(grouped, "HAS_GROUPED_MM", False)
    slow = _grads(grouped_dispatch, x, idx, w, gu, dn, None, g_out)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, **TOL)


def test_bf16_autocast_training_step_runs():
    from dslearn.model import CausalLM

    cfg = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
                      scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True, bias_update_speed=1e-3)
    model = CausalLM(cfg)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.model.layers[1].mlp.experts.gate_up_proj.grad is not None
