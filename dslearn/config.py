"""One configuration dataclass for every model in the course.

Field names follow Hugging Face's ``DeepseekV3Config`` wherever a field exists there, so a
model round-trips to ``transformers`` by a rename table at most. Every field carries the
paper symbol it stands for:

    paper (DeepSeek-LLM / V2 / V3)        code
    ------------------------------        ---------------------------
    n_vocab                               vocab_size
    d_model                               hidden_size
    n_layer (L)                           num_hidden_layers
    n_h, d_h                              num_attention_heads, head_dim
    n_kv (GQA groups)                     num_key_value_heads
    l_seq                                 max_position_embeddings
    d_c, d_c', d_h^R                      kv_lora_rank, q_lora_rank, qk_rope_head_dim
    N_s, N_r, K_r                         n_shared_experts, n_routed_experts, num_experts_per_tok
    M (devices/nodes per token)           topk_group (out of n_group)
    α1, α2, α3 (V2 balance losses)        aux_loss_alpha, device_aux_loss_alpha, comm_aux_loss_alpha
    α (V3 sequence-wise loss), γ, b_i     seq_aux_loss_alpha, bias_update_speed, gate.e_score_correction_bias
    D (MTP depth)                         num_nextn_predict_layers

The foundation builds the DeepSeek-LLM baseline (``attention_type="mha"``, dense SwiGLU).
The MLA and MoE fields are already here so that the paper-scale presets describe the real
models for accounting (parameter counts, FLOPs, cache sizes); later chapters register the
modules that build them.

    >>> cfg = ModelConfig.from_preset("tiny", num_hidden_layers=2)
    >>> cfg.head_dim, cfg.num_key_value_heads
    (32, 4)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

ATTENTION_TYPES = ("mha", "mla")  # "mha" covers GQA and MQA through num_key_value_heads
SCORING_FUNCS = ("softmax", "sigmoid")  # V2 softmax gate, V3 sigmoid gate
# Expert selection (Hugging Face DeepseekV2Config.topk_method names): plain top-K_r; V2's
# device-limited top-K_r (group score = best expert); V3's aux-loss-free node-limited top-K_r
# (selection by s + b, group score = sum of the top-2 biased scores).
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
MOE_IMPLS = ("grouped", "loop")  # fast sorted/grouped-matmul dispatch, or the per-expert reference loop
LINEAR_IMPLS = ("torch", "fp8")


class ConfigError(ValueError):
    """A configuration field has a value the model cannot use; the message names the field."""


@dataclass
class ModelConfig:
    # --- sizes -------------------------------------------------------------------------
    vocab_size: int = 256  # n_vocab; 256 = byte-level tokens
    hidden_size: int = 128  # d_model
    intermediate_size: int = 352  # d_ff, width of the dense SwiGLU feed-forward
    num_hidden_layers: int = 4  # n_layer (L)
    num_attention_heads: int = 4  # n_h
    num_key_value_heads: int | None = None  # n_kv: None → n_h (MHA); 1 → MQA; between → GQA
    head_dim: int | None = None  # d_h; None → d_model / n_h
    max_position_embeddings: int = 256  # l_seq, the training context length
    # --- attention ---------------------------------------------------------------------
    attention_type: str = "mha"  # "mha" (MHA/GQA/MQA) or "mla" (V2 §2.1)
    attention_bias: bool = False  # biases on q/k/v/o projections (DeepSeek: none)
    q_lora_rank: int | None = None  # d_c', query latent; None = no query compression (MLA)
    kv_lora_rank: int | None = None  # d_c, the cached KV latent c^KV (MLA)
    qk_nope_head_dim: int | None = None  # d_h of the content part q^C, k^C (MLA)
    qk_rope_head_dim: int | None = None  # d_h^R, decoupled RoPE part q^R, shared k^R (MLA)
    v_head_dim: int | None = None  # d_h of values (MLA)
    # --- positions ---------------------------------------------------------------------
    rope_theta: float = 10000.0  # RoPE base θ
    rope_interleave: bool = False  # RoPE on (even, odd) pairs (DeepSeek MLA) vs halves (LLaMA)
    rope_scaling: dict | None = None  # YaRN context extension (V3 §4.3), e.g. {"type": "yarn", ...}
    # --- feed-forward: dense or DeepSeekMoE -------------------------------------------
    n_routed_experts: int | None = None  # N_r; None → every layer dense
    n_shared_experts: int = 0  # N_s, experts every token passes through
    num_experts_per_tok: int = 0  # K_r, routed experts chosen per token
    moe_intermediate_size: int = 0  # width of one (fine-grained) expert
    first_k_dense_replace: int = 0  # the first k layers keep a dense FFN
    n_group: int = 1  # expert groups (devices in V2, nodes in V3)
    topk_group: int = 1  # M, groups a token may be routed to
    routed_scaling_factor: float = 1.0  # multiplies the routed experts' weights
    scoring_func: str = "softmax"  # gate affinity: "softmax" (V2) or "sigmoid" (V3)
    norm_topk_prob: bool = False  # normalise the selected gate weights to sum to 1 (V3)
    topk_method: str = "greedy"  # selection: "greedy", "group_limited_greedy" (V2), "noaux_tc" (V3)
    aux_loss_alpha: float = 0.0  # α1, expert-level balance loss L_ExpBal (V2: 0.003)
    device_aux_loss_alpha: float = 0.0  # α2, device-level balance loss L_DevBal (V2: 0.05)
    comm_aux_loss_alpha: float = 0.0  # α3, communication balance loss L_CommBal (V2: 0.02)
    seq_aux_loss_alpha: float = 0.0  # α, V3's sequence-wise balance loss L_Bal (V3: 1e-4)
    bias_update_speed: float = 0.0  # γ, V3's aux-loss-free bias step (V3: 0.001); needs noaux_tc
    bias_update_until: int | None = None  # stop bias updates after this many optimizer steps (γ → 0)
    capacity_factor: float | None = None  # V2 device-level capacity factor (V2: 1.0); None = never drop
    drop_exempt_fraction: float = 0.0  # share of sequences whose tokens are never dropped (V2: ~0.1)
    moe_impl: str = "grouped"  # routed-expert dispatch: "grouped" (fast) or "loop" (reference)
    mla_impl: str = "naive"  # MLA computation: "naive" (re-expand K/V) or "absorbed" (attend over latents)
    # --- multi-token prediction --------------------------------------------------------
    num_nextn_predict_layers: int = 0  # D, MTP depth (V3 §2.2); 0 = none
    # --- numerics and init -------------------------------------------------------------
    rms_norm_eps: float = 1e-6  # ε of RMSNorm
    initializer_range: float = 0.02  # std of the normal initialisation
    tie_word_embeddings: bool = False  # DeepSeek keeps input and output embeddings separate
    linear_impl: str = "torch"  # "torch" or "fp8" (V3 §3.3, built in chapter 05)
    fp8_backend: str = "auto"  # where FP8 GEMMs run: "auto", "torch", "triton", "interpret"
    extra: dict = field(default_factory=dict)  # free-form notes carried with checkpoints

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        _check_int(self, "num_attention_heads", 1)
        if self.head_dim is None:
            _check_int(self, "hidden_size", 1)
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}; set head_dim explicitly or change one of them"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the first field whose value is outside its allowed range."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "max_position_embeddings"):
            _check_int(self, name, 1)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads} (each KV head serves a group)"
            )
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be > 0, got {self.rope_theta}")
        if self.attention_type not in ATTENTION_TYPES:
            raise ConfigError(f"attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}")
        if self.attention_type == "mha" and self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.attention_type == "mla":
            for name in ("kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
                _check_int(self, name, 1)
            _check_int(self, "qk_nope_head_dim", 0)
            if self.q_lora_rank is not None:
                _check_int(self, "q_lora_rank", 1)
            if self.qk_rope_head_dim % 2:
                raise ConfigError(f"qk_rope_head_dim must be even for RoPE, got {self.qk_rope_head_dim}")
        if self.n_routed_experts is not None:
            _check_int(self, "n_routed_experts", 1)
            _check_int(self, "num_experts_per_tok", 1)
            _check_int(self, "moe_intermediate_size", 1)
            _check_int(self, "n_shared_experts", 0)
            _check_int(self, "n_group", 1)
            _check_int(self, "topk_group", 1)
            _check_int(self, "first_k_dense_replace", 0)
            if self.num_experts_per_tok > self.n_routed_experts:
                raise ConfigError(
                    f"num_experts_per_tok={self.num_experts_per_tok} exceeds "
                    f"n_routed_experts={self.n_routed_experts}"
                )
            if self.n_routed_experts % self.n_group:
                raise ConfigError(
                    f"n_group={self.n_group} must divide n_routed_experts={self.n_routed_experts}"
                )
            if self.topk_group > self.n_group:
                raise ConfigError(f"topk_group={self.topk_group} exceeds n_group={self.n_group}")
            per_group = self.n_routed_experts // self.n_group
            if self.num_experts_per_tok > self.topk_group * per_group:
                raise ConfigError(
                    f"num_experts_per_tok={self.num_experts_per_tok} exceeds the experts reachable in "
                    f"topk_group={self.topk_group} groups of {per_group}"
                )
            if self.first_k_dense_replace > self.num_hidden_layers:
                raise ConfigError(
                    f"first_k_dense_replace={self.first_k_dense_replace} exceeds "
                    f"num_hidden_layers={self.num_hidden_layers}"
                )
            if self.topk_method not in TOPK_METHODS:
                raise ConfigError(f"topk_method must be one of {TOPK_METHODS}, got {self.topk_method!r}")
            if self.moe_impl not in MOE_IMPLS:
                raise ConfigError(f"moe_impl must be one of {MOE_IMPLS}, got {self.moe_impl!r}")
            for name in ("aux_loss_alpha", "device_aux_loss_alpha", "comm_aux_loss_alpha",
                         "seq_aux_loss_alpha", "bias_update_speed"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                    raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
            if self.bias_update_speed > 0 and self.topk_method != "noaux_tc":
                raise ConfigError(f"bias_update_speed={self.bias_update_speed} needs topk_method='noaux_tc' "
                                  f"(only V3's selection uses the bias), got {self.topk_method!r}")
            if self.bias_update_until is not None:
                _check_int(self, "bias_update_until", 0)
            if self.capacity_factor is not None and not (isinstance(self.capacity_factor, (int, float))
                                                         and 0 < self.capacity_factor < float("inf")):
                raise ConfigError(f"capacity_factor must be > 0 or None, got {self.capacity_factor!r}")
            if not 0.0 <= self.drop_exempt_fraction <= 1.0:
                raise ConfigError(f"drop_exempt_fraction must be in [0, 1], got {self.drop_exempt_fraction!r}")
        if self.scoring_func not in SCORING_FUNCS:
            raise ConfigError(f"scoring_func must be one of {SCORING_FUNCS}, got {self.scoring_func!r}")
        if self.routed_scaling_factor <= 0:
            raise ConfigError(f"routed_scaling_factor must be > 0, got {self.routed_scaling_factor}")
        _check_int(self, "num_nextn_predict_layers", 0)
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.initializer_range > 0:
            raise ConfigError(f"initializer_range must be > 0, got {self.initializer_range}")
        if self.linear_impl not in LINEAR_IMPLS:
            raise ConfigError(f"linear_impl must be one of {LINEAR_IMPLS}, got {self.linear_impl!r}")

    # ------------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts is not None

    def is_moe_layer(self, layer_idx: int) -> bool:
        """V2/V3 keep the first ``first_k_dense_replace`` layers dense."""
        return self.is_moe and layer_idx >= self.first_k_dense_replace

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed (unknown names raise ConfigError)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        return get_preset(name).replace(**overrides) if overrides else get_preset(name)

    def differences(self, other: ModelConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: {name: (self's, other's)}."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _check_int(cfg: ModelConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ----------------------------------------------------------------------------------------
# Presets. "tiny" and "small" train on this course's CPUs; the paper presets describe the
# released models for accounting (parameters, FLOPs, KV cache) and are never instantiated.
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(  # ~0.8M parameters, trains at several thousand tokens/s on 2 cores
        vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=256,
    ),
    "small": dict(  # ~4.8M parameters, the course's "serious" CPU model
        vocab_size=256, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
        num_attention_heads=8, max_position_embeddings=512,
    ),
    "deepseek-llm-7b": dict(  # DeepSeek-LLM Table 2
        vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
        num_attention_heads=32, max_position_embeddings=4096,
    ),
    "deepseek-llm-67b": dict(  # DeepSeek-LLM Table 2: GQA with 8 KV heads
        vocab_size=102400, hidden_size=8192, intermediate_size=22016, num_hidden_layers=95,
        num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=4096,
    ),
    "deepseek-v2": dict(  # DeepSeek-V2 §3.1.2 (236B total, 21B activated)
        vocab_size=102400, hidden_size=5120, intermediate_size=12288, num_hidden_layers=60,
        num_attention_heads=128, max_position_embeddings=4096, attention_type="mla",
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, rope_interleave=True, n_routed_experts=160, n_shared_experts=2,
        num_experts_per_tok=6, moe_intermediate_size=1536, first_k_dense_replace=1,
        n_group=8, topk_group=3, routed_scaling_factor=16.0, scoring_func="softmax",
        norm_topk_prob=False, topk_method="group_limited_greedy", aux_loss_alpha=0.003,
        device_aux_loss_alpha=0.05, comm_aux_loss_alpha=0.02, capacity_factor=1.0, drop_exempt_fraction=0.1,
    ),
    "deepseek-v3": dict(  # DeepSeek-V3 §4.2 (671B total, 37B activated)
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, num_hidden_layers=61,
        num_attention_heads=128, max_position_embeddings=4096, attention_type="mla",
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, rope_interleave=True, n_routed_experts=256, n_shared_experts=1,
        num_experts_per_tok=8, moe_intermediate_size=2048, first_k_dense_replace=3,
        n_group=8, topk_group=4, routed_scaling_factor=2.5, scoring_func="sigmoid",
        norm_topk_prob=True, num_nextn_predict_layers=1, topk_method="noaux_tc", bias_update_speed=0.001,
        seq_aux_loss_alpha=0.0001,
    ),
}
ACCOUNTING_ONLY = frozenset({"deepseek-llm-7b", "deepseek-llm-67b", "deepseek-v2", "deepseek-v3"})


def preset_names() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str) -> ModelConfig:
    """A fresh ModelConfig for a named preset."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {preset_names()}")
    return ModelConfig(**_PRESETS[name])
