"""Sizing the capstone's model with chapter 01's own scaling laws, and its accounting beside DeepSeek-V3.

DeepSeek-LLM §3 sizes a model from its compute budget C (FLOPs): M_opt(C) non-embedding FLOPs per token and
D_opt(C) = C / M_opt tokens, with the batch B_opt(C) and learning rate η_opt(C) from the hyperparameter laws.
Chapter 01 fitted all four on this course's own CPU runs (``experiments/scaling/fits.json``, made by
``experiments/scaling/run_sweeps.py``); the capstone uses those fits, not the paper's constants, because they
describe *our* data (bytes of Python) at *our* scale. The derivation:

    1. C: the default run's pretraining budget, DEFAULT_BUDGET FLOPs (about four minutes of two CPU cores at the
       5–10 GFLOP/s of model math a model this small sustains there; ``dslearn capstone`` reports the MFU it reached)
    2. M_opt = k_M · C^a                      chapter 01's IsoFLOP fit
    3. the mini-v3 family (``family(d)``: V3's architecture at width d) → the width whose M is nearest M_opt
       in log space (M from ``scaling.flops_per_token``: activated experts only, attention at the context)
    4. D = C / M(chosen) tokens; B = k_B · C^b tokens per step; η = k_η · C^c; steps = D / B

The family keeps every V3 choice and scales only the widths: MLA (q and KV latents, decoupled RoPE key),
DeepSeekMoE with a shared expert and fine-grained routed experts, the sigmoid gate, node-limited routing
(4 groups, a token reaches 2), the aux-loss-free bias (γ) and the sequence-wise loss (α), one dense layer first,
and one MTP module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..attention.cache_accounting import cache_bytes, elements_per_token_per_layer
from ..config import ModelConfig, get_preset
from ..scaling import flops_per_token, mtp_flops_per_token, mtp_parameter_counts, parameter_counts
from ..scaling.laws import B_OPT, ETA_OPT, M_OPT, PowerLaw

FITS_PATH = Path(__file__).resolve().parents[2] / "experiments" / "scaling" / "fits.json"
DEFAULT_BUDGET = 2e12  # C, FLOPs of the default run's pretraining
QUICK_BUDGET = 2e11  # C of `dslearn capstone --quick`
WIDTHS = (32, 48, 64, 80, 96, 128)  # the family's candidate widths d
SEQ_LEN = 128  # pretraining context: chapter 01's laws were fitted at 128 tokens


def family(d: int, n_layer: int = 4, context: int = SEQ_LEN) -> dict:
    """The mini-v3 fields at width ``d``: DeepSeek-V3's choices (see the module docstring), sizes ∝ d."""
    return dict(
        vocab_size=256, hidden_size=d, intermediate_size=d * 11 // 4 // 8 * 8, num_hidden_layers=n_layer,
        num_attention_heads=max(2, d // 16), max_position_embeddings=context,
        attention_type="mla", q_lora_rank=d, kv_lora_rank=d // 2, qk_nope_head_dim=16, qk_rope_head_dim=16,
        v_head_dim=16, rope_interleave=True, mla_impl="naive",
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=d // 2,
        first_k_dense_replace=1, n_group=4, topk_group=2, routed_scaling_factor=2.5, scoring_func="sigmoid",
        norm_topk_prob=True, topk_method="noaux_tc", bias_update_speed=0.001, seq_aux_loss_alpha=0.0001,
        num_nextn_predict_layers=1, mtp_loss_weight=0.3, mtp_loss_weight_final=0.1,
    )


def fitted_laws(path: str | Path = FITS_PATH) -> dict[str, PowerLaw]:
    """Chapter 01's fitted laws (M_opt from the IsoFLOP fit, B_opt, η_opt), or the paper's when the shipped fits
    are missing (a wheel install without the repository's ``experiments/``); ``source`` says which."""
    path = Path(path)
    if not path.is_file():
        return {"M_opt": M_OPT, "B_opt": B_OPT, "eta_opt": ETA_OPT, "source": "DeepSeek-LLM's (no fits.json found)"}
    fits = json.loads(path.read_text())

    def law(d: dict, name: str) -> PowerLaw:
        return PowerLaw(d["coef"], d["exponent"], d.get("exponent_std"), None, name)

    return {"M_opt": law(fits["isoflop"]["M_opt"], "M_opt"), "B_opt": law(fits["B_opt"], "B_opt"),
            "eta_opt": law(fits["eta_opt"], "η_opt"), "source": f"chapter 01's fits ({path.name})"}


def size_for_budget(C: float = DEFAULT_BUDGET, laws: dict | None = None, widths=WIDTHS,
                    seq_len: int = SEQ_LEN) -> dict:
    """Steps 2–4 of the derivation for budget C: the chosen width, its config fields and the training plan."""
    if not (C > 0 and math.isfinite(C)):
        raise ValueError(f"the compute budget C must be a positive number of FLOPs, got {C!r}")
    laws = laws or fitted_laws()
    m_opt = laws["M_opt"](C)
    candidates = {d: flops_per_token(ModelConfig(**family(d, context=seq_len)), seq_len) for d in widths}
    d = min(candidates, key=lambda w: abs(math.log(candidates[w] / m_opt)))
    M = candidates[d]
    tokens = C / M
    batch_tokens = laws["B_opt"](C)
    batch = max(2, round(batch_tokens / seq_len / 2) * 2)  # sequences, even (two micro-batches)
    return {"C": C, "M_opt": m_opt, "candidates": candidates, "width": d, "M": M, "tokens": tokens,
            "batch_tokens_opt": batch_tokens, "batch_size": batch, "lr": laws["eta_opt"](C),
            "steps": max(1, round(tokens / (batch * seq_len))), "seq_len": seq_len, "laws": laws}


def derivation(plan: dict) -> str:
    """The sizing, as printed by ``dslearn capstone``: every number computed from the laws."""
    laws = plan["laws"]
    lines = [f"Sizing mini-v3 with {laws['source']} (DeepSeek-LLM §3):",
             f"  1. budget           C = {plan['C']:.3g} FLOPs of pretraining",
             f"  2. model scale      {laws['M_opt']}  →  M_opt = {plan['M_opt']:.3g} FLOPs/token",
             "  3. mini-v3 family   M(d) at a context of "
             f"{plan['seq_len']}: " + ", ".join(f"d={w}: {m:.3g}" for w, m in plan["candidates"].items()),
             f"                     nearest M_opt (log scale): d = {plan['width']}, M = {plan['M']:.3g}",
             f"  4. data             D = C / M = {plan['tokens']:.3g} tokens",
             f"     batch            {laws['B_opt']}  →  {plan['batch_tokens_opt']:.0f} tokens ≈ "
             f"{plan['batch_size']} sequences of {plan['seq_len']}",
             f"     learning rate    {laws['eta_opt']}  →  η = {plan['lr']:.3g}",
             f"     steps            D / (B · l_seq) = {plan['steps']}"]
    return "\n".join(lines)


def accounting(config: ModelConfig, name: str = "mini-v3") -> dict:
    """Total / activated parameters (MTP apart, as V3's 671B / 37B), training FLOPs per token, KV cache per token."""
    p, mtp = parameter_counts(config), mtp_parameter_counts(config)
    context = config.max_position_embeddings
    return {"name": name, "total_params": p["total"], "activated_params": p["activated"],
            "mtp_params": mtp["own"] if config.num_nextn_predict_layers else 0,
            "flops_per_token": flops_per_token(config, context),
            "mtp_flops_per_token": mtp_flops_per_token(config, context) if config.num_nextn_predict_layers else 0,
            "context": context,
            "kv_elements_per_token": elements_per_token_per_layer(config) * config.num_hidden_layers,
            "kv_bytes_per_token_bf16": cache_bytes(config, 1, "bf16"),
            "activated_fraction": p["activated"] / p["total"]}


def accounting_table(config: ModelConfig) -> tuple[list[dict], str]:
    """mini-v3 beside DeepSeek-V3 (the ``deepseek-v3`` preset): the rows and a printed table."""
    rows = [accounting(config, "mini-v3"), accounting(get_preset("deepseek-v3"), "DeepSeek-V3")]
    keys = [("total_params", "total parameters (MTP excluded)"), ("activated_params", "activated per token"),
            ("activated_fraction", "activated fraction"), ("mtp_params", "MTP module parameters"),
            ("flops_per_token", "training FLOPs/token M (at its context)"), ("context", "pretraining context"),
            ("kv_elements_per_token", "KV cache elements/token (all layers)"),
            ("kv_bytes_per_token_bf16", "KV cache bytes/token (bf16)")]

    def fmt(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) and v < 1 else f"{v:,.0f}" if v < 1e6 else f"{v:.4g}"

    text = [f"{'':42s}{'mini-v3':>14s}{'DeepSeek-V3':>16s}{'ratio':>12s}"]
    for k, label in keys:
        a, b = rows[0][k], rows[1][k]
        text.append(f"{label:42s}{fmt(a):>14s}{fmt(b):>16s}{(b / a if a else float('nan')):>12.3g}")
    return rows, "\n".join(text)
