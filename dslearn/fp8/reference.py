"""Fine-grained FP8 quantisation and the block-scaled GEMM in plain torch — the spec (DeepSeek-V3 §3.3.2).

FP8 has a tiny range (E4M3: 2^-9 … 448), so a tensor is stored as FP8 values *and* FP32 scales:
x ≈ q · s. DeepSeek-V3 gives every small tile its own scale, so one outlier only costs precision
inside its own tile:

    s = amax(|x_tile|) / 448        q = fp8(x_tile / s)        x̂ = q · s

    tiling              tile       used for                                    scales of an (R, C) tensor
    ------              ----       --------                                    --------------------------
    1×128  (per token)  (1, 128)   activations x and output gradients dy       (R, ⌈C/128⌉)
    128×128 (blocks)    (128, 128) weights W (the same blocks serve W and Wᵀ)  (⌈R/128⌉, ⌈C/128⌉)
    128×1  (per channel)(128, 1)   x and dy as the operands of Wgrad = dyᵀ·x,  (⌈R/128⌉, C)
                                   where the tokens are the contraction axis

The GEMM then multiplies FP8 tiles and applies the scales once per 128-wide slice of K: with
A (M, K) scaled per 1×128 tile and B (N, K) scaled per 128×128 block (or per 1×128 tile),

    C[m, n] = Σ_kb  sA[m, kb] · sB[n, kb] · Σ_{k in block kb} qA[m, k] · qB[n, k]           (1)

The inner sum is what a tensor core computes (FP8 products are exact in FP32); the outer sum is
DeepSeek's "promotion": every N_C = 128 elements of K the partial result leaves the tensor core,
is multiplied by its two scales and is added to an FP32 accumulator on the CUDA cores.

Conventions shared with the Triton kernels (kernels.py), so the two agree bit for bit:
- scale = amax / 448 with IEEE fp32 division; a tile whose scale is 0 (all zeros, or amax so
  small that amax/448 underflows) gets scale 1, so it quantises to exact (signed) zeros.
- NaN anywhere in a tile makes its amax, hence its scale, NaN; ±inf makes the scale inf. Both
  dequantise to NaN for the whole tile: a non-finite input is never silently made finite, and the
  trainer's non-finite check stops the run. Element by element the cast is torch's own, except
  that NaNs computed by the division (x/NaN, inf/inf) are written as the canonical 0x7F: IEEE 754
  leaves the sign of a computed NaN unspecified, and CPUs and GPUs do differ there.
- Shapes that are not multiples of 128 are zero-padded: |0| never raises a tile's amax and a zero
  adds nothing to a dot product, so padding is exact. The padding is cropped off again. What
  cannot be fixed by padding — scales whose shape does not match the tensor and tiling they claim
  to describe, or operands whose K differ — raises ValueError.

    paper                       code
    -----                       ----
    1×128 / 128×128 / 128×1     TILE_ACT / TILE_WEIGHT / TILE_WGRAD
    amax / 448                  quantize_blocks → scales
    N_C = 128                   BLOCK (the K slice after which partial sums are promoted)
    x̂ = q · s                   dequantize_blocks
    equation (1)                block_scaled_gemm_reference
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .formats import FP8Format, get_format

BLOCK = 128  # N_C: tile edge and promotion interval
TILE_ACT = (1, BLOCK)  # activations and output gradients (per token, 128 channels)
TILE_WEIGHT = (BLOCK, BLOCK)  # weights
TILE_WGRAD = (BLOCK, 1)  # Wgrad operands: 128 tokens of one channel
CANONICAL_NAN = 0x7F  # the bits every NaN *computed* inside a tile is written as


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_2d(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")


def scale_shape(shape: tuple[int, int], tile: tuple[int, int]) -> tuple[int, int]:
    """Shape of the scale tensor of a (R, C) tensor quantised in (tr, tc) tiles."""
    return _ceil_div(shape[0], tile[0]), _ceil_div(shape[1], tile[1])


@functools.lru_cache(maxsize=4)
def _value_table(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()  # code → value


def fp8_to_float(q: torch.Tensor) -> torch.Tensor:
    """FP8 → fp32 (exact) by looking each code up in a 256-entry table: the same values as
    ``q.float()``, about twice as fast on CPU, which matters when FP8Linear trains through this path."""
    if q.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        return q.float()
    return _value_table(q.dtype).to(q.device).take(q.view(torch.uint8).long())


def _pad_to(x: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    R, C = x.shape
    return F.pad(x, (0, (-C) % tile[1], 0, (-R) % tile[0]))  # zeros on the right and bottom


def tile_scales(amax: torch.Tensor, fmt: str | FP8Format = "e4m3") -> torch.Tensor:
    """amax → FP32 scale amax / max_fp8, with 1 where that is 0 (all-zero tiles). NaN/inf stay."""
    s = amax.float() / get_format(fmt).max
    return torch.where(s == 0, torch.ones_like(s), s)


def quantize_blocks(x: torch.Tensor, tile: tuple[int, int] = TILE_ACT,
                    fmt: str | FP8Format = "e4m3") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a 2-D tensor in (tr, tc) tiles: returns q (R, C) FP8 and scales (⌈R/tr⌉, ⌈C/tc⌉) FP32."""
    _check_2d(x, "x")
    f = get_format(fmt)
    R, C = x.shape
    tr, tc = tile
    xp = _pad_to(x.float(), tile).contiguous()  # (R', C'), multiples of the tile
    Rb, Cb = xp.shape[0] // tr, xp.shape[1] // tc
    tiles = xp.view(Rb, tr, Cb, tc)  # tile (i, j) is tiles[i, :, j, :]
    amax = tiles.abs().amax(dim=(1, 3))  # (Rb, Cb); NaN propagates
    s = tile_scales(amax, f)  # (Rb, Cb)
    y = tiles / s[:, None, :, None]  # IEEE division
    q = y.to(f.dtype).view(torch.uint8)  # torch's cast
    q = torch.where(torch.isnan(y), CANONICAL_NAN, q).view(f.dtype)  # NaN from the division: its sign is unspecified
    return q.view(xp.shape)[:R, :C].contiguous(), s


