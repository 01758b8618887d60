"""The FP8 recipe as Triton kernels: one source for the GPU and for Triton's CPU interpreter.

Three kernels, each the twin of a plain-torch function that is its spec (tests hold them together):

    kernel                 what it does                                         spec
    ------                 ------------                                         ----
    _encode_fp8 (device)   fp32 → FP8 bits with integer arithmetic, RNE,        formats.encode_fp8_bits
                           E4M3 saturating at ±448, NaN → 0x7F
    _quantize_kernel       amax per tile → scale = amax/448 → q = x/scale        reference.quantize_blocks
                           for 1×128, 128×1 and 128×128 tiles
    _block_gemm_kernel     C = A·Bᵀ from FP8 tiles: tl.dot over each 128-wide    reference.block_scaled_gemm_reference
                           K slice (the tensor core), then × scales and += into
                           an FP32 accumulator (DeepSeek's promotion, N_C = 128)

Why the kernel never casts to FP8: on a GPU ``x.to(tl.float8e4nv)`` is right, but the interpreter's
cast is wrong in several ways (triton issue 8322). Computing the bits ourselves and storing them
as uint8 (viewed as ``torch.float8_e4m3fn`` on the host) is right in both places. Scales use
``tl.div_rn`` (IEEE-rounded division; a plain ``/`` is approximate on GPUs), so they match torch's
``amax / 448`` bit for bit. The GEMM writes fp32 (bf16 outputs are wrong in the interpreter).

How this file is loaded (see backend.py). ``import triton`` happens only here, and this module is
imported only by backend.py when Triton is installed. Rather than relying on ``TRITON_INTERPRET=1``
being set before anything imports triton (fragile when several test files share one pytest
process), backend.py loads this file *twice* when needed, as two independent modules: once with
``_DSLEARN_INTERPRET = True`` injected, where ``_jit`` wraps each function in Triton's
``InterpretedFunction`` explicitly, and once normally, where ``_jit`` is ``triton.jit`` (which itself
honours TRITON_INTERPRET). Each copy has its own globals, so a kernel always calls the device
function of its own flavour.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

INTERPRET = bool(globals().get("_DSLEARN_INTERPRET", False))

if INTERPRET:
    from triton.runtime.interpreter import InterpretedFunction

    def _jit(fn):
        return InterpretedFunction(fn)
else:
    _jit = triton.jit


@_jit
def _encode_fp8(x, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, MAX_CODE: tl.constexpr, SATURATE: tl.constexpr):
    """fp32 tensor → FP8 bit patterns (uint8 tensor). Line for line formats.encode_fp8_bits."""
    MAN_SHIFT: tl.constexpr = 23 - MAN_BITS
    bits = x.to(tl.uint32, bitcast=True)
    sign = bits >> 31
    a = bits & 0x7FFFFFFF  # |x| as an unsigned integer
    exp_field = a >> 23
    # 1. normal results: round to MAN_BITS, ties to even; carries ripple into the exponent
    lsb = (a >> MAN_SHIFT) & 1
    rounded = a + ((1 << (MAN_SHIFT - 1)) - 1) + lsb
    normal = (rounded >> MAN_SHIFT) - ((127 - BIAS) << MAN_BITS)  # wraps for tiny a: not selected then
    # 2. subnormal results: units of 2^(1 − BIAS − MAN_BITS), rounded to nearest even by hand
    sig = (a & 0x7FFFFF) | 0x800000
    shift = (151 - BIAS - MAN_BITS) - exp_field.to(tl.int32)
    shift = tl.minimum(tl.maximum(shift, 1), 31).to(tl.uint32)
    one = tl.full(shift.shape, 1, tl.uint32)
    q = sig >> shift
    rem = sig & ((one << shift) - 1)
    half = one << (shift - 1)
    q += ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(tl.uint32)
    code = tl.where(exp_field < 127 + 1 - BIAS, q, normal)
    # 3. overflow: saturate (E4M3fn) or inf (E5M2, code 0x7C)
    if SATURATE:
        code = tl.minimum(code, MAX_CODE)
    else:
        code = tl.where(code > MAX_CODE, 0x7C, code)
    # 4. NaN → 0x7F with the sign kept
    code = tl.where(a > 0x7F800000, 0x7F, code)
    return (code | (sign << 7)).to(tl.uint8)


@_jit
def _reduce_max(x, axis: tl.constexpr):
    """tl.max without its @jit wrapper (see below). NaN handling differs by backend: callers handle NaN."""
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@_jit
def _reduce_sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


# tl.max, tl.sum, tl.zeros and tl.cdiv are themselves @triton.jit functions, fixed to the compiled or
# the interpreted flavour when triton is first imported. The kernels below use builtins only
# (tl.reduce with the standard combine functions, which the interpreter maps onto numpy; tl.full;
# integer arithmetic), so the same source also runs in an explicitly interpreted copy.
@_jit
def _encode_kernel(x_ptr, out_ptr, n, MAN_BITS: tl.constexpr, BIAS: tl.constexpr, MAX_CODE: tl.constexpr,
                   SATURATE: tl.constexpr, BLOCK: tl.constexpr):
    """Element-wise fp32 → FP8 bits (no scaling): the encoder on its own, for the bit-exact tests."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, _encode_fp8(x, MAN_BITS, BIAS, MAX_CODE, SATURATE), mask=mask)


