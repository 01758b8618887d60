"""Exercises for notebook 02: KV-cache accounting, weight absorption, the adaptive-cache experiment.

Import this module (``import dslearn.exercises.mla``) to register them, then ``check(name, fn)``.
"""

from __future__ import annotations

import torch

from ..attention.cache_accounting import attention_variants, cache_elements, elements_per_token_per_layer
from ..config import ModelConfig, get_preset
from .core import assert_tensor_close, exercise


@exercise("kv_cache_per_token", hint="MHA/GQA/MQA: 2 · num_key_value_heads · head_dim (a key AND a value per KV "
                                     "head); MLA: kv_lora_rank + qk_rope_head_dim (one latent, one shared key)")
def _per_token(fn) -> str:
    """cache_per_token(config) → cached elements per token per layer for any ModelConfig."""
    configs = dict(attention_variants(ModelConfig.from_preset("tiny"), gqa_groups=2))
    configs.update({name: get_preset(name) for name in ("deepseek-llm-7b", "deepseek-llm-67b", "deepseek-v2",
                                                        "deepseek-v3")})
    for name, cfg in configs.items():
        got, want = fn(cfg), elements_per_token_per_layer(cfg)
        assert got == want, f"{name}: got {got!r}, expected {want}"
    return f"right for {len(configs)} configs, from tiny MQA to DeepSeek-V3's 576"


@exercise("absorb_query", hint="q_lat[b,h,t,:] = W^UK[h]ᵀ · q^C[b,h,t,:], i.e. "
                               "torch.einsum('bhtn,hnc->bhtc', q_nope, w_uk)")
def _absorb_query(fn) -> str:
    """absorb_query(q_nope (B,H,T,d_h), w_uk (H,d_h,d_c)) → q_lat (B,H,T,d_c) with q_lat·c = q^C·(W^UK c)."""
    g = torch.Generator().manual_seed(0)
    B, H, T, S, d_h, d_c = 2, 3, 4, 6, 8, 5
    q = torch.randn(B, H, T, d_h, generator=g)
    w_uk = torch.randn(H, d_h, d_c, generator=g)
    c = torch.randn(B, S, d_c, generator=g)  # cached latents
    k = torch.einsum("hnc,bsc->bhsn", w_uk, c)  # the per-head keys naive MLA would build
    want_scores = q @ k.transpose(-1, -2)  # (B, H, T, S)
    got = fn(q.clone(), w_uk.clone())
    assert_tensor_close(got, torch.einsum("bhtn,hnc->bhtc", q, w_uk), "q_lat", atol=1e-4)
    assert_tensor_close(got @ c[:, None].transpose(-1, -2), want_scores, "scores q_lat·c vs q^C·k^C", atol=1e-4)
    return "q_lat · c^KV gives exactly the scores q^C · k^C, without building a single key"


@exercise("absorb_output", hint="per head, o[b,t,h,:] = W^UV[h] · o_lat[b,h,t,:]; then merge heads to "
                                "(B, T, H·d_v): einsum('bhtc,hvc->bthv').reshape(B, T, H*d_v)")
def _absorb_output(fn) -> str:
    """absorb_output(o_lat (B,H,T,d_c), w_uv (H,d_v,d_c)) → (B, T, H·d_v), the heads' outputs before o_proj."""
    g = torch.Generator().manual_seed(1)
    B, H, T, S, d_v, d_c = 2, 3, 4, 6, 7, 5
    p = torch.randn(B, H, T, S, generator=g).softmax(-1)  # attention weights
    c = torch.randn(B, S, d_c, generator=g)
    w_uv = torch.randn(H, d_v, d_c, generator=g)
    v = torch.einsum("hvc,bsc->bhsv", w_uv, c)  # per-head values, naive MLA
    want = (p @ v).transpose(1, 2).reshape(B, T, H * d_v)
    o_lat = p @ c[:, None]  # (B, H, T, d_c): attention over the latents themselves
    assert_tensor_close(fn(o_lat.clone(), w_uv.clone()), want, "head outputs", atol=1e-4)
    return "W^UV applied after attention gives what attending over per-head values gives"


@exercise("adaptive_cache_saving", hint="layers l ≥ first_layer keep min(context, window) tokens instead of "
                                        "context; the saving is (layers pruned) · max(0, context − window) · "
                                        "(d_c + d_h^R)")
def _adaptive(fn) -> str:
    """adaptive_cache_saving(config, context, first_layer, window) → elements per sequence saved by the experiment."""
    cases = [(get_preset("deepseek-v3"), 131072, 30, 4096), (get_preset("deepseek-v3"), 2048, 30, 4096),
             (get_preset("deepseek-v2"), 32768, 0, 1024), (get_preset("deepseek-v3"), 5000, 61, 16)]
    for cfg, n, first, w in cases:
        windows = {layer: w for layer in range(first, cfg.num_hidden_layers)}
        want = cache_elements(cfg, n) - cache_elements(cfg, n, layer_windows=windows)
        got = fn(cfg, n, first, w)
        assert got == want, f"context {n}, first_layer {first}, window {w}: got {got!r}, expected {want}"
    return f"right on {len(cases)} cases (including a context shorter than the window: nothing saved)"
