"""Compute accounting: parameters, non-embedding FLOPs per token M, budgets, and training cost.

DeepSeek-LLM (§3.2) measures model scale not by parameters but by **non-embedding FLOPs per token**

    M = 72·n_layer·d_model² + 12·n_layer·d_model·l_seq

(6 FLOPs per parameter per token for the 12·d² matrix parameters of a standard layer, plus the attention
scores and weighted sum over the context, 12·n_layer·d·l_seq, which 6N ignores). The compute budget is
C = M·D for D training tokens. Two parameter-based stand-ins are compared with M in the paper's Table 3:

    6N1 = 72·n_layer·d²                    (non-embedding parameters)
    6N2 = 72·n_layer·d² + 6·n_vocab·d      (plus the output head)

``flops_per_token`` computes M from a real ``ModelConfig`` — counting the actual matrices of the layer
(GQA's smaller K/V projections, the FFN's real width, MLA's projections, only the *activated* experts of a
MoE layer) — and reduces to the closed form above for a standard layer (attention 4d², FFN 8d²).
(That it counts what a real step costs is measured, on a built model, by
``dslearn.studies.scaling.measured_flops_per_token``.)

**Multi-token prediction** (V3 §2.2) adds D modules of one decoder block each, plus M_k (d×2d) and three
norms; they share the main model's embedding and output head. ``mtp_parameter_counts`` and
``mtp_flops_per_token`` count them apart from the main model, as the report does: V3's 671B excludes the MTP
module, which DeepSeek's release stores with its own copies of the embedding and head ("14B"; 685B in all).

    paper            code
    N1, N2           non_embedding_params(cfg), non_embedding_params(cfg) + n_vocab·d (``six_n2``)
    M                flops_per_token(cfg, seq_len)      M_closed_form(n_layer, d, l_seq)
    C = M·D          compute_budget(M, D)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig


def attention_params(cfg: ModelConfig) -> int:
    """Matrix parameters of one attention block (biases and norms excluded)."""
    d, h = cfg.hidden_size, cfg.num_attention_heads
    if cfg.attention_type == "mla":
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        q = (d * cfg.q_lora_rank + cfg.q_lora_rank * h * qk) if cfg.q_lora_rank else d * h * qk
        kv = (d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
              + cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim))
        return q + kv + h * cfg.v_head_dim * d
    return 2 * d * h * cfg.head_dim + 2 * d * cfg.num_key_value_heads * cfg.head_dim


def ffn_params(cfg: ModelConfig, layer_idx: int, activated: bool = False) -> int:
    """Matrix parameters of one feed-forward block; for MoE layers, all experts or only the activated ones."""
    d = cfg.hidden_size
    if not cfg.is_moe_layer(layer_idx):
        return 3 * d * cfg.intermediate_size
    routed = cfg.num_experts_per_tok if activated else cfg.n_routed_experts
    experts = (routed + cfg.n_shared_experts) * 3 * d * cfg.moe_intermediate_size
    return experts + d * cfg.n_routed_experts  # + the gate's affinity vectors e_i


def non_embedding_params(cfg: ModelConfig, activated: bool = False) -> int:
    """Parameters outside the input embedding and output head (norms included)."""
    norms = 2 * cfg.hidden_size
    if cfg.attention_type == "mla":
        norms += cfg.kv_lora_rank + (cfg.q_lora_rank or 0)
    per_layer = [attention_params(cfg) + ffn_params(cfg, i, activated) + norms for i in range(cfg.num_hidden_layers)]
    return sum(per_layer) + cfg.hidden_size  # + the final norm


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """total, embedding (input + untied output head), non_embedding, and activated (per token)."""
    embedding = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    non_emb = non_embedding_params(cfg)
    return {"total": non_emb + embedding, "embedding": embedding, "non_embedding": non_emb,
            "activated": non_embedding_params(cfg, activated=True) + embedding}


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """M: training FLOPs per token outside the embedding and the output head (forward + backward).

    6 per activated matrix parameter, plus 6·n_layer·l_seq·n_h·(d_qk + d_v) for the attention scores and
    the weighted sum (12·n_layer·d·l_seq for standard MHA), with no discount for the causal mask — as in
    the paper's Table 3."""
    l_seq = seq_len or cfg.max_position_embeddings
    matrices = sum(attention_params(cfg) + ffn_params(cfg, i, activated=True) for i in range(cfg.num_hidden_layers))
    if cfg.attention_type == "mla":
        d_qk, d_v = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    else:
        d_qk = d_v = cfg.head_dim
    attention = 6 * cfg.num_hidden_layers * l_seq * cfg.num_attention_heads * (d_qk + d_v)
    return 6 * matrices + attention