@_jit
def _quantize_kernel(x_ptr, q_ptr, s_ptr, R, C, stride_xr, stride_xc, stride_sr, stride_sc, FP8_MAX,
                     MAN_BITS: tl.constexpr, BIAS: tl.constexpr, MAX_CODE: tl.constexpr, SATURATE: tl.constexpr,
                     BR: tl.constexpr, BC: tl.constexpr, REDUCE: tl.constexpr):
    """One program quantises a (BR, BC) slab of x (R, C). REDUCE says which tiles the slab holds:
    1 → BR tiles of 1×BC (one scale per row), 0 → BC tiles of BR×1 (one per column), 2 → one BR×BC block."""
    # 1. load the slab; out-of-range elements read as 0, which never raises an amax
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    x = tl.load(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
    ax = tl.abs(x)
    isnan = (x != x).to(tl.int32)
    # 2. amax per tile; NaN must win (as in torch.amax) whatever max does with NaN on this backend
    if REDUCE == 1:
        amax = tl.where(_reduce_sum(isnan, 1) > 0, float("nan"), _reduce_max(ax, 1))  # (BR,)
    elif REDUCE == 0:
        amax = tl.where(_reduce_sum(isnan, 0) > 0, float("nan"), _reduce_max(ax, 0))  # (BC,)
    else:
        nan_count = _reduce_sum(_reduce_sum(isnan, 1), 0)
        amax = tl.where(nan_count > 0, float("nan"), _reduce_max(_reduce_max(ax, 1), 0))  # scalar
    # 3. scale = amax / 448 (IEEE division); 0 → 1 so all-zero tiles stay exact zeros
    scale = tl.div_rn(amax, FP8_MAX)
    scale = tl.where(scale == 0.0, 1.0, scale)
    # 4. divide by the scale, encode, store the bits and the scales
    if REDUCE == 1:
        y = tl.div_rn(x, scale[:, None])
        tl.store(s_ptr + (tl.program_id(0) * BR + tl.arange(0, BR)) * stride_sr + tl.program_id(1) * stride_sc,
                 scale, mask=rows < R)
    elif REDUCE == 0:
        y = tl.div_rn(x, scale[None, :])
        tl.store(s_ptr + tl.program_id(0) * stride_sr + cols * stride_sc, scale, mask=cols < C)
    else:
        y = tl.div_rn(x, scale)
        tl.store(s_ptr + tl.program_id(0) * stride_sr + tl.program_id(1) * stride_sc, scale)
    bits = _encode_fp8(y, MAN_BITS, BIAS, MAX_CODE, SATURATE)
    bits = tl.where(y != y, 0x7F, bits).to(tl.uint8)  # a computed NaN's sign is unspecified: canonical 0x7F
    tl.store(q_ptr + rows[:, None] * C + cols[None, :], bits, mask=mask)


@_jit
def _block_gemm_kernel(a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, M, N, K,
                       stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
                       stride_asm, stride_ask, stride_bsn, stride_bsk,
                       B_SCALE_ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
    """C (M, N) fp32 = Σ_kb sA[:, kb] sB[:, kb] · (qA[:, kb-slice] · qB[:, kb-slice]ᵀ), equation (1).
    BLOCK_K must equal the scale block (128). B_SCALE_ROWS: 128 (weight blocks) or 1 (per-row tiles)."""
    # 1. which output tile: grouped ordering, so neighbouring programs share rows of A in L2
    pid = tl.program_id(0)
    num_m, num_n = (M + BLOCK_M - 1) // BLOCK_M, (N + BLOCK_N - 1) // BLOCK_N
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % group_size
    pid_n = (pid % (GROUP_M * num_n)) // group_size
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn  # (BLOCK_K, BLOCK_N): Bᵀ
    as_ptrs = as_ptr + offs_m * stride_asm  # (BLOCK_M,)
    bs_ptrs = bs_ptr + (offs_n // B_SCALE_ROWS) * stride_bsn  # (BLOCK_N,)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for kb in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        # 2. one 128-wide slice of K: FP8 tiles in, exact products, fp32 partial sums (tensor core)
        if EVEN_K:  # K a multiple of 128: only the M and N edges need masks
            a = tl.load(a_ptrs, mask=offs_m[:, None] < M, other=0.0)
            b = tl.load(b_ptrs, mask=offs_n[None, :] < N, other=0.0)
        else:  # the last K slice is partial: read zeros past K (the same as zero padding)
            k_ok = offs_k < K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & (offs_n[None, :] < N), other=0.0)
        partial = tl.dot(a, b)  # (BLOCK_M, BLOCK_N) fp32
        # 3. promotion: scale the partial result and add it to the fp32 accumulator (CUDA cores)
        sa = tl.load(as_ptrs + kb * stride_ask, mask=offs_m < M, other=0.0)
        sb = tl.load(bs_ptrs + kb * stride_bsk, mask=offs_n < N, other=0.0)
        acc += partial * (sa[:, None] * sb[None, :])
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    # 4. write the fp32 result
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# ----------------------------------------------------------------------------------------
# Host-side launchers. Shapes and scale layouts are validated by the caller (backend.py).
def _fmt_consts(f) -> dict:
    return dict(MAN_BITS=f.man_bits, BIAS=f.bias, MAX_CODE=f.max_code, SATURATE=f.saturate)


def _quiet():
    """The interpreter runs kernels in numpy, which warns about NaN/inf arithmetic that is intended here."""
    import numpy as np
    return np.errstate(invalid="ignore", divide="ignore", over="ignore") if INTERPRET else contextlib.nullcontext()


def encode(x: torch.Tensor, f, block: int = 1024) -> torch.Tensor:
    """Element-wise fp32 → FP8 bits (uint8), same shape as x."""
    x = x.float().contiguous()
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    n = x.numel()
    with _quiet():
        _encode_kernel[(triton.cdiv(n, block),)](x, out, n, BLOCK=block, **_fmt_consts(f))
    return out


def quantize(x: torch.Tensor, tile: tuple[int, int], f, rows_per_program: int | None = None):
    """x (R, C) → (q (R, C) FP8, scales) in (1, 128), (128, 1) or (128, 128) tiles."""
    R, C = x.shape
    tr, tc = tile
    q = torch.empty((R, C), dtype=torch.uint8, device=x.device)
    # scales (⌈R/tr⌉, ⌈C/tc⌉), stored column-major so the GEMM's per-row scale loads are contiguous
    s = torch.empty((triton.cdiv(C, tc), triton.cdiv(R, tr)), dtype=torch.float32, device=x.device).t()
    slab = rows_per_program or (64 if INTERPRET else 32)  # tiles handled side by side per program
    if tr == 1:
        br, bc, reduce = slab, tc, 1
    elif tc == 1:
        br, bc, reduce = tr, slab, 0
    else:
        br, bc, reduce = tr, tc, 2
    grid = (triton.cdiv(R, br), triton.cdiv(C, bc))
    with _quiet():
        _quantize_kernel[grid](x, q, s, R, C, x.stride(0), x.stride(1), s.stride(0), s.stride(1), f.max,
                               BR=br, BC=bc, REDUCE=reduce, **_fmt_consts(f))
    return q.view(f.dtype), s


def block_gemm(a_q, a_s, b_q, b_s, b_scale_rows: int, block_m: int = 64, block_n: int = 64, group_m: int = 8,
               num_warps: int | None = None, num_stages: int | None = None) -> torch.Tensor:
    """C = A·Bᵀ (fp32) from a_q (M, K), b_q (N, K) in FP8 and their scales (any strides)."""
    M, K = a_q.shape
    N = b_q.shape[0]
    c = torch.empty((M, N), dtype=torch.float32, device=a_q.device)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    launch = {} if INTERPRET else {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v}
    with _quiet():
        _block_gemm_kernel[grid](a_q, b_q, c, a_s, b_s, M, N, K,
                                 a_q.stride(0), a_q.stride(1), b_q.stride(0), b_q.stride(1), c.stride(0), c.stride(1),
                                 a_s.stride(0), a_s.stride(1), b_s.stride(0), b_s.stride(1),
                                 B_SCALE_ROWS=b_scale_rows, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=128,
                                 GROUP_M=group_m, EVEN_K=K % 128 == 0, **launch)
    return c
