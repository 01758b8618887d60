"""Experts: fine-grained routed experts and shared experts (DeepSeekMoE, V2 §2.2.1).

A conventional MoE layer replaces the FFN with N experts of the FFN's width and sends each token
to K of them. DeepSeekMoE changes two things:

- **Fine-grained segmentation.** Split every expert into m smaller ones (width d_ff/m) and activate
  m·K of them. Parameters and FLOPs stay the same, but a token can now combine
  C(mN, mK) instead of C(N, K) expert sets, so experts can specialise more narrowly.
  (N=16, K=2 → 120 combinations; m=4: N=64, K=8 → 4.4 billion.)
- **Shared experts.** N_s experts that *every* token passes through hold the common knowledge, so
  the routed ones need not each relearn it. To keep the activated compute fixed, K_r drops by N_s.

    h'_t = u_t + Σ_{i≤N_s} FFN_i^(s)(u_t) + Σ_{i≤N_r} g_{i,t} FFN_i^(r)(u_t)

``fine_grained(N, K, d_ff, m, n_shared)`` turns a coarse layout into the matching fine-grained one.

Layouts follow Hugging Face's ``DeepseekV3MoE`` so a model exports as is:

    FFN_i^(r): W1_i; W3_i (gate; up)  →  experts.gate_up_proj  (N_r, 2·I, d)   rows [gate | up]
               W2_i (down)            →  experts.down_proj     (N_r, d, I)
    Σ_{i≤N_s} FFN_i^(s)               →  shared_experts.{gate,up,down}_proj — ONE SwiGLU of width N_s·I
                                          (N_s experts side by side sum to exactly that)
    I                                 →  moe_intermediate_size

Older checkpoints (DeepSeek's own release, transformers < 5) store one Linear per expert,
``experts.{i}.gate_proj.weight`` etc.; ``fuse_expert_weights`` / ``split_expert_weights`` convert
between the two (the rename table is ``PER_EXPERT_NAMES``).
"""

from __future__ import annotations

import functools
import math
import re

import torch
from torch import nn

from ..config import ModelConfig
from ..fp8.linear import fp8_expert_linear, fp8_linear
from ..layers.weightgrad import WeightGradStore, expert_matmul
from .dispatch import DISPATCH, grouped_dispatch, loop_dispatch

PER_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")  # experts.{i}.<name>.weight


def expert_dispatch(config: ModelConfig, store: WeightGradStore | None = None):
    """The dispatch function ``config`` asks for: ``moe_impl`` ("grouped" or "loop", ``DISPATCH``) with the
    matrix products of ``linear_impl`` ("torch", or "fp8": every expert's GEMMs in FP8 on ``fp8_backend``).
    With ``store`` (the pipeline runtime's B/W split) the grouped torch path defers its weight gradients;
    FP8 experts compute theirs in B."""
    dispatch = DISPATCH[config.moe_impl]
    if config.linear_impl == "fp8":
        backend = config.fp8_backend
        if dispatch is grouped_dispatch:
            return functools.partial(grouped_dispatch, matmul=functools.partial(fp8_expert_linear, backend=backend))
        return functools.partial(loop_dispatch, linear=functools.partial(fp8_linear, backend=backend))
    if store is not None and dispatch is grouped_dispatch:
        return functools.partial(grouped_dispatch, matmul=functools.partial(expert_matmul, store=store))
    return dispatch


class RoutedExperts(nn.Module):
    """N_r SwiGLU experts stored as two 3-D tensors, run by a dispatch function (``expert_dispatch``)."""

    def __init__(self, n_experts: int, hidden_size: int, intermediate_size: int, dispatch=grouped_dispatch):
        super().__init__()
        self.dispatch = dispatch
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * intermediate_size, hidden_size))  # (E, 2I, d)
        self.down_proj = nn.Parameter(torch.empty(n_experts, hidden_size, intermediate_size))  # (E, d, I)

    @classmethod
    def from_config(cls, config: ModelConfig, store: WeightGradStore | None = None) -> RoutedExperts:
        return cls(config.n_routed_experts, config.hidden_size, config.moe_intermediate_size,
                   expert_dispatch(config, store))

    def forward(self, x, topk_idx, topk_weight, keep=None):
        """x (N, d), topk_idx/topk_weight (N, K), keep (N, K) bool or None → (N, d)."""
        return self.dispatch(x, topk_idx, topk_weight, self.gate_up_proj, self.down_proj, keep)


def fine_grained(n_experts: int, top_k: int, d_ff: int, m: int, n_shared: int = 0) -> dict:
    """Split N experts of width d_ff into m·N of width d_ff/m; N_s of the activated ones become shared.

    Returns ModelConfig fields. Total and activated expert parameters are unchanged."""
    if d_ff % m:
        raise ValueError(f"m={m} must divide the expert width d_ff={d_ff}")
    if n_shared > m * top_k - 1:
        raise ValueError(f"n_shared={n_shared} leaves no routed expert to activate (m·K={m * top_k})")
    return dict(n_routed_experts=m * n_experts - n_shared, num_experts_per_tok=m * top_k - n_shared,
                moe_intermediate_size=d_ff // m, n_shared_experts=n_shared)


def combinations(n_experts: int, top_k: int) -> int:
    """How many different expert sets a token can use: C(N, K)."""
    return math.comb(n_experts, top_k)


def split_expert_weights(state: dict, prefix: str = "") -> dict:
    """Fused ``{prefix}experts.gate_up_proj`` / ``down_proj`` → per-expert ``experts.{i}.*.weight``."""
    out = {}
    for k, v in state.items():
        if k == f"{prefix}experts.gate_up_proj":
            width = v.shape[1] // 2
            for i in range(v.shape[0]):
                out[f"{prefix}experts.{i}.gate_proj.weight"] = v[i, :width].clone()
                out[f"{prefix}experts.{i}.up_proj.weight"] = v[i, width:].clone()
        elif k == f"{prefix}experts.down_proj":
            for i in range(v.shape[0]):
                out[f"{prefix}experts.{i}.down_proj.weight"] = v[i].clone()
        else:
            out[k] = v
    return out


def fuse_expert_weights(state: dict) -> dict:
    """Per-expert ``…experts.{i}.{gate,up,down}_proj.weight`` → fused ``…experts.gate_up_proj/down_proj``."""
    pattern = re.compile(r"^(.*experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        if m and not m.group(1).endswith("shared_experts"):
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = v
        else:
            out[k] = v
    for base, experts in groups.items():
        ids = sorted(experts)
        if ids != list(range(len(ids))):
            raise KeyError(f"{base}: expert indices {ids} are not 0..{len(ids) - 1}")
        out[f"{base}.gate_up_proj"] = torch.stack(
            [torch.cat([experts[i]["gate_proj"], experts[i]["up_proj"]]) for i in ids])  # (E, 2I, d)
        out[f"{base}.down_proj"] = torch.stack([experts[i]["down_proj"] for i in ids])  # (E, d, I)
    return out
