"""MLA (dslearn.attention.mla): naive == absorbed, cached == uncached, cache contents, bad configs.

Tolerances (fp32): naive and absorbed MLA sum the same products in different orders (W^UK folded into
the query instead of into the keys), so they agree to rounding, not bit for bit: atol 2e-5, rtol 1e-4
on logits of magnitude ~1 (observed differences ~1e-6).
"""

from __future__ import annotations

import pytest
import torch
from helpers import mla_config, perturbed_model, tiny_dense_config

from dslearn.attention import LatentKVCache, MultiHeadLatentAttention
from dslearn.attention.cache_accounting import (
    attention_variants,
    elements_per_token_per_layer,
    measured_elements_per_token,
)
from dslearn.config import ConfigError, ModelConfig
from dslearn.generate import generate
from dslearn.layers import apply_rotary
from dslearn.model import CausalLM, choose_parts, with_config

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

TOL = dict(atol=2e-5, rtol=1e-4)


def decode_stepwise(model, ids, prefill: int):
    """Logits for every position, computed by a prefill then one token at a time through the cache."""
    state = model.new_decode_state(ids.shape[0], ids.shape[1])
    outs = [model(ids[:, :prefill], state=state).logits]
    for t in range(prefill, ids.shape[1]):
        outs.append(model(ids[:, t:t + 1], state=state).logits)
    return torch.cat(outs, 1), state


MLA_SHAPES = [
    dict(),  # query compression on, interleaved RoPE (the V2/V3 layout)
    dict(q_lora_rank=None),  # no query compression (V2-Lite): q_proj
    dict(rope_interleave=False),  # RoPE on halves
    dict(qk_nope_head_dim=0),  # only the decoupled RoPE part carries scores
    dict(attention_bias=True),
]


@pytest.mark.parametrize("overrides", MLA_SHAPES, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "v3")
def test_naive_equals_absorbed_prefill_and_decode(overrides):
    model = perturbed_model(mla_config(**overrides))
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full_naive = model(ids).logits
        absorbed = with_config(model, mla_impl="absorbed")
        full_absorbed = absorbed(ids).logits
        step_absorbed, _ = decode_stepwise(absorbed, ids, prefill=7)
        step_naive, _ = decode_stepwise(model, ids, prefill=7)
    assert full_naive.abs().max() > 0.5  # the comparison is not between near-zero logits
    torch.testing.assert_close(full_absorbed, full_naive, **TOL)
    torch.testing.assert_close(step_absorbed, full_naive, **TOL)
    torch.testing.assert_close(step_naive, full_naive, **TOL)


def test_absorbed_path_trains_like_naive():
    """The absorbed path is ordinary autograd math too: same loss and same gradients."""
    model = perturbed_model(mla_config())
    ids = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(2))
    grads = {}
    for path in ("naive", "absorbed"):
        m = with_config(model, mla_impl=path)
        loss = m(ids[:, :-1], ids[:, 1:]).loss
        loss.backward()
        grads[path] = (loss.detach(), [p.grad.clone() for p in m.parameters()])
    torch.testing.assert_close(grads["absorbed"][0], grads["naive"][0], **TOL)
    for a, b in zip(grads["absorbed"][1], grads["naive"][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)


def test_latent_cache_holds_exactly_dc_plus_drope_per_token_and_layer():
    cfg = mla_config()
    model = perturbed_model(cfg)
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        _, state = decode_stepwise(model, ids, prefill=5)
    per_token_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim  # 32 + 8 = 40
    assert all(isinstance(c, LatentKVCache) for c in state.caches)
    assert all(c.kv.shape == (2, 20, per_token_layer) for c in state.caches)
    assert [measured_elements_per_token(c, 2, torch.float32) for c in state.caches] == [per_token_layer] * 2
    assert state.nbytes() == 2 * 20 * per_token_layer * cfg.num_hidden_layers * 4
    assert elements_per_token_per_layer(cfg) == per_token_layer


def test_cache_stores_normalised_latent_and_rotated_shared_key():
    """What sits in the cache is c^KV after kv_a_layernorm and k^R after RoPE — nothing per head."""
    cfg = mla_config()
    model = perturbed_model(cfg)
    attn: MultiHeadLatentAttention = model.model.layers[0].self_attn
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        state = model.new_decode_state(1, 12)
        model(ids, state=state)
        h = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
        c_kv, k_r = attn.kv_a_proj_with_mqa(h).split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], -1)
        cos, sin = model.rotary(torch.arange(12)[None])
        expected = torch.cat([attn.kv_a_layernorm(c_kv), apply_rotary(k_r[:, None], cos, sin, True)[:, 0]], -1)
    torch.testing.assert_close(state.caches[0].kv, expected, atol=1e-6, rtol=1e-5)