def dequantize_blocks(q: torch.Tensor, s: torch.Tensor, tile: tuple[int, int] = TILE_ACT,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x̂ = q · s, each scale spread over its tile → a tensor of q's shape (fp32, or float64 exactly)."""
    _check_2d(q, "q")
    want = scale_shape(tuple(q.shape), tile)
    if tuple(s.shape) != want:
        raise ValueError(f"scales of shape {tuple(s.shape)} do not describe a {tuple(q.shape)} tensor in "
                         f"{tile[0]}×{tile[1]} tiles (expected {want})")
    full = s.to(dtype).repeat_interleave(tile[0], 0).repeat_interleave(tile[1], 1)  # (R', C')
    return fp8_to_float(q).to(dtype) * full[: q.shape[0], : q.shape[1]]


def quantize_per_tensor(x: torch.Tensor, fmt: str | FP8Format = "e4m3") -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor (the coarse baseline DeepSeek improves on): q, scale (1, 1)."""
    f = get_format(fmt)
    s = tile_scales(x.float().abs().amax().reshape(1, 1), f)
    return (x.float() / s).to(f.dtype), s


def fake_quantize(x: torch.Tensor, tile: tuple[int, int] | None = TILE_ACT, fmt: str | FP8Format = "e4m3"):
    """Quantise-dequantise round trip in fp32 (tile=None: per-tensor) — for error studies."""
    if tile is None:
        q, s = quantize_per_tensor(x, fmt)
        return q.float() * s
    q, s = quantize_blocks(x, tile, fmt)
    return dequantize_blocks(q, s, tile)


# ----------------------------------------------------------------------------------------
def _check_gemm_operands(a_q, a_s, b_q, b_s) -> tuple[int, int, int, int]:
    """Validate equation (1)'s operands; returns (M, N, K, rows of B per B scale: 1 or 128)."""
    _check_2d(a_q, "a_q")
    _check_2d(b_q, "b_q")
    (M, K), (N, Kb_) = a_q.shape, b_q.shape
    if K != Kb_:
        raise ValueError(f"a_q is (M={M}, K={K}) but b_q is (N={N}, K={Kb_}): both must hold K in their last dim")
    kb = _ceil_div(K, BLOCK)
    if tuple(a_s.shape) != (M, kb):
        raise ValueError(f"a_s must hold one scale per 1×{BLOCK} tile of a_q: expected ({M}, {kb}), "
                         f"got {tuple(a_s.shape)}")
    if tuple(b_s.shape) == (_ceil_div(N, BLOCK), kb):
        b_rows = BLOCK  # 128×128 weight blocks
    elif tuple(b_s.shape) == (N, kb):
        b_rows = 1  # 1×128 tiles (Wgrad: both operands are per-row along the token axis)
    else:
        raise ValueError(f"b_s must hold one scale per {BLOCK}×{BLOCK} block ({_ceil_div(N, BLOCK)}, {kb}) or per "
                         f"1×{BLOCK} tile ({N}, {kb}) of b_q (N={N}, K={K}); got {tuple(b_s.shape)}")
    return M, N, K, b_rows


def block_scaled_gemm_reference(a_q: torch.Tensor, a_s: torch.Tensor, b_q: torch.Tensor,
                                b_s: torch.Tensor) -> torch.Tensor:
    """Equation (1): C = A·Bᵀ from FP8 operands and their scales, promoted to fp32 every 128 of K.

    a_q (M, K) FP8 with a_s (M, ⌈K/128⌉); b_q (N, K) FP8 with b_s (⌈N/128⌉, ⌈K/128⌉) for 128×128
    blocks or (N, ⌈K/128⌉) for 1×128 tiles. Returns C (M, N) fp32."""
    M, N, K, b_rows = _check_gemm_operands(a_q, a_s, b_q, b_s)
    sb = b_s.float().repeat_interleave(b_rows, 0)[:N] if b_rows > 1 else b_s.float()  # (N, Kb)
    a = F.pad(fp8_to_float(a_q), (0, (-K) % BLOCK))  # (M, K'), FP8 values are exact in fp32
    b = F.pad(fp8_to_float(b_q), (0, (-K) % BLOCK))  # (N, K')
    acc = torch.zeros(M, N, dtype=torch.float32, device=a_q.device)
    for kb in range(a.shape[1] // BLOCK):
        ks = slice(kb * BLOCK, (kb + 1) * BLOCK)
        partial = a[:, ks] @ b[:, ks].T  # (M, N): the tensor core's 128-long FP8 dot products
        acc += partial * (a_s[:, kb].float()[:, None] * sb[:, kb][None, :])  # promote with the scales
    return acc


def gemm_oracle_float64(a_q, a_s, b_q, b_s) -> torch.Tensor:
    """The oracle: dequantise both operands, multiply in float64. Returns (M, N) float64."""
    _, _, _, b_rows = _check_gemm_operands(a_q, a_s, b_q, b_s)
    a = dequantize_blocks(a_q, a_s, TILE_ACT, torch.float64)  # q·s is exact in float64
    b = dequantize_blocks(b_q, b_s, (b_rows, BLOCK), torch.float64)
    return a @ b.T


def gemm_error_bound(a_q, a_s, b_q, b_s) -> torch.Tensor:
    """A rigorous bound on |C_fp32 − C_exact| for equation (1) computed in fp32: each output is a sum
    of ⌈K/128⌉ scaled partials, each a 128-term fp32 dot product, so with u = 2^-24 the error is
    at most γ_(128 + ⌈K/128⌉ + 2) · (|Â|·|B̂|ᵀ), where γ_n = n·u/(1 − n·u). Returns (M, N) float64."""
    _, _, K, b_rows = _check_gemm_operands(a_q, a_s, b_q, b_s)
    n = BLOCK + _ceil_div(K, BLOCK) + 2
    u = 2.0 ** -24
    gamma = n * u / (1 - n * u)
    a = dequantize_blocks(a_q, a_s, TILE_ACT, torch.float64).abs()
    b = dequantize_blocks(b_q, b_s, (b_rows, BLOCK), torch.float64).abs()
    return gamma * (a @ b.T)
