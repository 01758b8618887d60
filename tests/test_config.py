import json
from pathlib import Path

import pytest

from dslearn.config import (
    ACCOUNTING_ONLY,
    CHOICES,
    FP8_BACKENDS,
    MLA_IMPLS,
    REMOVED_FIELDS,
    SCORING_FUNCS,
    TOPK_METHODS,
    ConfigError,
    ModelConfig,
    check_choice,
    check_int,
    check_number,
    field_names,
    get_preset,
    preset_fields,
    preset_names,
    yarn_settings,
)


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


# --- one validation, at construction -----------------------------------------------------------------
def mla(**changes) -> ModelConfig:
    return ModelConfig(**(dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, attention_type="mla",
                                kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8) | changes))


@pytest.mark.parametrize("rope_scaling, message", [
    ({"type": "yarn", "factr": 4.0}, r"unknown rope_scaling key\(s\): 'factr' \(did you mean factor\?\)"),
    ({"type": "linear", "factor": 2.0}, r"rope_scaling\['type'\] must be 'yarn'"),
    ("yarn", "rope_scaling must be a dict"),
    ({"type": "yarn", "factor": 0.5}, r"rope_scaling\['factor'\] must be a finite number >= 1, got 0.5"),
    ({"type": "yarn", "factor": "4"}, r"rope_scaling\['factor'\] must be a finite number >= 1, got '4'"),
    ({"type": "yarn", "factor": float("inf")}, r"rope_scaling\['factor'\]"),
    ({"type": "yarn", "original_max_position_embeddings": 0}, "original_max_position_embeddings'] must be an integer"),
    ({"type": "yarn", "beta_fast": 1, "beta_slow": 32}, "beta_fast > beta_slow"),
    ({"type": "yarn", "mscale_all_dim": None}, r"rope_scaling\['mscale_all_dim'\]"),
])
def test_bad_rope_scaling_fails_when_the_config_is_made(rope_scaling, message):
    with pytest.raises(ConfigError, match=message) as e:
        mla(rope_scaling=rope_scaling)
    assert "\n" not in str(e.value)


