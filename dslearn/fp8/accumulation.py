"""Why DeepSeek promotes partial sums to FP32 every N_C = 128 elements: an emulated tensor core.

DeepSeek-V3 §3.3.2 ("Increasing accumulation precision"): on H800 GPUs the FP8 GEMM accumulates
inside the tensor core with only about 14 bits of precision, not FP32's 24. For a long inner
dimension this error grows: at K = 4096 their preliminary test saw a maximum relative error of
nearly 2%. Their fix: every N_C = 128 elements of K (four WGMMA instructions) the partial sum is
copied to FP32 registers on the CUDA cores, multiplied by the tile scales and added to an FP32
accumulator; the tensor core starts the next 128 from zero. That is equation (1) in reference.py.

This module emulates such a tensor core in float64 so the effect can be measured on a CPU.
**Assumptions** (the hardware's exact behaviour is undocumented; each is a parameter):

1. Products of two FP8 numbers are exact (a 4-bit × 4-bit significand fits easily).
2. The tensor core consumes K in chunks of ``chunk`` products (32 by default: the K of one Hopper
   FP8 WGMMA). For each chunk it adds the chunk's products to the running accumulator in one go:
   all terms are aligned to the exponent of the largest of them, and every bit more than
   ``mantissa_bits`` below that leading bit is dropped (truncation toward zero, no rounding).
   This is the behaviour Fasi et al. (2021, "Numerical behavior of NVIDIA tensor cores") measured
   on earlier tensor cores, with the window narrowed to DeepSeek's "about 14 bits".
3. The aligned terms are then summed exactly and the result is truncated to ``mantissa_bits``
   significant bits again (it stays in the limited-precision accumulator).
4. With promotion, every ``promote_every`` elements the limited accumulator is added to an FP32
   accumulator (IEEE fp32 rounding) and reset to zero. Without promotion it runs over all of K.

The error therefore depends on the inputs: when all products have the same sign the sum grows
like K while each product keeps only the bits above 2^-14 of the sum, so small products are
"swamped" and truncation biases the result downward; zero-mean inputs grow only like √K.
``accumulation_sweep`` reports both, as |C − C_exact| relative to Σ_k |a_k b_k| (well defined even
where C_exact ≈ 0) and as a normwise relative error.

    paper                                 code
    -----                                 ----
    "about 14 bits" accumulation          mantissa_bits=14
    promotion interval N_C = 128          promote_every=128 (None = never)
    WGMMA K per instruction               chunk=32
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .formats import to_fp8


def _truncate_to(t: torch.Tensor, ulp: torch.Tensor) -> torch.Tensor:
    """Drop every bit of t below ulp (a power of two), toward zero."""
    return torch.trunc(t / ulp) * ulp


def _leading_pow2(t: torch.Tensor) -> torch.Tensor:
    """2^floor(log2|t|) (exact for float64; 0 maps to a tiny power so nothing divides by zero)."""
    _, e = torch.frexp(t)
    return torch.where(t == 0, torch.full_like(t, 2.0 ** -1000), torch.ldexp(torch.full_like(t, 0.5), e))


def limited_precision_matmul(a: torch.Tensor, b: torch.Tensor, mantissa_bits: int = 14, chunk: int = 32,
                             promote_every: int | None = None) -> torch.Tensor:
    """C = A·Bᵀ as the emulated tensor core computes it. a (M, K), b (N, K) → C (M, N) float64.

    a and b should hold FP8 values (so that assumption 1 holds); scales factor out of the sum."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a is {tuple(a.shape)} and b is {tuple(b.shape)}: K must match")
    if mantissa_bits < 2 or chunk < 1:
        raise ValueError(f"need mantissa_bits >= 2 and chunk >= 1, got {mantissa_bits}, {chunk}")
    if promote_every is not None and (promote_every < chunk or promote_every % chunk):
        raise ValueError(f"promote_every={promote_every} must be a multiple of chunk={chunk}")
    a, b = a.double(), b.double()
    M, K = a.shape
    N = b.shape[0]
    limited = torch.zeros(M, N, dtype=torch.float64)  # the tensor core's accumulator
    fp32_acc = torch.zeros(M, N, dtype=torch.float32)  # CUDA-core FP32 registers
    drop = 2.0 ** (1 - mantissa_bits)  # ulp of the window relative to its leading bit
    for k0 in range(0, K, chunk):
        # 1. the chunk's exact products, plus the running accumulator: (M, N, chunk + 1)
        prods = a[:, None, k0:k0 + chunk] * b[None, :, k0:k0 + chunk]
        terms = torch.cat([limited[..., None], prods], dim=-1)
        # 2. align to the largest term and truncate every term to the window
        lead = _leading_pow2(terms.abs().amax(dim=-1, keepdim=True))
        s = _truncate_to(terms, lead * drop).sum(dim=-1)  # exact: all multiples of one power of two
        # 3. the sum stays in the limited accumulator: keep mantissa_bits significant bits
        limited = _truncate_to(s, _leading_pow2(s) * drop)
        # 4. promotion every promote_every elements: add to fp32 and restart the tensor core at 0
        if promote_every is not None and (k0 + chunk) % promote_every == 0:
            fp32_acc = fp32_acc + limited.float()
            limited = torch.zeros_like(limited)
    return (fp32_acc + limited.float()).double() if promote_every is not None else limited


