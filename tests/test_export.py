"""Hugging Face export/import (dslearn.export).

Round trips need only torch + safetensors: ``from_hf(to_hf(m))`` has m's state dict exactly (same keys,
torch.equal) and the same config. The outside reference is transformers: ``AutoModelForCausalLM.from_pretrained``
loads our folder with no missing or unexpected keys and gives the same logits in fp32 (max abs diff ≤ 1e-4;
observed ≈ 1e-6). Those tests are skipped, with the reason, when transformers is not installed.
"""

from __future__ import annotations

import json

import pytest
import torch

from dslearn.config import ConfigError, ModelConfig
from dslearn.export import (
    config_from_hf,
    from_hf,
    hf_config,
    load_hf_state_dict,
    mtp_from_hf_names,
    mtp_to_hf_names,
    to_hf,
)
from dslearn.model import CausalLM

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

ATOL = 1e-4
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32, "beta_slow": 1,
        "mscale": 1.0, "mscale_all_dim": 1.0}  # V3's settings with a 32-token "original" context (128 = 4 × 32)


def llama(**kw) -> ModelConfig:
    return ModelConfig(**(dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64) | kw))


def mla_moe(**kw) -> ModelConfig:
    base = dict(vocab_size=256, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                max_position_embeddings=128, attention_type="mla", q_lora_rank=24, kv_lora_rank=32,
                qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, rope_interleave=True,
                n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
                first_k_dense_replace=1, n_group=4, topk_group=2, scoring_func="sigmoid", topk_method="noaux_tc",
                norm_topk_prob=True, routed_scaling_factor=2.5)
    return ModelConfig(**(base | kw))


CONFIGS = {
    "llama-gqa": llama(),
    "llama-mha-tied": llama(num_key_value_heads=4, tie_word_embeddings=True, num_hidden_layers=3),
    # V3-like: 4 groups, top-2 groups, one dense layer first, query compression, one shared expert
    "v3-4g2-dense1-qlora-shared1": mla_moe(),
    # no dense layer, no query compression, no shared expert, YaRN, 2 groups / top-1, 2 layers
    "v3-2g1-moe0-noqlora-yarn": mla_moe(num_hidden_layers=2, first_k_dense_replace=0, q_lora_rank=None,
                                        n_shared_experts=0, n_group=2, topk_group=1, rope_scaling=YARN),
    # 2 groups of 4, top-2 groups (= no limit), 2 dense layers of 3, 2 shared, no
    # normalisation, YaRN whose mscale HF would infer differently (mscale_all_dim 0), attention biases
    "v3-nolimit-dense2-shared2-yarn-bias": mla_moe(
        first_k_dense_replace=2, n_shared_experts=2, n_group=2, topk_group=2, norm_topk_prob=False,
        routed_scaling_factor=1.0, q_lora_rank=16, attention_bias=True,
        rope_scaling=YARN | {"mscale": 0.8, "mscale_all_dim": 0.0}),
    # one group, K=3, tied embeddings, V2-style greedy selection with a sigmoid gate, 3 MoE layers
    "v3-1g-greedy-tied": mla_moe(first_k_dense_replace=0, n_group=1, topk_group=1, num_experts_per_tok=3,
                                 topk_method="greedy", tie_word_embeddings=True, q_lora_rank=None),
    # MLA without experts: a dense DeepseekV3
    "mla-dense": mla_moe(n_routed_experts=None, num_hidden_layers=2),
}


def perturbed(cfg: ModelConfig, seed: int = 0) -> CausalLM:
    """Weights far from the init (norm gains ≠ 1) and, for noaux_tc, random non-zero selection biases
    b_i large enough to change which experts are chosen."""
    model = CausalLM(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias") and cfg.topk_method == "noaux_tc":
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
    return model


def ids(cfg: ModelConfig, T: int = 40) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))


def layouts(name: str) -> list[str]:
    return ["fused", "per_expert"] if CONFIGS[name].is_moe else ["fused"]


CASES = [(n, lay) for n in CONFIGS for lay in layouts(n)]


# --- round trips (no transformers needed) ----------------------------------------------------
@pytest.mark.parametrize("name, layout", CASES)
def test_round_trip_is_exact(tmp_path, name, layout):
    cfg = CONFIGS[name]
    model = perturbed(cfg)
    back = from_hf(to_hf(model, tmp_path / name, expert_layout=layout))
    assert back.config == cfg
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with torch.no_grad():
        assert torch.equal(model(ids(cfg)).logits, back.eval()(ids(cfg)).logits)


