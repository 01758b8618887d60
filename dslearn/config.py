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
    λ (MTP loss weight; V3: 0.3 → 0.1)    mtp_loss_weight → mtp_loss_weight_final at mtp_weight_switch_step

Implementation choices (same weights, a different computation) are fields too, each with the tuple of
names it accepts (``CHOICES``); ``dslearn.model.parts`` is the one place that turns them into modules:

    choice                                code (accepted names)
    ------------------------------        ---------------------------
    MLA path: re-expand K/V, or absorb    mla_impl (MLA_IMPLS: "naive", "absorbed")
      W^UK into W^Q and W^UV into W^O
    routed-expert dispatch                moe_impl (MOE_IMPLS: "grouped", "loop")
    Linear layers: torch or FP8 (V3 §3.3) linear_impl (LINEAR_IMPLS: "torch", "fp8")
    where FP8 GEMMs run                   fp8_backend (FP8_BACKENDS: "auto", "torch", "triton", "interpret")

Validation happens once, when a config is made: ``validate()`` raises ``ConfigError`` naming the field
(``rope_scaling`` included: ``yarn_settings`` is the one parser of that dict). ``check_int`` and
``check_number`` are the integer and number checks every config dataclass of the course uses.

The foundation builds the DeepSeek-LLM baseline (``attention_type="mha"``, dense SwiGLU).
The MLA and MoE fields are already here so that the paper-scale presets describe the real
models for accounting (parameter counts, FLOPs, cache sizes); later chapters register the
modules that build them.

    >>> cfg = ModelConfig.from_preset("tiny", num_hidden_layers=2)
    >>> cfg.head_dim, cfg.num_key_value_heads
    (32, 4)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# --- the names each choice field accepts (one declaration; modules import them from here) -----------
ATTENTION_TYPES = ("mha", "mla")  # "mha" covers GQA and MQA through num_key_value_heads
MLA_IMPLS = ("naive", "absorbed")  # MLA computed by re-expanding K/V, or over the latents with W^UK absorbed
SCORING_FUNCS = ("softmax", "sigmoid")  # V2 softmax gate, V3 sigmoid gate
# Expert selection (Hugging Face DeepseekV2Config.topk_method names): plain top-K_r; V2's
# device-limited top-K_r (group score = best expert); V3's aux-loss-free node-limited top-K_r
# (selection by s + b, group score = sum of the top-2 biased scores).
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
MOE_IMPLS = ("grouped", "loop")  # fast sorted/grouped-matmul dispatch, or the per-expert reference loop
LINEAR_IMPLS = ("torch", "fp8")
FP8_BACKENDS = ("auto", "torch", "triton", "interpret")  # where FP8 GEMMs run (dslearn/fp8/backend.py)
# Every ModelConfig field that chooses among names, with the names it accepts.
CHOICES = {"attention_type": ATTENTION_TYPES, "mla_impl": MLA_IMPLS, "scoring_func": SCORING_FUNCS,
           "topk_method": TOPK_METHODS, "moe_impl": MOE_IMPLS, "linear_impl": LINEAR_IMPLS,
           "fp8_backend": FP8_BACKENDS}
# Fields that choose how the same weights compute, not which weights exist: a checkpoint's weights load into a
# model that differs from it only here (e.g. trained with mla_impl="naive", decoded with "absorbed").
IMPLEMENTATION_FIELDS = ("mla_impl", "moe_impl", "linear_impl", "fp8_backend")
# The keys a YaRN ``rope_scaling`` dict may hold (Hugging Face / DeepSeek config names).
YARN_KEYS = frozenset({"type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast",
                       "beta_slow", "mscale", "mscale_all_dim"})
# Fields older saved configs carry that no longer exist; from_dict drops them. "extra" held free-form
# notes nobody read (every config this repository wrote has {} there), and a difference in it blocked
# checkpoint loads.
REMOVED_FIELDS = frozenset({"extra"})


class ConfigError(ValueError):
    """A configuration field has a value the model cannot use; the message names the field."""


# --- checks shared by every config dataclass (ModelConfig here, TrainConfig, GRPOConfig) -------------
def check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    """Raise ConfigError unless ``value`` is an int (a bool is not) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}")


def check_number(owner: str, name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 *, above: bool = False, finite: bool = True, none_ok: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a real number (a bool is not) in range.

    The range is ``value >= minimum`` (``> minimum`` when ``above``) and ``value <= maximum``; NaN and
    ±inf are refused while ``finite``; None passes when ``none_ok``."""
    if value is None and none_ok:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and not math.isnan(value) and (math.isfinite(value) or not finite)
    ok = ok and (minimum is None or (value > minimum if above else value >= minimum))
    ok = ok and (maximum is None or value <= maximum)
    if ok:
        return
    if minimum is not None and maximum is not None:
        want = f"in {'(' if above else '['}{minimum}, {maximum}]"
    else:
        bound = (f"{'>' if above else '>='} {minimum}" if minimum is not None
                 else f"<= {maximum}" if maximum is not None else "")
        kind = "a finite number" if finite else "a number"
        want = f"{bound or kind} or None" if none_ok else f"{kind} {bound}".rstrip()
    raise ConfigError(f"{owner}.{name} must be {want}, got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{owner}.{name} must be one of {choices}, got {value!r}")


