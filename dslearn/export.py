"""Export to and import from Hugging Face: ``config.json`` + ``model.safetensors``.

Why export? A model trained in this course should leave the course: load it with
``transformers.AutoModelForCausalLM.from_pretrained(path)``, generate with it, compare it with other
models, and check once more, against an implementation written by other people, that what we built
is DeepSeek's architecture. Import is the way back: ``from_hf(path)`` needs only torch and
safetensors, never transformers.

Which Hugging Face architecture:

    our model                                 Hugging Face class
    ----------------------------------------  ----------------------------------------
    attention_type="mha", dense (MHA/GQA/MQA)  LlamaForCausalLM      (DeepSeek-LLM is LLaMA's architecture)
    attention_type="mla", dense or MoE         DeepseekV3ForCausalLM (V2/V3: MLA + DeepSeekMoE)

Parameter names already follow Hugging Face, so export is a rename table, not a rewrite. Every
name is the same in our state dict, in transformers ≥ 5 (installed) and in DeepSeek's release
(``model.embed_tokens``, ``model.layers.{i}.input_layernorm`` / ``post_attention_layernorm``,
``.self_attn.{q_proj | q_a_proj, q_a_layernorm, q_b_proj; kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj,
o_proj}`` or Llama's ``q/k/v/o_proj``, dense ``.mlp.{gate,up,down}_proj``, ``.mlp.gate.weight``,
``.mlp.gate.e_score_correction_bias``, ``.mlp.shared_experts.*``, ``model.norm``, ``lm_head``) except:

    ours                              transformers ≥ 5              DeepSeek's release, transformers < 5
    --------------------------------  ----------------------------  -------------------------------------
    .mlp.experts.gate_up_proj         same, fused (N_r, 2I, d)      .mlp.experts.{j}.gate_proj.weight (I, d)
      rows [gate | up]                                              + .mlp.experts.{j}.up_proj.weight (I, d)
    .mlp.experts.down_proj            same, fused (N_r, d, I)       .mlp.experts.{j}.down_proj.weight (d, I)
    no shared experts (N_s = 0)       .mlp.shared_experts.* of      (V3 always has N_s = 1)
                                        width 0 (they add 0)
    lm_head.weight, tied              not stored (HF re-ties it)    not stored
    mtp.{k}.block.<X>                 model.layers.{L+k}.<X>        model.layers.{L+k}.<X>
    mtp.{k}.<Y> (enorm, hnorm,        model.layers.{L+k}.<Y>        model.layers.{L+k}.<Y>
      eh_proj, shared_head.norm)        (not loaded: see MTP)
    (shared: model.embed_tokens,      model.layers.{L+k}.embed_tokens, .shared_head.head: copies written
      lm_head)                          as DeepSeek's release stores them; from_hf checks and drops them

``to_hf(model, path, expert_layout="fused")`` writes the installed transformers' fused experts;
``expert_layout="per_expert"`` writes DeepSeek's release layout, which transformers ≥ 5 fuses on load.
``from_hf`` reads either. The config.json targets transformers ≥ 5 (``rope_parameters``).

**MTP.** DeepSeek's release stores the D MTP modules (V3 §2.2) as extra decoder layers after the
main L: ``model.layers.{L+k}`` holds module k's ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm``,
``shared_head.head`` and a whole decoder block. transformers' ``DeepseekV3ForCausalLM`` does not
build them and skips those keys on load (its ignore list names layer 61, V3's; for other L it logs them
as unexpected). ``mtp_to_hf_names`` / ``mtp_from_hf_names`` are the one rename rule between our prefix
``mtp.{k}.`` and ``model.layers.{L+k}.``: a key ``mtp.{k}.block.<X>`` (the decoder block)
becomes ``model.layers.{L+k}.<X>``, any other ``mtp.{k}.<Y>`` becomes ``model.layers.{L+k}.<Y>``;
back again, ``<X>`` that starts with a decoder-block part (``self_attn.``, ``mlp.``,
``input_layernorm.``, ``post_attention_layernorm.``) returns under ``block.``.

**Config.** ``hf_config`` is the one mapping from ``ModelConfig`` to a Hugging Face config dict, and
``config_from_hf`` its inverse. Field names agree except where the meaning differs:

    ModelConfig                            HF DeepseekV3Config
    -------------------------------------  -----------------------------------------------------------
    head_dim (d_model / n_h for MLA)       head_dim = qk_rope_head_dim (the rotary width, HF's meaning)
    num_key_value_heads (unused by MLA)    num_key_value_heads = num_attention_heads
    rope_theta, rope_scaling (YaRN)        rope_parameters {"rope_type": "default"|"yarn", "rope_theta", …,
                                             "attention_factor"} (the transformers ≥ 5 format; the legacy
                                             rope_theta + rope_scaling pair is read too)
    n_routed_experts=None (dense MLA)      first_k_dense_replace = num_hidden_layers, n_routed_experts = 0
    greedy selection (no group limit)      n_group = topk_group = 1
    num_nextn_predict_layers (D)           num_nextn_predict_layers (HF's alias: num_mtp_layers)

Fields that only training reads (the balance-loss weights α1, α2, α3, α, the bias step γ,
``capacity_factor`` token dropping, ``moe_impl``, ``mla_impl``, …) have no HF field: the whole
ModelConfig travels in the extra key ``"dslearn"``, so ``config_from_hf(hf_config(c)) == c`` exactly,
and ``config_from_hf`` checks that every HF field still agrees with it. An HF model never drops tokens:
export a model trained with ``capacity_factor`` and transformers runs it as our ``eval()`` does.

**Refused** (ConfigError naming the field), because transformers would compute something else:

- ``scoring_func="softmax"`` — DeepseekV3's router is sigmoid only (V2's softmax gate has no V3 form);
- ``topk_method="group_limited_greedy"`` with ``topk_group < n_group`` — V2 scores a group by its best
  expert, DeepseekV3 by the sum of its top two;
- groups of one expert (``n_routed_experts / n_group < 2``) with a group limit — HF takes a top-2 inside
  every group;
- MoE with ``attention_type="mha"`` — DeepseekV3's attention is MLA only;
- ``rope_interleave=True`` with ``attention_type="mha"`` — Llama rotates halves;
- ``linear_impl="fp8"`` — HF runs these projections in full precision (rebuild with "torch" to export);
- at ``to_hf`` time: a non-zero ``e_score_correction_bias`` when ``topk_method`` is not "noaux_tc" (our
  router ignores it there, HF's always adds it).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .attention.yarn import yarn_get_mscale
from .config import ConfigError, ModelConfig, yarn_settings
from .model import CausalLM
from .moe.experts import fuse_expert_weights, split_expert_weights

MTP_PREFIX = "mtp."  # our MTP modules: CausalLM.mtp[k] with enorm, hnorm, eh_proj, block, …
BLOCK_PARTS = ("self_attn.", "mlp.", "input_layernorm.", "post_attention_layernorm.")  # a decoder block's children
EXPERT_LAYOUTS = ("fused", "per_expert")
_NOT_COMPARED = {"dslearn", "torch_dtype", "dtype", "architectures"}  # config.json keys config_from_hf may ignore


# ---------------------------------------------------------------------------------------------
# ModelConfig → HF config dict
def hf_config(config: ModelConfig) -> dict:
    """The Hugging Face config dict (``LlamaConfig`` or ``DeepseekV3Config`` fields) for ``config``.

    Raises ConfigError naming the field when transformers cannot compute what our model computes."""
    c = config
    if c.linear_impl != "torch":
        raise ConfigError(f"linear_impl={c.linear_impl!r}: transformers runs the projections in full precision; "
                          "rebuild the model with linear_impl='torch' (same weights) to export it")
    common = dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        initializer_range=c.initializer_range, tie_word_embeddings=c.tie_word_embeddings,
        attention_bias=c.attention_bias, attention_dropout=0.0, hidden_act="silu", use_cache=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, torch_dtype="float32",
    )
    if c.attention_type == "mha":
        d = _llama_fields(c)
    elif c.attention_type == "mla":
        d = _deepseek_v3_fields(c)
    else:
        raise ConfigError(f"attention_type={c.attention_type!r} has no Hugging Face export")
    return {**common, **d, "dslearn": c.to_dict()}


def _llama_fields(c: ModelConfig) -> dict:
    if c.is_moe:
        raise ConfigError("n_routed_experts: MoE layers export as DeepseekV3, whose attention is MLA; "
                          "attention_type='mha' with MoE has no Hugging Face equivalent")
    if c.rope_interleave:
        raise ConfigError("rope_interleave=True with attention_type='mha': Llama rotates halves (x_i, x_{i+d/2}), "
                          "not interleaved pairs")
    if c.rope_scaling is not None:
        raise ConfigError("rope_scaling: YaRN is implemented for attention_type='mla' only")
    return dict(model_type="llama", architectures=["LlamaForCausalLM"],
                num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, mlp_bias=False, pretraining_tp=1,
                rope_parameters={"rope_type": "default", "rope_theta": float(c.rope_theta)})


def _deepseek_v3_fields(c: ModelConfig) -> dict:
    # any rms_norm_eps exports: our latent norms keep 1e-6 like HF's (attention/mla.py, LATENT_NORM_EPS)
    d = dict(model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
             num_key_value_heads=c.num_attention_heads,  # MLA: every head has its own K and V
             q_lora_rank=c.q_lora_rank, kv_lora_rank=c.kv_lora_rank, qk_nope_head_dim=c.qk_nope_head_dim,
             qk_rope_head_dim=c.qk_rope_head_dim, v_head_dim=c.v_head_dim,
             head_dim=c.qk_rope_head_dim,  # HF's head_dim is the rotary width d_h^R (it overwrites any other value)
             rope_interleave=c.rope_interleave, rope_parameters=_rope_parameters(c),
             num_nextn_predict_layers=c.num_nextn_predict_layers, pretraining_tp=1)
    if not c.is_moe:  # dense MLA: every layer is one of the "first k dense" ones
        d.update(n_routed_experts=0, n_shared_experts=0, num_experts_per_tok=0, moe_intermediate_size=0,
                 first_k_dense_replace=c.num_hidden_layers, n_group=1, topk_group=1,
                 routed_scaling_factor=1.0, norm_topk_prob=False)
        return d
    if c.scoring_func != "sigmoid":
        raise ConfigError(f"scoring_func={c.scoring_func!r}: DeepseekV3's router is sigmoid only "
                          "(V2's softmax gate has no DeepseekV3 form)")
    grouped = c.topk_method != "greedy" and c.topk_group < c.n_group
    if grouped and c.topk_method == "group_limited_greedy":
        raise ConfigError(f"topk_method='group_limited_greedy' with topk_group={c.topk_group} < n_group={c.n_group}: "
                          "V2 scores a group by its best expert, DeepseekV3 by the sum of its top two")
    n_group, topk_group = (c.n_group, c.topk_group) if grouped else (1, 1)  # no group limit ≡ one group
    if c.n_routed_experts // n_group < 2:
        raise ConfigError(f"n_group={n_group}: {c.n_routed_experts} routed experts in {n_group} groups leave fewer "
                          "than 2 per group, and DeepseekV3's router takes the top 2 of every group")
    d.update(n_routed_experts=c.n_routed_experts, n_shared_experts=c.n_shared_experts,
             num_experts_per_tok=c.num_experts_per_tok, moe_intermediate_size=c.moe_intermediate_size,
             first_k_dense_replace=c.first_k_dense_replace, n_group=n_group, topk_group=topk_group,
             routed_scaling_factor=float(c.routed_scaling_factor), norm_topk_prob=c.norm_topk_prob,
             scoring_func="sigmoid", topk_method="noaux_tc")  # the last two: DeepSeek's release keys, read by its code
    return d


def _rope_parameters(c: ModelConfig) -> dict:
    """HF's rope_parameters; YaRN with every value explicit, including the cos/sin factor
    ``attention_factor`` = mscale(s, mscale) / mscale(s, mscale_all_dim), so HF never infers it differently."""
    y = yarn_settings(c)
    if y is None:
        return {"rope_type": "default", "rope_theta": float(c.rope_theta)}
    return {"rope_type": "yarn", "rope_theta": float(c.rope_theta), **y,
            "attention_factor": yarn_get_mscale(y["factor"], y["mscale"]) / yarn_get_mscale(y["factor"],
                                                                                           y["mscale_all_dim"])}


# ---------------------------------------------------------------------------------------------
# HF config dict → ModelConfig
def config_from_hf(d: dict) -> ModelConfig:
    """The ModelConfig for a Hugging Face config dict (a config.json we wrote, or anyone's Llama /
    DeepseekV3 config). With our ``"dslearn"`` key the exact ModelConfig comes back, after checking that
    every HF field still agrees with it; without it the fields are derived from HF's."""
    if "dslearn" in d:
        cfg = ModelConfig.from_dict(d["dslearn"])  # (drops fields older versions wrote, e.g. "extra")
        for key, value in hf_config(cfg).items():
            if key in d and key not in _NOT_COMPARED and not _same(d[key], value):
                raise ConfigError(f"config.json field {key}={d[key]!r} disagrees with its dslearn config, "
                                  f"which exports {key}={value!r}")
        return cfg
    model_type = d.get("model_type")
    if d.get("quantization_config"):
        raise ConfigError("quantization_config: a quantized checkpoint (e.g. DeepSeek's FP8 release) must be "
                          "dequantized before import")
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act={d['hidden_act']!r}: our SwiGLU uses silu")
    common = dict(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                  intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
                  num_attention_heads=d["num_attention_heads"],
                  max_position_embeddings=d.get("max_position_embeddings", 2048),
                  rms_norm_eps=d.get("rms_norm_eps", 1e-6), initializer_range=d.get("initializer_range", 0.02),
                  tie_word_embeddings=d.get("tie_word_embeddings", False),
                  attention_bias=d.get("attention_bias", False))
    theta, scaling = _read_rope(d)
    if model_type == "llama":
        if d.get("mlp_bias"):
            raise ConfigError("mlp_bias=True: our SwiGLU has no biases")
        if scaling is not None:
            raise ConfigError(f"rope_parameters: rope_type={scaling.get('rope_type')!r} is not supported for Llama")
        return ModelConfig(**common, num_key_value_heads=d.get("num_key_value_heads"), head_dim=d.get("head_dim"),
                           rope_theta=theta)
    if model_type != "deepseek_v3":
        raise ConfigError(f"model_type={model_type!r}: only 'llama' and 'deepseek_v3' can be imported")
    L = common["num_hidden_layers"]
    heads, hidden = common["num_attention_heads"], common["hidden_size"]
    kw = dict(common, attention_type="mla", q_lora_rank=d.get("q_lora_rank"), kv_lora_rank=d["kv_lora_rank"],
              qk_nope_head_dim=d["qk_nope_head_dim"], qk_rope_head_dim=d["qk_rope_head_dim"],
              v_head_dim=d["v_head_dim"], rope_interleave=d.get("rope_interleave", True), rope_theta=theta,
              head_dim=None if hidden % heads == 0 else d["qk_nope_head_dim"],  # ours: d_model/n_h, not HF's d_h^R
              num_nextn_predict_layers=d.get("num_nextn_predict_layers", d.get("num_mtp_layers", 0)))
    if scaling is not None:
        kw["rope_scaling"] = scaling
    first_dense = d.get("first_k_dense_replace") or 0
    if d.get("n_routed_experts") and first_dense < L:
        for key, want in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc")):
            if d.get(key, want) != want:
                raise ConfigError(f"{key}={d[key]!r}: DeepseekV3 computes {key}={want!r}")
        kw.update(n_routed_experts=d["n_routed_experts"], n_shared_experts=d.get("n_shared_experts", 0),
                  num_experts_per_tok=d["num_experts_per_tok"], moe_intermediate_size=d["moe_intermediate_size"],
                  first_k_dense_replace=first_dense, n_group=d.get("n_group") or 1, topk_group=d.get("topk_group") or 1,
                  routed_scaling_factor=d.get("routed_scaling_factor", 1.0),
                  norm_topk_prob=d.get("norm_topk_prob", False), scoring_func="sigmoid", topk_method="noaux_tc")
    return ModelConfig(**kw)