def test_files_follow_the_name_table(tmp_path):
    cfg = CONFIGS["v3-2g1-moe0-noqlora-yarn"]
    fused = load_hf_state_dict(to_hf(perturbed(cfg), tmp_path / "f"))
    per = load_hf_state_dict(to_hf(perturbed(cfg), tmp_path / "p", expert_layout="per_expert"))
    assert fused["model.layers.0.mlp.experts.gate_up_proj"].shape == (8, 32, 48)  # (N_r, 2I, d)
    assert per["model.layers.0.mlp.experts.7.down_proj.weight"].shape == (48, 16)  # (d, I)
    assert fused["model.layers.1.mlp.shared_experts.up_proj.weight"].shape == (0, 48)  # N_s = 0: width 0
    d = json.loads((tmp_path / "f" / "config.json").read_text())
    assert d["head_dim"] == 8 and d["num_key_value_heads"] == 4  # HF's head_dim is d_h^R
    assert d["rope_parameters"]["rope_type"] == "yarn" and d["n_group"] == 2 and d["topk_group"] == 1
    tied = load_hf_state_dict(to_hf(perturbed(CONFIGS["llama-mha-tied"]), tmp_path / "t"))
    assert "lm_head.weight" not in tied


def test_config_without_our_key_computes_the_same(tmp_path):
    """Derived from HF's fields alone (anyone's config.json), the config may differ in training-only fields
    but builds a model that computes the same logits from the same weights."""
    for name, cfg in CONFIGS.items():
        d = {k: v for k, v in hf_config(cfg).items() if k != "dslearn"}
        derived = config_from_hf(d)
        assert {k: v for k, v in hf_config(derived).items() if k != "dslearn"} == d, name
        model = perturbed(cfg)
        other = CausalLM(derived).eval()
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(other(ids(cfg)).logits, model(ids(cfg)).logits, atol=0, rtol=0)