def relative_errors(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Errors of c against the exact float64 A·Bᵀ: the elementwise maximum max |err_mn| / |C_mn| (the report's
    "maximum relative error"; it blows up where C_mn ≈ 0, so zero-mean inputs give large values), max |err| /
    Σ|a_k b_k| (the same thing for all-positive inputs, finite for any), and the normwise ‖err‖/‖C‖."""
    a, b = a.double(), b.double()
    exact = a @ b.T
    err = (c.double() - exact).abs()
    mag = a.abs() @ b.abs().T
    return {"max_elem_rel": (err / exact.abs().clamp_min(1e-300)).max().item(),
            "max_rel_to_abs_sum": (err / mag.clamp_min(1e-300)).max().item(),
            "norm_rel": (err.norm() / exact.norm()).item()}


def random_fp8_operands(M: int, N: int, K: int, dist: str = "normal", seed: int = 0):
    """FP8 (E4M3) operands: 'normal' (zero mean) or 'uniform' (all positive), scaled into E4M3's range."""
    g = torch.Generator().manual_seed(seed)
    if dist == "normal":
        a, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    elif dist == "uniform":
        a, b = torch.rand(M, K, generator=g), torch.rand(N, K, generator=g)
    else:
        raise ValueError(f"dist must be 'normal' or 'uniform', got {dist!r}")
    scale_a, scale_b = 448 / a.abs().max(), 448 / b.abs().max()  # per-tensor scale; it factors out
    return to_fp8(a * scale_a).float(), to_fp8(b * scale_b).float()


def accumulation_sweep(Ks=(128, 512, 1024, 2048, 4096, 8192), promote_every=(None, 128), dists=("normal", "uniform"),
                       M: int = 32, N: int = 32, mantissa_bits: int = 14, chunk: int = 32, seed: int = 0,
                       progress: bool = False) -> list[dict]:
    """Error of the emulated FP8 GEMM vs K, with and without promotion; also plain fp32 accumulation.

    Returns rows {dist, K, accumulation, max_elem_rel, max_rel_to_abs_sum, norm_rel}; accumulation is "fp32",
    "limited" (no promotion) or "promote N" ."""
    rows = []
    jobs = [(d, K) for d in dists for K in Ks]
    for dist, K in tqdm(jobs, desc="K sweep", disable=not progress):
        a, b = random_fp8_operands(M, N, K, dist, seed)
        fp32 = (a @ b.T).double()  # ordinary fp32 accumulation (torch's CPU matmul)
        rows.append({"dist": dist, "K": K, "accumulation": "fp32", **relative_errors(fp32, a, b)})
        for p in promote_every:
            c = limited_precision_matmul(a, b, mantissa_bits, chunk, p)
            name = "limited" if p is None else f"promote {p}"
            rows.append({"dist": dist, "K": K, "accumulation": name, **relative_errors(c, a, b)})
    return rows
