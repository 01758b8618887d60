"""KV-cache accounting (dslearn.attention.cache_accounting) against the papers and against real caches,
and the layer-wise adaptive cache experiment (dslearn.attention.adaptive_cache)."""

from __future__ import annotations

import pytest
import torch
from helpers import mla_config, perturbed_model, tiny_dense_config

from dslearn.attention.adaptive_cache import AdaptiveLatentCache, apply_adaptive_cache
from dslearn.attention.cache_accounting import (
    attention_variants,
    cache_bytes,
    cache_elements,
    cache_report,
    dtype_bytes,
    elements_per_token_per_layer,
    gqa_equivalent_groups,
    variant_name,
)
from dslearn.config import ModelConfig, get_preset
from dslearn.model import CausalLM, with_config

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

TOL = dict(atol=2e-5, rtol=1e-4)


def test_v2_table1_relations():
    v2 = get_preset("deepseek-v2")
    d_h, n_h, layers = v2.qk_nope_head_dim, v2.num_attention_heads, v2.num_hidden_layers
    variants = attention_variants(v2, gqa_groups=8)
    assert elements_per_token_per_layer(variants["MHA"]) == 2 * n_h * d_h
    assert elements_per_token_per_layer(variants["GQA"]) == 2 * 8 * d_h
    assert elements_per_token_per_layer(variants["MQA"]) == 2 * d_h
    mla = elements_per_token_per_layer(v2)
    assert mla == 4.5 * d_h  # d_c = 4 d_h, d_h^R = d_h / 2
    assert cache_elements(v2, context=1) == 4.5 * d_h * layers  # Table 1: 9/2 d_h l
    assert gqa_equivalent_groups(v2) == 2.25  # "equal to GQA with only 2.25 groups"
    assert variant_name(v2) == "MLA" and variant_name(variants["GQA"]) == "GQA"


def test_v3_576_elements_and_70272_bytes_per_token():
    v3 = get_preset("deepseek-v3")
    assert elements_per_token_per_layer(v3) == 576
    report = cache_report(v3, "bf16")
    assert (report.elements_per_token, report.bytes_per_token) == (35_136, 70_272)
    assert cache_bytes(v3, context=1, dtype=torch.bfloat16) == 70_272
    assert cache_bytes(v3, context=4096, dtype="fp32", batch=2) == 2 * 4096 * 35_136 * 4


def test_deepseek_67b_gqa_baseline():
    c67 = get_preset("deepseek-llm-67b")  # 95 layers, 8 KV heads of 128
    assert elements_per_token_per_layer(c67) == 2 * 8 * 128 and cache_elements(c67, 1) == 194_560


def test_dtype_bytes():
    assert [dtype_bytes(d) for d in ("fp32", "bf16", "fp8", torch.float16)] == [4, 2, 1, 2]
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_bytes("int3")


@pytest.mark.parametrize("variant", ["MHA", "GQA", "MQA", "MLA"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accounting_equals_real_cache_bytes(variant, dtype):
    cfg = attention_variants(tiny_dense_config(num_hidden_layers=3), gqa_groups=2)[variant]
    model = CausalLM(cfg).to(dtype).eval()
    state = model.new_decode_state(batch=2, max_len=40)
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 25)), state=state)
    assert state.nbytes() == cache_bytes(cfg, context=25, dtype=dtype, batch=2)


def test_accounting_rejects_bad_arguments():
    cfg = get_preset("tiny")
    with pytest.raises(ValueError, match="context"):
        cache_elements(cfg, -1)
    with pytest.raises(ValueError, match="layer_windows names layer 9"):
        cache_elements(cfg, 10, layer_windows={9: 4})
    with pytest.raises(ValueError, match=r"layer_windows\[1\]"):
        cache_elements(cfg, 10, layer_windows={1: 0})


# ----------------------------------------------------------------------------------------------
# The layer-wise adaptive cache EXPERIMENT (not in the V3 report)

def small_mla(layers=4) -> CausalLM:
    """MLA without query compression, d_v = 16."""
    return perturbed_model(mla_config(num_hidden_layers=layers, q_lora_rank=None, v_head_dim=16), seed=5)


@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_adaptive_cache_decode_equals_masked_forward_and_saves_what_accounting_says(path):
    model = with_config(small_mla(), mla_impl=path)
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        full = model(ids).logits
        assert apply_adaptive_cache(model, first_layer=2, window=8) == [2, 3]
        masked = model(ids).logits
        state = model.new_decode_state(2, 40)
        outs = [model(ids[:, :5], state=state).logits]
        for t in range(5, 40):
            outs.append(model(ids[:, t:t + 1], state=state).logits)
    stepped = torch.cat(outs, 1)
    torch.testing.assert_close(stepped, masked, **TOL)
    torch.testing.assert_close(masked[:, :9], full[:, :9], **TOL)  # within the window nothing is pruned
    assert not torch.allclose(masked[:, 20:], full[:, 20:], atol=1e-3)  # beyond it, pruning changes the output
    assert [type(c) is AdaptiveLatentCache for c in state.caches] == [False, False, True, True]
    assert [c.kv.shape[1] if type(c) is AdaptiveLatentCache else None for c in state.caches][2:] == [8, 8]
    cfg = model.config
    assert state.nbytes() == cache_bytes(cfg, 40, torch.float32, batch=2, layer_windows={2: 8, 3: 8})
    assert state.nbytes() < cache_bytes(cfg, 40, torch.float32, batch=2)


def test_adaptive_cache_with_left_padding_matches_masked_forward():
    model = small_mla(layers=2)
    apply_adaptive_cache(model, first_layer=1, window=5)
    ids = torch.randint(1, 256, (2, 20), generator=torch.Generator().manual_seed(9))
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, :6] = False  # row 1 is left-padded
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        state = model.new_decode_state(2, 20)
        outs = [model(ids[:, :8], attention_mask=mask[:, :8], state=state).logits]
        for t in range(8, 20):
            outs.append(model(ids[:, t:t + 1], state=state).logits)
    torch.testing.assert_close(torch.cat(outs, 1)[:, 6:], full[:, 6:], **TOL)


def test_adaptive_cache_off_restores_the_model_and_bad_arguments():
    model = small_mla(layers=2)
    ids = torch.randint(0, 256, (1, 30))
    with torch.no_grad():
        before = model(ids).logits
        apply_adaptive_cache(model, first_layer=0, window=3)
        apply_adaptive_cache(model, first_layer=0, window=None)
        after = model(ids).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="window"):
        apply_adaptive_cache(model, 1, 0)
    with pytest.raises(ValueError, match="first_layer"):
        apply_adaptive_cache(model, 3, 4)
    with pytest.raises(ValueError, match="MLA layers"):
        apply_adaptive_cache(CausalLM(ModelConfig.from_preset("tiny", num_hidden_layers=1)), 0, 4)
    cache = AdaptiveLatentCache(1, 4, 6, 2, torch.float32, None)
    cache.update(torch.zeros(1, 3, 8), 0)
    with pytest.raises(ValueError, match="cannot write at 5"):
        cache.update(torch.zeros(1, 1, 8), 5)