def test_deepseek_release_style_config_is_read():
    """DeepSeek's config.json (transformers < 5): rope_theta + rope_scaling with "type", scoring_func/topk_method."""
    d = dict(model_type="deepseek_v3", vocab_size=256, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, q_lora_rank=24,
             kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8,
             n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=16, first_k_dense_replace=1, n_group=4,
             topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True, scoring_func="sigmoid",
             topk_method="noaux_tc", num_nextn_predict_layers=1, rms_norm_eps=1e-6, rope_theta=10000,
             rope_scaling={"type": "yarn", "factor": 4, "original_max_position_embeddings": 32, "beta_fast": 32,
                           "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})
    cfg = config_from_hf(d)
    assert cfg.replace(num_nextn_predict_layers=0) == mla_moe(rope_scaling=YARN | {"factor": 4.0, "beta_fast": 32.0,
                                                                                   "beta_slow": 1.0})
    assert cfg.num_nextn_predict_layers == 1 and cfg.head_dim == 12  # ours: d_model / n_h


def test_edited_config_json_is_caught():
    d = hf_config(CONFIGS["v3-4g2-dense1-qlora-shared1"])
    d["n_group"] = 2
    with pytest.raises(ConfigError, match="config.json field n_group=2 disagrees"):
        config_from_hf(d)


@pytest.mark.parametrize("config, message", [
    (lambda: mla_moe(scoring_func="softmax", topk_method="group_limited_greedy"), "scoring_func='softmax'"),
    (lambda: mla_moe(topk_method="group_limited_greedy"), "topk_method='group_limited_greedy' with topk_group=2"),
    (lambda: mla_moe(n_group=8, topk_group=4), "fewer than 2 per group"),
    (lambda: llama(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16), "n_routed_experts: MoE"),
    (lambda: llama(rope_interleave=True), "rope_interleave=True with attention_type='mha'"),
    (lambda: llama(linear_impl="fp8"), "linear_impl='fp8'"),
])
def test_unsupported_configs_are_refused(tmp_path, config, message):
    cfg = config()
    with pytest.raises(ConfigError, match=message):
        hf_config(cfg)
    with pytest.raises(ConfigError, match=message):
        to_hf(CausalLM(cfg) if cfg.linear_impl == "torch" else _fake(cfg), tmp_path)
    assert not (tmp_path / "config.json").exists()


def _fake(cfg):
    class Fake:  # to_hf reads the config first: no FP8 model needed to check the refusal
        config = cfg
    return Fake()


def test_bias_ignored_by_our_router_is_refused(tmp_path):
    cfg = CONFIGS["v3-1g-greedy-tied"]
    model = perturbed(cfg)
    model.model.layers[1].mlp.gate.e_score_correction_bias.fill_(0.3)
    with pytest.raises(ConfigError, match=r"model.layers.1.mlp.gate.e_score_correction_bias is non-zero"):
        to_hf(model, tmp_path)


def test_mtp_depth_without_mtp_weights_is_refused(tmp_path):
    cfg = CONFIGS["v3-4g2-dense1-qlora-shared1"]

    class NoMTP:  # a config promising D = 1 MTP module, weights without one
        config = cfg.replace(num_nextn_predict_layers=1)
        state_dict = CausalLM(cfg).state_dict

    with pytest.raises(ConfigError, match="num_nextn_predict_layers=1 but the model holds 0 MTP module"):
        to_hf(NoMTP(), tmp_path)


def test_sharded_folders_are_read(tmp_path):
    from safetensors.torch import save_file

    model = perturbed(CONFIGS["v3-4g2-dense1-qlora-shared1"])
    path = to_hf(model, tmp_path)
    state = load_hf_state_dict(path)
    (path / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file, names in shards.items():
        save_file({k: state[k] for k in names}, str(path / file))
    weight_map = {k: file for file, names in shards.items() for k in names}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    back = from_hf(path).state_dict()
    assert all(torch.equal(v, back[k]) for k, v in model.state_dict().items())


def test_import_refusals():
    with pytest.raises(ConfigError, match="model_type='mixtral'"):
        config_from_hf({**{k: v for k, v in hf_config(llama()).items() if k != "dslearn"}, "model_type": "mixtral"})
    d = {k: v for k, v in hf_config(CONFIGS["v3-4g2-dense1-qlora-shared1"]).items() if k != "dslearn"}
    with pytest.raises(ConfigError, match="scoring_func='softmax'"):
        config_from_hf(d | {"scoring_func": "softmax"})
    with pytest.raises(ConfigError, match="quantization_config"):
        config_from_hf(d | {"quantization_config": {"quant_method": "fp8"}})


# --- MTP: the rename rule, on a plain state dict --------------------------------------------
def test_mtp_rename_rule():
    t = torch.zeros(1)
    ours = {"mtp.0.enorm.weight": t, "mtp.0.hnorm.weight": t, "mtp.0.eh_proj.weight": t,
            "mtp.0.shared_head.norm.weight": t, "mtp.0.shared_head.head.weight": t,
            "mtp.0.block.self_attn.kv_b_proj.weight": t, "mtp.1.block.mlp.experts.gate_up_proj": t,
            "mtp.1.block.input_layernorm.weight": t, "model.layers.2.mlp.gate.weight": t, "lm_head.weight": t}
    hf = mtp_to_hf_names(ours, num_hidden_layers=3)
    assert sorted(hf) == sorted([
        "model.layers.3.enorm.weight", "model.layers.3.hnorm.weight", "model.layers.3.eh_proj.weight",
        "model.layers.3.shared_head.norm.weight", "model.layers.3.shared_head.head.weight",
        "model.layers.3.self_attn.kv_b_proj.weight", "model.layers.4.mlp.experts.gate_up_proj",
        "model.layers.4.input_layernorm.weight", "model.layers.2.mlp.gate.weight", "lm_head.weight"])
    assert mtp_from_hf_names(hf, num_hidden_layers=3) == ours
    with pytest.raises(KeyError, match="decoder-block part outside"):
        mtp_to_hf_names({"mtp.0.self_attn.o_proj.weight": t}, num_hidden_layers=3)


# --- transformers as the outside reference ---------------------------------------------------
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # HF's width-0 shared experts (N_s = 0)
@pytest.mark.parametrize("name, layout", CASES)
def test_transformers_loads_the_folder_and_matches(tmp_path, name, layout):
    transformers = pytest.importorskip("transformers", reason="transformers is the outside reference "
                                                              "(pip install 'dslearn[dev]')")
    cfg = CONFIGS[name]
    model = perturbed(cfg)
    path = to_hf(model, tmp_path / name, expert_layout=layout)
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert type(theirs).__name__ == hf_config(cfg)["architectures"][0]
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    theirs.eval()
    x = ids(cfg, T=min(100, cfg.max_position_embeddings))  # beyond YaRN's 32-token "original" context
    with torch.no_grad():
        expected, got = theirs(x).logits, model(x).logits
    assert expected.abs().max() > 0.3
    diff = (got - expected).abs().max().item()
    assert diff <= ATOL, diff
    assert config_from_hf(theirs.config.to_dict()) == cfg  # our config survives transformers' config object
    if cfg.is_moe and cfg.topk_method == "noaux_tc":  # the biases b_i really steer HF's selection too
        for buf_name, buf in theirs.named_buffers():
            if buf_name.endswith("e_score_correction_bias"):
                buf.zero_()
        with torch.no_grad():
            assert (theirs(x).logits - expected).abs().max() > 1e-2