def _read_rope(d: dict) -> tuple[float, dict | None]:
    """(rope_theta, our rope_scaling or None) from rope_parameters (transformers ≥ 5) or rope_theta +
    rope_scaling (DeepSeek's release, transformers < 5)."""
    rp = d.get("rope_parameters")
    if rp is None:
        rp = dict(d.get("rope_scaling") or {})
        rp.setdefault("rope_type", rp.pop("type", "default"))
        rp["rope_theta"] = d.get("rope_theta", 10000.0)
    kind = rp.get("rope_type", rp.get("type", "default"))
    theta = float(rp.get("rope_theta", d.get("rope_theta", 10000.0)))
    if kind == "default":
        return theta, None
    if kind != "yarn":
        raise ConfigError(f"rope_parameters: rope_type={kind!r} is not supported (only 'default' and 'yarn')")
    if rp.get("truncate", True) is False:
        raise ConfigError("rope_parameters: truncate=False is not supported (our YaRN rounds the ramp's ends)")
    if rp.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("rope_parameters: partial_rotary_factor must be 1.0")
    orig = rp["original_max_position_embeddings"]
    factor = rp.get("factor") or d["max_position_embeddings"] / orig
    mscale, mscale_all_dim = rp.get("mscale"), rp.get("mscale_all_dim")
    # HF's cos/sin factor: explicit, or inferred (the mscale ratio only when both are set and non-zero)
    hf_af = rp.get("attention_factor")
    if hf_af is None:
        hf_af = (yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
                 if mscale and mscale_all_dim else yarn_get_mscale(factor))
    ours = {"type": "yarn", "factor": float(factor), "original_max_position_embeddings": orig,
            "beta_fast": float(rp.get("beta_fast") or 32), "beta_slow": float(rp.get("beta_slow") or 1),
            "mscale": float(1.0 if mscale is None else mscale),
            "mscale_all_dim": float(mscale_all_dim or 0.0)}
    our_af = yarn_get_mscale(ours["factor"], ours["mscale"]) / yarn_get_mscale(ours["factor"], ours["mscale_all_dim"])
    if not math.isclose(our_af, hf_af, rel_tol=1e-6):
        raise ConfigError(f"rope_parameters: attention_factor={hf_af} is not mscale(s, mscale)/mscale(s, "
                          f"mscale_all_dim)={our_af}, the only form our YaRN computes")
    return theta, ours


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


