"""YaRN: stretching RoPE to longer contexts (DeepSeek-V3 §4.3, Peng et al. 2023).

V3 pre-trains at 4K tokens, then extends to 32K and 128K in two short phases with YaRN applied to
the decoupled shared key k^R only (the one place MLA uses RoPE). YaRN changes three things:

1. Frequencies. Pair i of a d-dim RoPE turns at θ^(-2i/d) radians per token, i.e. completes
   r_i = L / (2π θ^(2i/d)) turns over the original context L. Pairs that turn many times
   (r_i > β_fast = 32) already see every relative distance: they are kept (extrapolation). Pairs
   that turn less than once (r_i < β_slow = 1) have never seen long distances: their frequency is
   divided by the factor s (interpolation, s = 40 in V3). Between them a linear ramp mixes the two:

       inv_freq_i = (1 − γ_i) · θ^(-2i/d) / s  +  γ_i · θ^(-2i/d),   γ_i = 1 − ramp_i   (γ = 1: keep)

2. Attention temperature. A longer context flattens softmax; YaRN sharpens it by
   √t = 0.1·ln(s) + 1. DeepSeek writes this as ``mscale``: the softmax scale becomes
   mscale² / √(d_h + d_h^R), with mscale = 0.1·mscale_all_dim·ln(s) + 1 (V3: s = 40,
   mscale_all_dim = 1 → ×1.874 on every attention logit).
3. The cos/sin tables are multiplied by mscale(s, mscale) / mscale(s, mscale_all_dim), which is 1 for
   V3's config (both are 1.0).

Paper/config symbol → code:

    s                        rope_scaling["factor"]
    L (original context)     rope_scaling["original_max_position_embeddings"]
    β_fast, β_slow           rope_scaling["beta_fast"], rope_scaling["beta_slow"]
    √t                       yarn_get_mscale(s, mscale_all_dim)

The ``rope_scaling`` dict is parsed and validated in one place, ``dslearn.config.yarn_settings`` (called
when the config is made, so a bad key fails there); this module reads the defaults-filled settings
through it. The formulas follow DeepSeek's released inference code and Hugging Face's ``_compute_yarn_parameters``
(tests compare against the latter).
"""

from __future__ import annotations

import math

import torch

from ..config import yarn_settings
from ..layers import RotaryEmbedding


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature √t = 0.1·mscale·ln(s) + 1 (1 when s ≤ 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_inv_freq(dim: int, theta: float, factor: float, original_max_position: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
    """Per-pair inverse frequencies (dim/2,) after YaRN's ramp between keeping and dividing by s."""

    def pair_index_for(turns: float) -> float:  # the pair i that completes `turns` turns over L
        return dim * math.log(original_max_position / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(pair_index_for(beta_fast)), 0)  # pairs below this turn fast: keep
    high = min(math.ceil(pair_index_for(beta_slow)), dim - 1)  # pairs above this turn slowly: interpolate
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    base = theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # 0 → keep, 1 → /s
    keep = 1 - ramp
    return (1.0 / (factor * base)) * (1 - keep) + (1.0 / base) * keep


class YarnRotaryEmbedding(RotaryEmbedding):
    """RotaryEmbedding with YaRN frequencies and cos/sin multiplied by ``attention_factor``."""

    def __init__(self, dim: int, max_position: int, theta: float, yarn: dict):
        super().__init__(dim, max_position, theta)
        inv_freq = yarn_inv_freq(dim, theta, yarn["factor"], yarn["original_max_position_embeddings"],
                                 yarn["beta_fast"], yarn["beta_slow"])
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_factor = (yarn_get_mscale(yarn["factor"], yarn["mscale"])
                                 / yarn_get_mscale(yarn["factor"], yarn["mscale_all_dim"]))

    def forward(self, position_ids):
        cos, sin = super().forward(position_ids)  # (B, T, dim/2) each
        return cos * self.attention_factor, sin * self.attention_factor


def build_rotary(config, rope_dim: int) -> RotaryEmbedding:
    """Plain RoPE tables, or YaRN-scaled ones when ``config.rope_scaling`` asks for them."""
    yarn = yarn_settings(config)
    if yarn is None:
        return RotaryEmbedding(rope_dim, config.max_position_embeddings, config.rope_theta)
    return YarnRotaryEmbedding(rope_dim, config.max_position_embeddings, config.rope_theta, yarn)


def softmax_scale(config, qk_head_dim: int) -> float:
    """1/√(d_h + d_h^R), times mscale² under YaRN (V3 §4.3)."""
    scale = qk_head_dim ** -0.5
    yarn = yarn_settings(config)
    if yarn is not None and yarn["mscale_all_dim"]:
        scale *= yarn_get_mscale(yarn["factor"], yarn["mscale_all_dim"]) ** 2
    return scale
