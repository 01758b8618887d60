"""Exercises for notebook 05: FP8 rounding, block quantisation, the block-scaled GEMM, the Wgrad tiling.

Import this module (``import dslearn.exercises.fp8``) to register them, then ``check(name, fn)``.
"""

from __future__ import annotations

import torch

from ..fp8 import reference as ref
from ..fp8.formats import edge_case_inputs, to_fp8
from .core import exercise


def _bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


@exercise("e5m2_round", hint="like E4M3 but 2 mantissa bits and bias 15: step = 2^(e−3) for x = m·2^e (frexp), "
                             "never below 2^-16; torch.round rounds ties to even; |x| ≥ 61440 becomes ±inf")
def _e5m2_round(fn) -> str:
    """e5m2_round(x) → x rounded to the nearest E5M2 value (fp32 tensor), as torch.float8_e5m2 rounds."""
    x = edge_case_inputs()
    got = fn(x.clone())
    assert isinstance(got, torch.Tensor) and got.shape == x.shape, "return a tensor of the input's shape"
    want = to_fp8(x, "e5m2").float()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got.float()), nan), "NaN in must give NaN out, and nothing else may be NaN"
    bad = (got.float() != want) & ~nan
    if bad.any():
        i = bad.nonzero()[0, 0].item()
        raise AssertionError(f"{int(bad.sum())} of {x.numel()} values differ, e.g. x = {x[i].item()!r}: "
                             f"got {got[i].item()!r}, expected {want[i].item()!r}")
    return f"all {x.numel()} edge cases (ties, subnormals, overflow, ±0, inf, NaN) round like torch's cast"


@exercise("quantize_128x128", hint="pad W with zeros to multiples of 128, view it as (Nb, 128, Kb, 128), amax over "
                                   "dims 1 and 3, scale = amax/448 (1 where 0), q = (w/scale).to(float8_e4m3fn), crop")
def _quantize_128x128(fn) -> str:
    """quantize_128x128(w) → (q (N, K) float8_e4m3fn, scales (⌈N/128⌉, ⌈K/128⌉) fp32), any N and K."""
    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(256, 384, generator=g), torch.randn(130, 200, generator=g) * 1e-3,
             torch.randn(64, 129, generator=g) * 300]
    cases[1][:, :128] = 0.0  # an all-zero block
    for i, w in enumerate(cases):
        out = fn(w.clone())
        assert isinstance(out, tuple) and len(out) == 2, "return (q, scales)"
        q, s = out
        q0, s0 = ref.quantize_blocks(w, ref.TILE_WEIGHT)
        assert q.dtype == torch.float8_e4m3fn, f"case {i}: q must be torch.float8_e4m3fn, got {q.dtype}"
        assert tuple(q.shape) == tuple(w.shape), f"case {i}: q has shape {tuple(q.shape)}, expected {tuple(w.shape)}"
        assert tuple(s.shape) == tuple(s0.shape), f"case {i}: scales {tuple(s.shape)}, expected {tuple(s0.shape)}"
        assert torch.equal(s.float(), s0), f"case {i} ({tuple(w.shape)}): scales differ, max diff " \
                                           f"{(s.float() - s0).abs().max().item():.3g}"
        diff = (_bits(q) != _bits(q0)).sum().item()
        assert diff == 0, f"case {i} ({tuple(w.shape)}): {diff} FP8 values differ"
    return f"bit-exact with dslearn on {len(cases)} weights, including padding and an all-zero block"


@exercise("block_gemm", hint="for each 128-wide K slice kb: partial = A_kb·B_kbᵀ (fp32), then "
                             "C += partial · a_s[:, kb, None] · b_s[n // 128, kb] (the promotion)")
def _block_gemm(fn) -> str:
    """block_gemm(a_q, a_s, b_q, b_s) → C = A·Bᵀ (fp32) for 1×128 activation tiles and 128×128 weight blocks."""
    g = torch.Generator().manual_seed(1)
    for M, N, K in [(64, 128, 256), (128, 256, 512)]:
        a, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) * 0.05
        a[0, :64] *= 500  # an outlier in one tile
        a_q, a_s = ref.quantize_blocks(a, ref.TILE_ACT)
        b_q, b_s = ref.quantize_blocks(b, ref.TILE_WEIGHT)
        c = fn(a_q, a_s, b_q, b_s)
        assert isinstance(c, torch.Tensor) and tuple(c.shape) == (M, N), f"expected a ({M}, {N}) tensor"
        oracle = ref.gemm_oracle_float64(a_q, a_s, b_q, b_s)
        rel = ((c.double() - oracle).abs().max() / oracle.abs().max()).item()
        assert rel < 1e-5, f"M={M} N={N} K={K}: max relative error {rel:.3g} vs the float64 oracle (want < 1e-5)"
    return "matches dequantise-then-float64 to fp32 accuracy, outlier tile included"


@exercise("wgrad_fp8", hint="dW = dyᵀ·x contracts over the T tokens: quantise dy.t() and x.t() in 1×128 tiles "
                            "(that is, dy and x in 128×1 tiles) and multiply them with a block-scaled GEMM")
def _wgrad(fn) -> str:
    """wgrad_fp8(x (T, K), dy (T, N)) → dW (N, K) = dyᵀ·x with both operands in FP8, 128×1 tiles."""
    g = torch.Generator().manual_seed(2)
    T, K, N = 256, 128, 256
    x, dy = torch.randn(T, K, generator=g), torch.randn(T, N, generator=g)
    x[:, 5] *= 100  # an outlier channel: 128×1 tiles give it its own scales
    got = fn(x.clone(), dy.clone())
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == (N, K), f"expected a ({N}, {K}) tensor"

    def fq(t, tile):
        return ref.dequantize_blocks(*ref.quantize_blocks(t, tile), tile, torch.float64)

    want = fq(dy, ref.TILE_WGRAD).T @ fq(x, ref.TILE_WGRAD)
    rel = ((got.double() - want).abs().max() / want.abs().max()).item()
    if rel > 1e-5:
        wrong = fq(dy, ref.TILE_ACT).T @ fq(x, ref.TILE_ACT)
        if ((got.double() - wrong).abs().max() / wrong.abs().max()).item() < 1e-5:
            raise AssertionError("this is dyᵀ·x with 1×128 tiles along the channels; Wgrad needs the tiles along "
                                 "the tokens (128×1)")
        raise AssertionError(f"max relative error {rel:.3g} vs dyᵀ·x from 128×1-tiled FP8 operands (want < 1e-5)")
    return "dyᵀ·x from 128×1-tiled FP8 operands, exactly DeepSeek's Wgrad"