# ---------------------------------------------------------------------------------------------
# MTP: one rename rule between mtp.{k}. and model.layers.{L+k}.
def mtp_to_hf_names(state: dict, num_hidden_layers: int, prefix: str = MTP_PREFIX) -> dict:
    """``{prefix}{k}.block.<X>`` → ``model.layers.{L+k}.<X>``; other ``{prefix}{k}.<Y>`` → ``model.layers.{L+k}.<Y>``.
    Keys outside ``prefix`` pass through unchanged."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.(block\.)?(.+)$")
    out = {}
    for key, value in state.items():
        m = pattern.match(key)
        if m:
            if not m.group(2) and m.group(3).startswith(BLOCK_PARTS):
                raise KeyError(f"{key}: a decoder-block part outside {prefix}{m.group(1)}.block. would not come back")
            key = f"model.layers.{num_hidden_layers + int(m.group(1))}.{m.group(3)}"
        out[key] = value
    return out


def mtp_from_hf_names(state: dict, num_hidden_layers: int, prefix: str = MTP_PREFIX) -> dict:
    """The inverse of ``mtp_to_hf_names``: ``model.layers.{j}.<X>`` with j ≥ L → ``{prefix}{j-L}.block.<X>``
    when <X> starts with a decoder-block part, else ``{prefix}{j-L}.<X>``."""
    pattern = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
    out = {}
    for key, value in state.items():
        m = pattern.match(key)
        if m and int(m.group(1)) >= num_hidden_layers:
            rest = m.group(2)
            block = "block." if rest.startswith(BLOCK_PARTS) else ""
            key = f"{prefix}{int(m.group(1)) - num_hidden_layers}.{block}{rest}"
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# weights
def to_hf(model: CausalLM, path, expert_layout: str = "fused") -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``transformers.AutoModelForCausalLM``; returns the folder.

    expert_layout: "fused" (the installed transformers' ``experts.gate_up_proj``/``down_proj``) or
    "per_expert" (DeepSeek's release: ``experts.{j}.{gate,up,down}_proj.weight``)."""
    if expert_layout not in EXPERT_LAYOUTS:
        raise ValueError(f"expert_layout must be one of {EXPERT_LAYOUTS}, got {expert_layout!r}")
    c = model.config
    d = hf_config(c)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    d["torch_dtype"] = str(state["lm_head.weight"].dtype).removeprefix("torch.")
    # 1. checks only the weights can fail
    if c.is_moe and c.topk_method != "noaux_tc":
        for k, v in state.items():
            if k.endswith("gate.e_score_correction_bias") and v.any():
                raise ConfigError(f"{k} is non-zero, but topk_method={c.topk_method!r} ignores it while DeepseekV3's "
                                  "router always adds it; zero it (it is unused) or use topk_method='noaux_tc'")
    n_mtp = len({k[len(MTP_PREFIX):].split(".")[0] for k in state if k.startswith(MTP_PREFIX)})
    if n_mtp != c.num_nextn_predict_layers:
        raise ConfigError(f"num_nextn_predict_layers={c.num_nextn_predict_layers} but the model holds {n_mtp} MTP "
                          f"module(s) under {MTP_PREFIX!r}; the file would promise weights it does not have")
    # 2. renames and layouts
    head = state["lm_head.weight"]
    if c.tie_word_embeddings:
        del state["lm_head.weight"]  # one tensor on disk; HF ties it back to model.embed_tokens.weight
    state = mtp_to_hf_names(state, c.num_hidden_layers)
    L, D = c.num_hidden_layers, c.num_nextn_predict_layers
    for j in range(L, L + D):  # DeepSeek's release stores each MTP layer's shared embedding and head as copies
        state[f"model.layers.{j}.embed_tokens.weight"] = state["model.embed_tokens.weight"]
        state[f"model.layers.{j}.shared_head.head.weight"] = head
    for i in range(L + D):  # the main layers, then the MTP blocks (layer L+k−1 is MoE in MoE configs, as in V3)
        p = f"model.layers.{i}.mlp."
        if not c.is_moe_layer(i):
            continue
        if not c.n_shared_experts:  # HF always builds shared experts: give it width-0 ones (they add 0)
            for name, shape in (("gate_proj", (0, c.hidden_size)), ("up_proj", (0, c.hidden_size)),
                                ("down_proj", (c.hidden_size, 0))):
                state[f"{p}shared_experts.{name}.weight"] = torch.zeros(shape, dtype=state[f"{p}gate.weight"].dtype)
        if expert_layout == "per_expert":
            state = split_expert_weights(state, prefix=p)
    # 3. write
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    return out


