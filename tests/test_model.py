import math

import pytest
import torch

from dslearn.export import hf_config
from dslearn.layers import apply_rotary
from dslearn.model import CausalLM


def test_shapes_and_initial_loss(tiny_config):
    model = CausalLM(tiny_config)
    x = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    out = model(x, x)
    assert out.logits.shape == (3, 20, 256)
    # freshly initialised logits are near zero: the loss is near a uniform guess over 256 bytes
    assert abs(out.loss.item() - math.log(256)) < 0.1
    assert model(x, last_only=True).logits.shape == (3, 1, 256)


def test_parameter_count_formula(tiny_config, gqa_config):
    for cfg in (tiny_config, gqa_config):
        d, f, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
        attn = d * cfg.num_attention_heads * cfg.head_dim * 2 + d * cfg.num_key_value_heads * cfg.head_dim * 2
        per_layer = attn + 3 * d * f + 2 * d
        model = CausalLM(cfg)
        assert model.num_parameters() == L * per_layer + d + 2 * V * d
        assert model.num_parameters(non_embedding=True) == L * per_layer + d


def test_initialisation_is_seeded_not_global(tiny_config):
    torch.manual_seed(123)
    a = CausalLM(tiny_config, seed=5)
    torch.manual_seed(999)
    b = CausalLM(tiny_config, seed=5)
    c = CausalLM(tiny_config, seed=6)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    # residual-writing projections start smaller (σ/√(2L))
    std_o = a.model.layers[0].self_attn.o_proj.weight.std().item()
    std_q = a.model.layers[0].self_attn.q_proj.weight.std().item()
    assert std_o < std_q / 1.5


def test_causal(tiny_config):
    model = CausalLM(tiny_config).eval()
    x = torch.randint(0, 256, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_left_padding_changes_nothing(gqa_config):
    model = CausalLM(gqa_config).eval()
    seq = torch.randint(1, 256, (1, 12))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), seq], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 12, dtype=torch.bool)], 1)
    with torch.no_grad():
        alone = model(seq).logits
        inside = model(padded, attention_mask=mask).logits[:, 5:]
    torch.testing.assert_close(inside, alone, atol=1e-5, rtol=1e-5)


def test_rope_layouts_agree_up_to_a_permutation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 8, generator=g)
    ang = torch.arange(5.0)[None, :, None] * torch.tensor([1.0, 0.1, 0.01, 0.001])
    cos, sin = ang.cos(), ang.sin()
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved pairs → halves
    halves = apply_rotary(x[..., perm], cos, sin, interleaved=False)
    inter = apply_rotary(x, cos, sin, interleaved=True)
    torch.testing.assert_close(inter[..., perm], halves)


def test_bad_inputs(tiny_config):
    model = CausalLM(tiny_config)
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="last_only"):
        x = torch.zeros(1, 4, dtype=torch.long)
        model(x, x, last_only=True)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_matches_transformers_llama(tiny_config, kv_heads):
    """DeepSeek-LLM's architecture is LLaMA's: our state dict loads into HF's LlamaForCausalLM
    unchanged and gives the same logits (fp32, atol 1e-5)."""
    transformers = pytest.importorskip("transformers", reason="transformers is the outside reference")
    cfg = tiny_config.replace(num_key_value_heads=kv_heads)
    ours = CausalLM(cfg, seed=3).eval()
    hf_cfg = transformers.LlamaConfig.from_dict(hf_config(cfg))  # the one mapping, dslearn.export
    hf_cfg._attn_implementation = "eager"
    theirs = transformers.LlamaForCausalLM(hf_cfg).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    x = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=1e-5, rtol=1e-4)
