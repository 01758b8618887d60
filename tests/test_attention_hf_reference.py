"""Outside reference: Hugging Face transformers' DeepseekV3 (eager attention, interleaved RoPE, CPU, fp32).

The same weights are loaded into both models by parameter name — no renaming — and the outputs are
compared. Tolerance: atol 1e-5, rtol 1e-4 in fp32 (observed differences ≈ 1e-6: both compute the same
sums, in slightly different orders). Skipped, with the reason, when transformers is not installed.
"""

from __future__ import annotations

import pytest
import torch
from helpers import mla_config, perturbed_model

from dslearn.attention.yarn import yarn_get_mscale, yarn_inv_freq
from dslearn.config import ModelConfig, yarn_settings
from dslearn.export import hf_config
from dslearn.model import CausalLM, with_config

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed: the DeepseekV3 reference comparison needs it "
                           "(pip install 'dslearn[dev]')")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

TOL = dict(atol=1e-5, rtol=1e-4)

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32, "beta_slow": 1,
        "mscale": 1.0, "mscale_all_dim": 1.0}  # V3's settings, with a 32-token "original" context


def ours(q_lora_rank=24, rope_scaling=None) -> ModelConfig:
    return mla_config(q_lora_rank=q_lora_rank, rope_scaling=rope_scaling, max_position_embeddings=128)


def reference_config(cfg: ModelConfig):
    hc = DeepseekV3Config.from_dict(hf_config(cfg))  # the one mapping, dslearn.export
    hc._attn_implementation = "eager"
    return hc



@pytest.mark.parametrize("q_lora_rank", [24, None])
@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_attention_module_matches_hf(q_lora_rank, path):
    cfg = ours(q_lora_rank)
    model = with_config(perturbed_model(cfg, seed=3), mla_impl=path)
    attn = model.model.layers[0].self_attn
    ref = DeepseekV3Attention(reference_config(cfg), layer_idx=0).eval()
    ref.load_state_dict(attn.state_dict(), strict=True)  # same names, same shapes: no renaming
    x = torch.randn(2, 50, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(50)[None].expand(2, 50)
    cos, sin = model.rotary(pos)  # (B, T, d_R/2); HF wants cat(freqs, freqs)
    causal = torch.full((50, 50), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        expected, _ = ref(x, (torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)), causal)
        got = attn(x, (cos, sin))
    torch.testing.assert_close(got, expected, **TOL)


def test_latent_norms_keep_rmsnorms_default_epsilon_like_hf():
    """q_a_layernorm/kv_a_layernorm use RMSNorm's default ε = 1e-6 in DeepSeek's and HF's code, whatever
    rms_norm_eps says (#17 §5): with rms_norm_eps = 0.5 the two attentions still agree."""
    cfg = ours().replace(rms_norm_eps=0.5)
    attn = perturbed_model(cfg, seed=3).model.layers[0].self_attn
    assert attn.q_a_layernorm.eps == attn.kv_a_layernorm.eps == 1e-6
    ref = DeepseekV3Attention(reference_config(cfg), layer_idx=0).eval()
    ref.load_state_dict(attn.state_dict(), strict=True)
    x = torch.randn(1, 20, cfg.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.05  # small: ε matters
    cos, sin = perturbed_model(cfg, seed=3).rotary(torch.arange(20)[None])
    causal = torch.full((20, 20), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        expected, _ = ref(x, (torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)), causal)
        got = attn(x, (cos, sin))
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("rope_scaling", [None, YARN], ids=["rope", "yarn"])
@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_whole_model_logits_match_hf(rope_scaling, path):
    """Beyond the 32-token 'original' context, so YaRN's frequencies and mscale² both matter."""
    cfg = ours(rope_scaling=rope_scaling)
    model = with_config(perturbed_model(cfg, seed=3), mla_impl=path)
    ref = DeepseekV3ForCausalLM(reference_config(cfg)).eval()
    result = ref.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ids = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(ids).logits, model(ids).logits
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(got, expected, **TOL)


def test_yarn_frequencies_and_scales_match_hf():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = ours(rope_scaling=YARN)
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](reference_config(cfg))
    y = yarn_settings(cfg)
    ours_inv = yarn_inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta, y["factor"], y["original_max_position_embeddings"])
    torch.testing.assert_close(ours_inv, inv_freq.float(), atol=0, rtol=1e-6)
    assert attention_factor == pytest.approx(CausalLM(cfg).rotary.attention_factor)
    # the frequencies really changed: the fastest pair is kept, the slowest divided by the factor
    plain = cfg.rope_theta ** (-torch.arange(0, cfg.qk_rope_head_dim, 2) / cfg.qk_rope_head_dim)
    assert ours_inv[0] == pytest.approx(plain[0].item()) and ours_inv[-1] == pytest.approx(plain[-1].item() / 4)
    # and the softmax scale carries mscale² = (0.1·ln 4 + 1)²
    attn = CausalLM(cfg).model.layers[0].self_attn
    assert attn.scale == pytest.approx((0.1 * torch.log(torch.tensor(4.0)).item() + 1) ** 2 / 24 ** 0.5)
    assert yarn_get_mscale(40, 1.0) == pytest.approx(1.3689, abs=1e-4)  # V3: ×1.874 on every logit (squared)