def test_softmax_scale_is_one_over_sqrt_nope_plus_rope():
    attn = MultiHeadLatentAttention(mla_config(qk_nope_head_dim=16, qk_rope_head_dim=8))
    assert attn.scale == pytest.approx(1 / (16 + 8) ** 0.5)


@pytest.mark.parametrize("variant", ["MHA", "GQA", "MQA", "MLA-naive", "MLA-absorbed"])
def test_every_variant_cached_decode_equals_uncached_forward(variant):
    cfg = attention_variants(tiny_dense_config(), gqa_groups=2)[variant.split("-")[0]]
    model = perturbed_model(cfg)
    if variant == "MLA-absorbed":
        model = with_config(model, mla_impl="absorbed")
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids).logits
        stepped, state = decode_stepwise(model, ids, prefill=4)
    torch.testing.assert_close(stepped, full, **TOL)
    measured = measured_elements_per_token(state.caches[0], 2, torch.float32)
    assert measured == elements_per_token_per_layer(cfg)


@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_mla_generation_cached_equals_uncached(path):
    model = with_config(perturbed_model(mla_config()), mla_impl=path)
    prompts = [[5, 6, 7, 8, 9, 10], [40, 41], [100, 101, 102]]  # different lengths: left padding
    kw = dict(max_new_tokens=12, temperature=0.8, top_k=50)
    a = generate(model, prompts, use_cache=True, generator=torch.Generator().manual_seed(4), **kw)
    b = generate(model, prompts, use_cache=False, generator=torch.Generator().manual_seed(4), **kw)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert all(len(g.tokens) == 12 for g in a)


def test_padded_rows_compute_what_they_compute_alone():
    model = perturbed_model(mla_config(mla_impl="absorbed"))
    ids = torch.randint(1, 256, (1, 9))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 9)], 1)
    with torch.no_grad():
        alone = model(ids).logits
        with_pad = model(padded, attention_mask=mask).logits[:, 4:]
    torch.testing.assert_close(with_pad, alone, **TOL)


def test_the_config_chooses_attention_and_mla_path():
    cfg = mla_config()
    attn = choose_parts(cfg).attention(cfg, 0)
    assert isinstance(attn, MultiHeadLatentAttention) and attn.rope_dim == cfg.qk_rope_head_dim
    assert attn.path == "naive"
    model = with_config(CausalLM(cfg), mla_impl="absorbed")
    assert [layer.self_attn.path for layer in model.model.layers] == ["absorbed"] * cfg.num_hidden_layers
    assert model.rotary.inv_freq.numel() == cfg.qk_rope_head_dim // 2  # RoPE tables sized for d_h^R
    with pytest.raises(ValueError, match="MLA path must be one of"):
        attn.path = "fused"


def test_parameter_names_match_deepseek_v3():
    names = {n.split("self_attn.")[1] for n, _ in CausalLM(mla_config()).named_parameters() if "self_attn." in n}
    assert names == {"q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight",
                     "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight"}
    no_q_lora = {n.split("self_attn.")[1] for n, _ in CausalLM(mla_config(q_lora_rank=None)).named_parameters()
                 if "self_attn." in n}
    assert "q_proj.weight" in no_q_lora and "q_a_proj.weight" not in no_q_lora


def test_latent_cache_overflow_and_select():
    cache = LatentKVCache(3, 4, 6, 2, torch.float32, None)
    cache.update(torch.arange(3 * 2 * 8, dtype=torch.float32).view(3, 2, 8), 0)
    with pytest.raises(ValueError, match="overflow"):
        cache.update(torch.zeros(3, 3, 8), 2)
    cache.select(torch.tensor([2, 0]))
    assert cache.kv.shape == (2, 4, 8) and cache.kv[0, 0, 0].item() == 32.0
    assert cache.nbytes(2) == 2 * 2 * 8 * 4


@pytest.mark.parametrize("overrides, field", [
    (dict(kv_lora_rank=None), "kv_lora_rank"),
    (dict(kv_lora_rank=0), "kv_lora_rank"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),
    (dict(qk_rope_head_dim=None), "qk_rope_head_dim"),
    (dict(v_head_dim=0), "v_head_dim"),
    (dict(qk_nope_head_dim=-1), "qk_nope_head_dim"),
    (dict(q_lora_rank=0), "q_lora_rank"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": 0.5}), "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": 2.0, "beta_fast": 1, "beta_slow": 32}), "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": 2.0, "scale": 3}), "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "original_max_position_embeddings": 0}), "original_max_position_embeddings"),
    (dict(rope_scaling="yarn"), "rope_scaling"),
])
def test_bad_mla_configs_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        CausalLM(mla_config(**overrides))


def test_yarn_on_mha_is_refused_by_name():
    with pytest.raises(ConfigError, match="rope_scaling.*attention_type='mla'"):  # when the config is made
        ModelConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                    rope_scaling={"type": "yarn", "factor": 4.0})