def _mtp_depth_matrices(cfg: ModelConfig, depth: int, activated: bool) -> int:
    """Matrix parameters of MTP depth k (1-based): M_k (2d·d) + its block (attention + FFN at layer L+k−1)."""
    d = cfg.hidden_size
    return 2 * d * d + attention_params(cfg) + ffn_params(cfg, cfg.num_hidden_layers + depth - 1, activated)


def mtp_parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of the D MTP modules: ``own`` (what the model holds: M_k, the block, hnorm, enorm, the block's
    norms and shared_head.norm), ``stored`` (own plus the embedding and head copies DeepSeek's release writes
    into every MTP layer), and ``activated`` per token (own, with only K_r routed experts)."""
    d, D = cfg.hidden_size, cfg.num_nextn_predict_layers
    norms = 2 * d + (cfg.kv_lora_rank + (cfg.q_lora_rank or 0) if cfg.attention_type == "mla" else 0) + 3 * d
    own = sum(_mtp_depth_matrices(cfg, k, False) + norms for k in range(1, D + 1))
    activated = sum(_mtp_depth_matrices(cfg, k, True) + norms for k in range(1, D + 1))
    return {"own": own, "stored": own + D * 2 * cfg.vocab_size * d, "activated": activated}


def mtp_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token the D MTP modules add (forward + backward): 6 per activated matrix parameter
    of each depth, its attention over the context, and its pass through the shared output head (6·V·d, which M
    leaves out for the main model's own head)."""
    l_seq = seq_len or cfg.max_position_embeddings
    if cfg.attention_type == "mla":
        d_qk, d_v = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    else:
        d_qk = d_v = cfg.head_dim
    per_depth = [6 * _mtp_depth_matrices(cfg, k, True) + 6 * l_seq * cfg.num_attention_heads * (d_qk + d_v)
                 + 6 * cfg.vocab_size * cfg.hidden_size for k in range(1, cfg.num_nextn_predict_layers + 1)]
    return sum(per_depth)


def M_closed_form(n_layer: int, d_model: int, l_seq: int) -> int:
    """DeepSeek-LLM's M = 72·n_layer·d² + 12·n_layer·d·l_seq (standard layer shapes)."""
    return 72 * n_layer * d_model**2 + 12 * n_layer * d_model * l_seq


def six_n1(n_layer: int, d_model: int) -> int:
    return 72 * n_layer * d_model**2


def six_n2(n_layer: int, d_model: int, n_vocab: int) -> int:
    return 72 * n_layer * d_model**2 + 6 * n_vocab * d_model


def compute_budget(M: float, D: float) -> float:
    """C = M·D FLOPs."""
    if M <= 0 or D <= 0:
        raise ValueError(f"M and D must be positive, got M={M}, D={D}")
    return M * D


@dataclass(frozen=True)
class TrainingCost:
    gpu_hours: float
    dollars: float


def training_cost(gpu_hours_by_stage: dict[str, float], dollars_per_gpu_hour: float) -> TrainingCost:
    """Sum GPU-hours over stages and price them (V3: 2664K + 119K + 5K H800 hours at $2/hour)."""
    bad = {k: v for k, v in gpu_hours_by_stage.items() if not v >= 0}
    if bad or dollars_per_gpu_hour < 0:
        raise ValueError(f"GPU-hours and prices must be non-negative, got {bad or dollars_per_gpu_hour}")
    hours = float(sum(gpu_hours_by_stage.values()))
    return TrainingCost(hours, hours * dollars_per_gpu_hour)


def gpu_hours_for(C: float, peak_flops: float, mfu: float) -> float:
    """GPU-hours to spend C FLOPs on accelerators of ``peak_flops`` FLOP/s at utilisation ``mfu``."""
    if C <= 0 or peak_flops <= 0 or not 0 < mfu <= 1:
        raise ValueError(f"need C > 0, peak_flops > 0 and 0 < mfu <= 1, got {C}, {peak_flops}, {mfu}")
    return C / (peak_flops * mfu) / 3600


def mfu(flops_per_token_: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (M × tokens/s) over the hardware peak."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be > 0, got {peak_flops}")
    return flops_per_token_ * tokens_per_s / peak_flops
