"""The small building blocks of every DeepSeek decoder: RMSNorm, rotary embeddings, SwiGLU, the loss.

DeepSeek-LLM (§2.2) follows LLaMA: pre-norm blocks with RMSNorm, SwiGLU feed-forward and
rotary position embeddings (RoPE). V2/V3 keep all three.

    RMSNorm(x) = x / sqrt(mean(x²) + ε) · g                          →  RMSNorm
    SwiGLU(x)  = W_down( SiLU(W_gate x) ⊙ (W_up x) )                 →  SwiGLU
    RoPE       rotates each pair (x_a, x_b) of a head by the angle p·θ^(-2i/d)  →  RotaryEmbedding
    CE         mean −log p(target) over the positions whose target is not −100    →  cross_entropy

RoPE pairs come in two layouts: LLaMA and DeepSeek-LLM rotate the two *halves* of a head
(x_i, x_{i+d/2}); DeepSeek-V2/V3's MLA rotates *interleaved* pairs (x_{2i}, x_{2i+1}). Both are
here (``interleaved=``), and both give attention scores that depend only on relative position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (no mean subtraction, no bias), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., d)
        return self.weight * x.to(dtype)


class SwiGLU(nn.Module):
    """The gated feed-forward of LLaMA/DeepSeek: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, linear=nn.Linear):
        super().__init__()
        self.gate_proj = linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, d)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE, looked up by (possibly per-row) position ids.

    ``forward(position_ids)`` with position_ids (B, T) returns cos, sin of shape (B, T, dim/2):
    one angle per rotated pair, shared by every head.
    """

    def __init__(self, dim: int, max_position: int, theta: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"RoPE dimension must be even, got {dim}")
        inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.max_position = max_position

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids.to(torch.float32)[..., None] * self.inv_freq  # (B, T, dim/2)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the last dimension of x (B, H, T, d) by the angles in cos/sin (B, T, d/2)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, d/2)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]  # pairs (x_2i, x_2i+1)
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]  # pairs (x_i, x_i+d/2)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


IGNORE_INDEX = -100  # targets with this value (prompt tokens in SFT, padding) count nowhere in the loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats (fp32) of logits (..., V) against targets (...), skipping
    targets equal to ``IGNORE_INDEX``. The one loss every forward pass in dslearn uses (the model, the
    pipeline stages, the torch-pipelining oracle)."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX)
