import pytest

from dslearn.config import ACCOUNTING_ONLY, ConfigError, ModelConfig, get_preset, preset_names


def test_presets_are_valid_and_fresh():
    for name in preset_names():
        cfg = get_preset(name)
        cfg.validate()
    a, b = get_preset("tiny"), get_preset("tiny")
    a.hidden_size = 999
    assert b.hidden_size == 128, "presets must be returned as fresh copies"
    assert ACCOUNTING_ONLY < set(preset_names())


def test_paper_presets_carry_the_reported_shapes():
    v3 = get_preset("deepseek-v3")
    assert (v3.num_hidden_layers, v3.hidden_size, v3.num_attention_heads) == (61, 7168, 128)
    assert (v3.kv_lora_rank, v3.qk_rope_head_dim, v3.q_lora_rank) == (512, 64, 1536)
    assert (v3.n_routed_experts, v3.n_shared_experts, v3.num_experts_per_tok) == (256, 1, 8)
    assert (v3.n_group, v3.topk_group, v3.first_k_dense_replace) == (8, 4, 3)
    assert v3.scoring_func == "sigmoid" and v3.routed_scaling_factor == 2.5
    v2 = get_preset("deepseek-v2")
    assert (v2.n_routed_experts, v2.n_shared_experts, v2.num_experts_per_tok, v2.topk_group) == (160, 2, 6, 3)
    llm67 = get_preset("deepseek-llm-67b")
    assert (llm67.num_hidden_layers, llm67.hidden_size, llm67.num_key_value_heads) == (95, 8192, 8)
    llm7 = get_preset("deepseek-llm-7b")
    assert (llm7.num_hidden_layers, llm7.hidden_size, llm7.head_dim) == (30, 4096, 128)


def test_derived_fields():
    cfg = ModelConfig(hidden_size=96, num_attention_heads=6)
    assert cfg.head_dim == 16 and cfg.num_key_value_heads == 6
    assert not cfg.is_moe and not cfg.is_moe_layer(0)
    moe = get_preset("deepseek-v3")
    assert not moe.is_moe_layer(2) and moe.is_moe_layer(3)


@pytest.mark.parametrize("changes, field", [
    (dict(hidden_size=0), "hidden_size"),
    (dict(num_hidden_layers=-1), "num_hidden_layers"),
    (dict(vocab_size=2.5), "vocab_size"),
    (dict(max_position_embeddings=True), "max_position_embeddings"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(head_dim=7), "head_dim"),
    (dict(attention_type="linear"), "attention_type"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(initializer_range=-1.0), "initializer_range"),
    (dict(linear_impl="int4"), "linear_impl"),
    (dict(scoring_func="relu"), "scoring_func"),
    (dict(attention_type="mla", kv_lora_rank=None, qk_rope_head_dim=8, v_head_dim=8), "kv_lora_rank"),
    (dict(attention_type="mla", kv_lora_rank=16, qk_rope_head_dim=7, v_head_dim=8, qk_nope_head_dim=8),
     "qk_rope_head_dim"),
    (dict(n_routed_experts=8, num_experts_per_tok=9, moe_intermediate_size=8), "num_experts_per_tok"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, n_group=3), "n_group"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, n_group=2, topk_group=3),
     "topk_group"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=0), "moe_intermediate_size"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, first_k_dense_replace=9),
     "first_k_dense_replace"),
])
def test_bad_fields_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**changes)


def test_indivisible_heads_explain_the_fix():
    with pytest.raises(ConfigError, match="hidden_size=100 is not divisible by num_attention_heads=3"):
        ModelConfig(hidden_size=100, num_attention_heads=3)


def test_unknown_fields_and_presets():
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        get_preset("tiny").replace(hiden_size=3)
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"n_embd": 3})
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_round_trip_and_differences():
    cfg = ModelConfig.from_preset("small", num_hidden_layers=3)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.differences(again) == {}
    assert cfg.differences(get_preset("small")) == {"num_hidden_layers": (3, 6)}
    assert '"hidden_size": 256' in cfg.to_json()