def test_yarn_settings_fill_defaults_and_yarn_uses_them():
    from dslearn.attention import yarn

    cfg = mla(rope_scaling={"type": "yarn", "factor": 4}, max_position_embeddings=128)
    assert yarn_settings(cfg) == {"factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 32.0,
                                  "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0}
    assert yarn_settings(mla()) is None
    assert yarn.yarn_settings is yarn_settings and not hasattr(yarn, "YARN_KEYS")  # one parser, one key set
    with pytest.raises(ConfigError, match="attention_type='mla' only"):
        ModelConfig(rope_scaling={"type": "yarn", "factor": 4.0})


def test_implementation_choices_are_validated_and_declared_once():
    from dslearn.attention.mla import MLA_PATHS
    from dslearn.fp8.backend import BACKENDS
    from dslearn.moe import router

    for impl in MLA_IMPLS:
        assert mla(mla_impl=impl).mla_impl == impl
    for backend in FP8_BACKENDS:
        assert ModelConfig(linear_impl="fp8", fp8_backend=backend).fp8_backend == backend
    assert (ModelConfig().mla_impl, ModelConfig().fp8_backend) == ("naive", "auto")
    with pytest.raises(ConfigError, match=r"ModelConfig.mla_impl must be one of \('naive', 'absorbed'\), got 'fused'"):
        mla(mla_impl="fused")
    with pytest.raises(ConfigError, match="ModelConfig.fp8_backend must be one of"):
        ModelConfig(fp8_backend="cuda")
    assert BACKENDS is FP8_BACKENDS and MLA_PATHS is MLA_IMPLS
    assert router.TOPK_METHODS is TOPK_METHODS and router.SCORING_FUNCS is SCORING_FUNCS
    assert set(CHOICES) <= field_names(ModelConfig)


@pytest.mark.parametrize("field", ["rope_theta", "initializer_range", "routed_scaling_factor", "rms_norm_eps"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, True, "1"])
def test_positive_numbers_refuse_nan_inf_and_non_numbers(field, value):
    with pytest.raises(ConfigError, match=f"ModelConfig.{field} must be a finite number > 0"):
        ModelConfig(**{field: value})


@pytest.mark.parametrize("changes, message", [
    (dict(tie_word_embeddings="yes"), "tie_word_embeddings must be True or False"),
    (dict(drop_exempt_fraction=float("nan")), r"drop_exempt_fraction must be in \[0, 1\]"),
    (dict(capacity_factor=float("inf")), "capacity_factor must be > 0 or None"),
    (dict(aux_loss_alpha=float("inf")), "aux_loss_alpha must be a finite number >= 0"),
    (dict(num_nextn_predict_layers=False), "num_nextn_predict_layers must be an integer >= 0, got False"),
])
def test_other_fields_are_checked_even_in_dense_configs(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_check_helpers_share_one_message_shape():
    check_int("TrainConfig", "steps", 3, 1)
    for bad in (0, True, 2.0, "3", None):
        with pytest.raises(ConfigError, match=rf"^TrainConfig.steps must be an integer >= 1, got {bad!r}$"):
            check_int("TrainConfig", "steps", bad, 1)
    check_number("X", "lr", 1e-3, 0, above=True)
    check_number("X", "p", 1, 0, 1)
    check_number("X", "clip", None, 0, above=True, none_ok=True)
    check_number("X", "big", float("inf"), finite=False)
    with pytest.raises(ConfigError, match=r"^X.lr must be a finite number > 0, got 0$"):
        check_number("X", "lr", 0, 0, above=True)
    with pytest.raises(ConfigError, match=r"^X.p must be in \[0, 1\], got 1.5$"):
        check_number("X", "p", 1.5, 0, 1)
    with pytest.raises(ConfigError, match=r"^X.m must be a number <= 2, got nan$"):
        check_number("X", "m", float("nan"), maximum=2, finite=False)
    with pytest.raises(ConfigError, match=r"^X.k must be one of \('a', 'b'\), got 'c'$"):
        check_choice("X", "k", "c", ("a", "b"))


# --- extra is gone; old saved configs still load -----------------------------------------------------
def test_extra_is_removed_but_old_configs_with_it_still_load():
    assert "extra" not in field_names(ModelConfig) and "extra" in REMOVED_FIELDS
    old = get_preset("tiny").to_dict() | {"extra": {}}
    assert ModelConfig.from_dict(old) == get_preset("tiny")
    assert ModelConfig.from_dict(old | {"extra": {"note": "a run"}}) == get_preset("tiny")
    with pytest.raises(TypeError):
        ModelConfig(extra={})  # the field is gone; only from_dict forgives it


def test_shipped_configs_load():
    """Every config.json this repository ships still loads: our own (some written before `extra` was removed), and
    the Hugging Face folders ``dslearn.export.to_hf`` wrote (``"dslearn"`` key)."""
    from dslearn.export import config_from_hf

    root = Path(__file__).resolve().parents[1]
    shipped = sorted((root / "experiments").rglob("config.json"))
    assert shipped, "expected experiments/rl/base/config.json"
    for path in shipped:
        d = json.loads(path.read_text())
        if "dslearn" in d:
            config_from_hf(d)
            continue
        assert d.get("extra", {}) == {}, f"{path} wrote a non-empty extra"
        ModelConfig.from_dict(d)


def test_unknown_fields_suggest_the_closest_name():
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\): 'hiden_size' \(did you mean hidden_size"):
        ModelConfig.from_dict({"hiden_size": 3})
    with pytest.raises(ConfigError, match="'zzz'$"):
        get_preset("tiny").replace(zzz=1)


def test_preset_fields_leave_derived_fields_to_be_derived():
    fields = preset_fields("tiny")
    assert "head_dim" not in fields
    fields["num_attention_heads"] = 8
    assert ModelConfig(**fields).head_dim == 16 and preset_fields("tiny")["num_attention_heads"] == 4