def unknown_names_error(what: str, unknown: Iterable[str], known: Iterable[str]) -> ConfigError:
    """A one-line ConfigError naming each unknown name with its closest known names (a typo's likely fix)."""
    known = sorted(known)
    parts = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, known, n=3)
        parts.append(repr(name) + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return ConfigError(f"unknown {what}: {'; '.join(parts)}")


def yarn_settings(config: ModelConfig) -> dict | None:
    """The YaRN settings of ``config.rope_scaling`` with defaults filled in, or None when it is None.

    The one parser of that dict: ``ModelConfig.validate`` calls it (so a bad dict fails when the config is
    made, naming the key) and ``attention/yarn.py`` reads its settings through it."""
    rs = config.rope_scaling
    if rs is None:
        return None
    if not isinstance(rs, dict):
        raise ConfigError(f"ModelConfig.rope_scaling must be a dict like {{'type': 'yarn', 'factor': 40}} "
                          f"or None, got {rs!r}")
    kind = rs.get("type", rs.get("rope_type"))
    if kind != "yarn":
        raise ConfigError(f"ModelConfig.rope_scaling['type'] must be 'yarn' (the only scaling V3 uses), got {kind!r}")
    unknown = set(rs) - YARN_KEYS
    if unknown:
        raise unknown_names_error("rope_scaling key(s)", unknown, YARN_KEYS)
    if config.attention_type != "mla":
        raise ConfigError("rope_scaling (YaRN) is implemented for attention_type='mla' only, "
                          f"got attention_type={config.attention_type!r}")
    out = {"factor": rs.get("factor", 1.0),
           "original_max_position_embeddings": rs.get("original_max_position_embeddings",
                                                      config.max_position_embeddings),
           "beta_fast": rs.get("beta_fast", 32), "beta_slow": rs.get("beta_slow", 1),
           "mscale": rs.get("mscale", 1.0), "mscale_all_dim": rs.get("mscale_all_dim", 0.0)}
    owner = "ModelConfig"
    check_number(owner, "rope_scaling['factor']", out["factor"], 1)
    check_int(owner, "rope_scaling['original_max_position_embeddings']", out["original_max_position_embeddings"], 1)
    for key in ("beta_fast", "beta_slow"):
        check_number(owner, f"rope_scaling[{key!r}]", out[key], 0, above=True)
    if not out["beta_fast"] > out["beta_slow"]:
        raise ConfigError(f"ModelConfig.rope_scaling needs beta_fast > beta_slow > 0, "
                          f"got {out['beta_fast']}, {out['beta_slow']}")
    for key in ("mscale", "mscale_all_dim"):
        check_number(owner, f"rope_scaling[{key!r}]", out[key])
    return {k: v if k == "original_max_position_embeddings" else float(v) for k, v in out.items()}


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
    mla_impl: str = "naive"  # MLA computation: "naive" (re-expand K/V) or "absorbed" (W^UK, W^UV absorbed)
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
    # --- multi-token prediction --------------------------------------------------------
    num_nextn_predict_layers: int = 0  # D, MTP depth (V3 §2.2); 0 = none
    mtp_loss_weight: float = 0.3  # λ, the MTP loss weight at first (V3: 0.3 for the first 10T tokens)
    mtp_loss_weight_final: float = 0.1  # λ after the switch (V3: 0.1 for the remaining 4.8T tokens)
    mtp_weight_switch_step: int | None = None  # optimizer steps at λ before λ_final; None = never switch
    # --- numerics and init -------------------------------------------------------------
    rms_norm_eps: float = 1e-6  # ε of RMSNorm
    initializer_range: float = 0.02  # std of the normal initialisation
    tie_word_embeddings: bool = False  # DeepSeek keeps input and output embeddings separate
    linear_impl: str = "torch"  # "torch" or "fp8" (V3 §3.3, built in chapter 05)
    fp8_backend: str = "auto"  # where FP8 GEMMs run: "auto", "torch", "triton", "interpret"

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        check_int("ModelConfig", "num_attention_heads", self.num_attention_heads, 1)
        if self.head_dim is None:
            check_int("ModelConfig", "hidden_size", self.hidden_size, 1)
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
        owner = "ModelConfig"

        def ints(minimum: int, *names: str) -> None:
            for name in names:
                check_int(owner, name, getattr(self, name), minimum)

        ints(1, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings")
        ints(0, "num_nextn_predict_layers")
        for name in ("mtp_loss_weight", "mtp_loss_weight_final"):
            check_number(owner, name, getattr(self, name), 0)
        if self.mtp_weight_switch_step is not None:
            ints(0, "mtp_weight_switch_step")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads} (each KV head serves a group)"
            )
        for name, choices in CHOICES.items():
            check_choice(owner, name, getattr(self, name), choices)
        for name in ("attention_bias", "rope_interleave", "norm_topk_prob", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{owner}.{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("rope_theta", "routed_scaling_factor", "rms_norm_eps", "initializer_range"):
            check_number(owner, name, getattr(self, name), 0, above=True)
        for name in ("aux_loss_alpha", "device_aux_loss_alpha", "comm_aux_loss_alpha", "seq_aux_loss_alpha",
                     "bias_update_speed"):
            check_number(owner, name, getattr(self, name), 0)
        check_number(owner, "capacity_factor", self.capacity_factor, 0, above=True, none_ok=True)
        check_number(owner, "drop_exempt_fraction", self.drop_exempt_fraction, 0, 1)
        if self.bias_update_until is not None:
            ints(0, "bias_update_until")
        if self.attention_type == "mha" and self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.attention_type == "mla":
            ints(1, "kv_lora_rank", "qk_rope_head_dim", "v_head_dim")
            ints(0, "qk_nope_head_dim")
            if self.q_lora_rank is not None:
                ints(1, "q_lora_rank")
            if self.qk_rope_head_dim % 2:
                raise ConfigError(f"qk_rope_head_dim must be even for RoPE, got {self.qk_rope_head_dim}")
        yarn_settings(self)
        if self.n_routed_experts is not None:
            ints(1, "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group", "topk_group")
            ints(0, "n_shared_experts", "first_k_dense_replace")
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
            if self.bias_update_speed > 0 and self.topk_method != "noaux_tc":
                raise ConfigError(f"bias_update_speed={self.bias_update_speed} needs topk_method='noaux_tc' "
                                  f"(only V3's selection uses the bias), got {self.topk_method!r}")

    # ------------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts is not None

    def is_moe_layer(self, layer_idx: int) -> bool:
        """V2/V3 keep the first ``first_k_dense_replace`` layers dense."""
        return self.is_moe and layer_idx >= self.first_k_dense_replace

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed (unknown names raise ConfigError)."""
        unknown = set(changes) - field_names(ModelConfig)
        if unknown:
            raise unknown_names_error("ModelConfig field(s)", unknown, field_names(ModelConfig))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The config a ``to_dict()`` (or an older saved config.json) describes; fields this version no
        longer has (REMOVED_FIELDS) are dropped, unknown ones raise ConfigError."""
        d = {k: v for k, v in d.items() if k not in REMOVED_FIELDS}
        unknown = set(d) - field_names(cls)
        if unknown:
            raise unknown_names_error("ModelConfig field(s)", unknown, field_names(cls))
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        return get_preset(name).replace(**overrides) if overrides else get_preset(name)

    def differences(self, other: ModelConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: {name: (self's, other's)}."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def field_names(cls: type) -> set[str]:
    """The field names of a config dataclass (ModelConfig, TrainConfig, ...)."""
    return {f.name for f in dataclasses.fields(cls)}


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
    # The capstone's model (chapter 10): DeepSeek-V3's every choice at the width chapter 01's fitted laws give the
    # default run's budget (dslearn/capstone/sizing.py prints the derivation; a test holds this dict to it).
    # MLA (naive to train; absorbed to decode, via model.with_config), DeepSeekMoE with V3's sigmoid gate,
    # node-limited noaux_tc routing (4 groups, top-2), the aux-loss-free bias γ (its end, bias_update_until, and
    # λ's switch step are set per run from its length) and the sequence-wise loss α, one dense layer first, MTP D=1.
    "mini-v3": dict(
        vocab_size=256, hidden_size=32, intermediate_size=88, num_hidden_layers=4, num_attention_heads=2,
        max_position_embeddings=128, attention_type="mla", q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
        qk_rope_head_dim=16, v_head_dim=16, rope_interleave=True, mla_impl="naive", n_routed_experts=8,
        n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=16, first_k_dense_replace=1, n_group=4,
        topk_group=2, routed_scaling_factor=2.5, scoring_func="sigmoid", norm_topk_prob=True, topk_method="noaux_tc",
        bias_update_speed=0.001, seq_aux_loss_alpha=0.0001, num_nextn_predict_layers=1, mtp_loss_weight=0.3,
        mtp_loss_weight_final=0.1,
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


def preset_fields(name: str) -> dict[str, Any]:
    """The fields a preset sets (a fresh dict). Derived fields it leaves out (head_dim,
    num_key_value_heads) are re-derived when this dict, changed, makes a new ModelConfig."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {preset_names()}")
    return copy.deepcopy(_PRESETS[name])


def get_preset(name: str) -> ModelConfig:
    """A fresh ModelConfig for a named preset."""
    return ModelConfig(**preset_fields(name))
