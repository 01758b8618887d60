"""The gates of chapters 03–04: hand-computed tiny cases, bad configs, and Hugging Face's DeepseekV3 as oracle.

Hand cases feed logits straight into ``route`` (4 experts, 2 groups of 2) and spell the expected
choice and weights out with math.exp. The oracle loads the same weights into HF's DeepseekV3MoE by
name, no renaming; tolerance atol 1e-6 / rtol 1e-5 in fp32 (both compute the same sums).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import moe_config, v3_config

from dslearn.config import ConfigError, ModelConfig
from dslearn.export import hf_config
from dslearn.model import CausalLM
from dslearn.moe import DeepSeekMoE, route

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

sig = lambda v: 1 / (1 + math.exp(-v))


# --- hand-computed cases ----------------------------------------------------------------------
def test_v2_greedy_softmax_top2():
    r = route(torch.tensor([[2.0, 0.0, 1.0, -1.0]]), top_k=2, routed_scaling_factor=1.5)
    Z = math.exp(2) + 1 + math.exp(1) + math.exp(-1)
    assert r.topk_idx.tolist() == [[0, 2]]
    torch.testing.assert_close(r.topk_weight, torch.tensor([[1.5 * math.exp(2) / Z, 1.5 * math.exp(1) / Z]]))
    assert r.scores.sum().item() == pytest.approx(1.0)


def test_v2_device_limited_routing_keeps_the_best_device_only():
    """Experts {0,1} on device 0, {2,3} on device 1. Greedy top-2 would take experts 0 and 3 (two
    devices); with M=1 device the token's best expert (0, logit 3) decides the device, so the second
    expert is 1 although experts 2 and 3 score higher."""
    logits = torch.tensor([[3.0, -2.0, 2.0, 2.5]])
    greedy = route(logits, top_k=2)
    assert greedy.topk_idx.tolist() == [[0, 3]]
    r = route(logits, top_k=2, topk_method="group_limited_greedy", n_group=2, topk_group=1)
    assert r.topk_idx.tolist() == [[0, 1]]
    Z = math.exp(3) + math.exp(-2) + math.exp(2) + math.exp(2.5)
    torch.testing.assert_close(r.topk_weight, torch.tensor([[math.exp(3) / Z, math.exp(-2) / Z]]))


def test_v3_group_score_is_the_sum_of_the_top2_and_bias_only_selects():
    logits = torch.tensor([[2.0, -1.0, 1.0, 1.5]])
    kw = dict(top_k=2, scoring_func="sigmoid", topk_method="noaux_tc", n_group=2, topk_group=1,
              norm_topk_prob=True, routed_scaling_factor=2.5)
    # group 0: σ(2)+σ(-1) = 1.150 < group 1: σ(1)+σ(1.5) = 1.549 → the best single expert (0) is not taken
    r = route(logits, bias=torch.zeros(4), **kw)
    assert r.topk_idx.tolist() == [[3, 2]]
    a, b = sig(1.5), sig(1.0)
    torch.testing.assert_close(r.topk_weight, torch.tensor([[2.5 * a / (a + b), 2.5 * b / (a + b)]]))
    # a bias of +0.5 on group 0 flips the group choice; the weights still come from the UN-biased s
    r = route(logits, bias=torch.tensor([0.5, 0.5, 0.0, 0.0]), **kw)
    assert r.topk_idx.tolist() == [[0, 1]]
    a, b = sig(2.0), sig(-1.0)
    torch.testing.assert_close(r.topk_weight, torch.tensor([[2.5 * a / (a + b), 2.5 * b / (a + b)]]))
    torch.testing.assert_close(r.scores, torch.sigmoid(logits))


def test_gate_weights_get_gradients_but_selection_does_not():
    logits = torch.randn(5, 8, requires_grad=True)
    r = route(logits, top_k=2, scoring_func="sigmoid", topk_method="noaux_tc", n_group=4, topk_group=2,
              bias=torch.randn(8), norm_topk_prob=True)
    # weight the two slots differently: with norm_topk_prob the plain sum is 1 for every input, so its gradient is 0
    (r.topk_weight * torch.tensor([1.0, 2.0])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 1e-3
    assert not r.topk_idx.requires_grad


# --- bad configs ------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    (dict(num_experts_per_tok=9), "num_experts_per_tok=9 exceeds n_routed_experts=8"),
    (dict(n_group=3), "n_group=3 must divide n_routed_experts=8"),
    (dict(topk_group=5), "topk_group=5 exceeds n_group=4"),
    (dict(topk_group=1, num_experts_per_tok=3), "exceeds the experts reachable in topk_group=1"),
    (dict(topk_method="best"), "topk_method must be one of"),
    (dict(aux_loss_alpha=-0.1), "aux_loss_alpha must be a finite number >= 0"),
    (dict(seq_aux_loss_alpha=float("nan")), "seq_aux_loss_alpha must be a finite number >= 0"),
    (dict(bias_update_speed=1e-3), "bias_update_speed=0.001 needs topk_method='noaux_tc'"),
    (dict(capacity_factor=0.0), "capacity_factor must be > 0 or None"),
    (dict(drop_exempt_fraction=1.5), r"drop_exempt_fraction must be in \[0, 1\]"),
    (dict(moe_impl="triton"), "moe_impl must be one of"),
    (dict(bias_update_until=-1), "bias_update_until must be an integer >= 0"),
])
def test_bad_moe_configs_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        moe_config(**changes)


def test_route_checks_its_arguments_too():
    with pytest.raises(ConfigError, match="num_experts_per_tok=5 exceeds n_routed_experts=4"):
        route(torch.zeros(1, 4), top_k=5)
    with pytest.raises(ConfigError, match="n_group=3 must divide"):
        route(torch.zeros(1, 4), top_k=1, n_group=3)
    with pytest.raises(ConfigError, match="topk_group=3 exceeds n_group=2"):
        route(torch.zeros(1, 4), top_k=1, n_group=2, topk_group=3)


def test_moe_layers_plug_in_through_the_config():
    model = CausalLM(moe_config(first_k_dense_replace=1))
    assert type(model.model.layers[0].mlp).__name__ == "SwiGLU"
    assert isinstance(model.model.layers[1].mlp, DeepSeekMoE)


# --- Hugging Face oracle ----------------------------------------------------------------------
def _hf():
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed: the DeepseekV3MoE comparison needs it "
                               "(pip install 'dslearn[dev]')")
    return transformers


def reference_config(cfg: ModelConfig):
    from transformers import DeepseekV3Config

    if cfg.attention_type == "mha":  # DeepseekV3 attention is MLA only; these tests compare the MoE layer alone
        cfg = cfg.replace(attention_type="mla", kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                          v_head_dim=8, rope_interleave=True)
    hc = DeepseekV3Config.from_dict(hf_config(cfg))  # the one mapping, dslearn.export
    hc._attn_implementation = "eager"
    return hc


def perturbed_moe(cfg: ModelConfig, seed: int = 0) -> DeepSeekMoE:
    layer = DeepSeekMoE(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.2, generator=g)
        layer.gate.e_score_correction_bias.copy_(0.1 * torch.randn(cfg.n_routed_experts, generator=g))
    return layer


@pytest.mark.parametrize("impl", ["grouped", "loop"])
@pytest.mark.parametrize("groups", [(4, 2), (1, 1), (2, 1)], ids=["4g-top2", "1g", "2g-top1"])
def test_v3_gate_and_layer_match_hf(impl, groups):
    _hf()
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    n_group, topk_group = groups
    cfg = v3_config(n_group=n_group, topk_group=topk_group, moe_impl=impl, n_shared_experts=2,
                    num_experts_per_tok=3)
    ours = perturbed_moe(cfg, seed=1)
    ref = DeepseekV3MoE(reference_config(cfg)).eval()
    result = ref.load_state_dict(ours.state_dict(), strict=True)  # same names and layouts
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(3, 40, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, w_ref, idx_ref = ref.gate(x)
        r = ours.gate(x.view(-1, cfg.hidden_size))
        expected, got = ref(x), ours(x)
    torch.testing.assert_close(r.logits, logits, atol=1e-6, rtol=1e-5)
    # HF returns its top-k unsorted: compare (expert, weight) pairs sorted by expert id
    i_ref, order_ref = idx_ref.sort(dim=-1)
    i_got, order_got = r.topk_idx.sort(dim=-1)
    assert torch.equal(i_got, i_ref)
    torch.testing.assert_close(r.topk_weight.gather(1, order_got), w_ref.gather(1, order_ref), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert expected.abs().max() > 0.1


def test_whole_moe_model_exports_to_hf_deepseek_v3():
    """An MLA + DeepSeekMoE CausalLM loads into DeepseekV3ForCausalLM by name and gives the same logits."""
    _hf()
    from transformers import DeepseekV3ForCausalLM

    cfg = v3_config(attention_type="mla", q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16,
                    qk_rope_head_dim=8, v_head_dim=12, rope_interleave=True, first_k_dense_replace=1,
                    num_hidden_layers=3)
    model = CausalLM(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for layer in model.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.copy_(0.05 * torch.randn(cfg.n_routed_experts, generator=g))
    ref = DeepseekV3ForCausalLM(reference_config(cfg)).eval()
    result = ref.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(ids).logits, model(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