def load_hf_state_dict(path) -> dict:
    """Every tensor of ``model.safetensors`` (or of the shards listed in ``model.safetensors.index.json``)."""
    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        return state
    file = folder / "model.safetensors"
    if not file.exists():
        raise FileNotFoundError(f"{file} not found (from_hf reads safetensors only)")
    return load_file(str(file))


def from_hf(path, seed: int = 0) -> CausalLM:
    """The CausalLM stored in a Hugging Face folder (config.json + safetensors); needs no transformers.
    ``from_hf(to_hf(m, p))`` has m's state dict exactly. Missing or unexpected tensors raise KeyError."""
    folder = Path(path)
    config = config_from_hf(json.loads((folder / "config.json").read_text()))
    state = mtp_from_hf_names(fuse_expert_weights(load_hf_state_dict(folder)), config.num_hidden_layers)
    if not config.n_shared_experts or not config.is_moe:  # drop HF's width-0 shared experts
        state = {k: v for k, v in state.items() if not (".shared_experts." in k and v.numel() == 0)}
    for k in range(config.num_nextn_predict_layers):  # DeepSeek's per-MTP-layer copies of the shared tensors
        for copy, main in ((f"{MTP_PREFIX}{k}.embed_tokens.weight", "model.embed_tokens.weight"),
                           (f"{MTP_PREFIX}{k}.shared_head.head.weight",
                            "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight")):
            if copy in state:
                if main in state and not torch.equal(state[copy], state[main]):
                    raise ValueError(f"{folder}: MTP layer {config.num_hidden_layers + k} stores its own "
                                     f"{copy.split('.', 2)[2]}, different from {main}; dslearn's MTP shares one tensor")
                del state[copy]
    model = CausalLM(config, seed=seed)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise KeyError(f"{folder}: missing tensors {missing[:8]}, unexpected tensors {unexpected[:8]}")
    return model
