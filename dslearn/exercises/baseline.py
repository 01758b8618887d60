"""Exercises for notebook 00: the pieces of the DeepSeek-LLM baseline."""

from __future__ import annotations

import math

import torch

from ..data.tokenizer import bits_per_byte
from ..layers import RMSNorm, apply_rotary
from .core import assert_tensor_close, exercise


@exercise("rmsnorm", hint="y = x / sqrt(mean(x**2 over the last dim) + eps) * weight — eps inside the sqrt, "
                          "no mean subtraction")
def _rmsnorm(fn) -> str:
    """rms_norm(x, weight, eps) → the RMSNorm of the last dimension."""
    g = torch.Generator().manual_seed(0)
    cases = [((2, 3, 8), 1e-6), ((5, 16), 1e-2), ((1, 1, 32), 1e-6), ((4, 8), 10.0)]
    for i, (shape, eps) in enumerate(cases):
        x = torch.randn(*shape, generator=g) * (i + 1)
        w = torch.randn(shape[-1], generator=g)
        ref = RMSNorm(shape[-1], eps)
        with torch.no_grad():
            ref.weight.copy_(w)
            want = ref(x)
        assert_tensor_close(fn(x.clone(), w.clone(), eps), want, f"case {i} (shape {shape}, eps={eps:g})")
    return f"matches dslearn's RMSNorm on {len(cases)} cases"


@exercise("bits_per_byte", hint="divide nats by ln 2 to get bits, then by the bytes each token stands for")
def _bpb(fn) -> str:
    """bits_per_byte(loss_nats_per_token, bytes_per_token) → bits per byte."""
    cases = [(math.log(256), 1.0), (1.0, 1.0), (2.0, 4.0), (0.0, 3.0)]
    for loss, bpt in cases:
        got, want = fn(loss, bpt), bits_per_byte(loss, bpt)
        assert isinstance(got, (int, float)), f"expected a float, got {type(got).__name__}"
        assert abs(got - want) < 1e-9, f"bits_per_byte({loss:.4g}, {bpt}) = {got!r}, expected {want:.6g}"
    return f"correct on {len(cases)} cases (a uniform guess over bytes is exactly 8 bits/byte)"


@exercise("rope", hint="split the head into halves a, b; return cat(a·cos − b·sin, a·sin + b·cos) with "
                       "angle = position · theta^(−2i/d)")
def _rope(fn) -> str:
    """rope(x, positions, theta) → x (B, H, T, d) rotated by RoPE, halves layout (LLaMA/DeepSeek-LLM)."""
    g = torch.Generator().manual_seed(1)
    B, H, T, d, theta = 2, 3, 5, 8, 10000.0
    x = torch.randn(B, H, T, d, generator=g)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[..., None] * inv
    want = apply_rotary(x, ang.cos().float(), ang.sin().float())
    got = fn(x.clone(), pos.clone(), theta)
    assert_tensor_close(got, want, "rotated tensor", atol=1e-4)
    q, k = fn(x, pos, theta), fn(x.flip(2), pos, theta)  # relative position: scores depend on i − j only
    s1 = q[0, 0, 1] @ k[0, 0, 0]
    shifted = fn(x, pos + 5, theta)[0, 0, 1] @ fn(x.flip(2), pos + 5, theta)[0, 0, 0]
    assert abs(s1 - shifted) < 1e-3, "shifting every position by the same offset changed a query·key score"
    return "matches dslearn's apply_rotary, and scores depend only on relative position"
