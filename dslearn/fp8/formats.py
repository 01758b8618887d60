"""The two 8-bit floating-point formats, and how an fp32 number becomes one (DeepSeek-V3 §3.3).

An FP8 number is 1 sign bit, E exponent bits and M mantissa bits:

    value = (−1)^s · 2^(e − bias) · 1.m        normal numbers   (exponent field e ≥ 1)
    value = (−1)^s · 2^(1 − bias) · 0.m        subnormal numbers (exponent field e = 0)

    format          E  M  bias  largest finite  smallest normal  smallest subnormal  inf?  NaN bits
    E4M3 ("fn")     4  3   7    448             2^-6             2^-9                no    S.1111.111
    E5M2            5  2  15    57344           2^-14            2^-16               yes   S.11111.1x

DeepSeek-V3 uses E4M3 for *every* GEMM input — activations, weights and gradients — because its
fine-grained scaling (reference.py) already gives each small tile its own range; the extra
exponent bit of E5M2 is then worth less than E4M3's extra mantissa bit. E4M3 here is torch's
``float8_e4m3fn`` ("finite"): it has no infinity, so the one bit pattern that would be inf is a
number (448) and ``S.1111.111`` is NaN.

Rounding an fp32 number x to FP8 (what ``torch.Tensor.to(torch.float8_e4m3fn)`` does, bit for bit):

1. NaN stays NaN (sign kept): 0x7F / 0xFF.
2. |x| is rounded to the nearest FP8 value, ties to the one with an even mantissa (RNE). Rounding
   may carry into the exponent (0x3F7FFFFF → 1.0), and below 2^(1−bias) the grid is the
   uniform subnormal grid, so tiny values round to 0 or to a subnormal.
3. Overflow: E4M3 *saturates* — everything at or above 448 (inf included) becomes ±448. E5M2
   follows IEEE: values that round beyond 57344 become ±inf.

``encode_fp8_bits`` does exactly this with integer arithmetic on the fp32 bit pattern. It is the
spec the Triton quantiser (kernels.py) copies line for line: the Triton interpreter's own fp32→fp8
cast is wrong (ties away from zero, lost carries, truncated subnormals, NaN/inf garbage; triton
issue 8322), so the kernel never casts — it computes the bits and stores them as uint8.

    paper / hardware           code
    ----------------           ---------------------------------------
    E4M3, E5M2                 FP8Format ("e4m3", "e5m2"), FORMATS
    448 (E4M3 max)             FORMATS["e4m3"].max
    fp32 → fp8 conversion      encode_fp8_bits (integer spec), to_fp8 (torch's cast)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FP8Format:
    name: str
    exp_bits: int  # E
    man_bits: int  # M
    bias: int
    dtype: torch.dtype
    saturate: bool  # True: overflow → ±max (E4M3fn); False: overflow → ±inf (E5M2)

    @property
    def max(self) -> float:
        """Largest finite value (448 for E4M3, 57344 for E5M2)."""
        return float(torch.finfo(self.dtype).max)

    @property
    def max_code(self) -> int:
        """Bit pattern (sign cleared) of the largest finite value: 0x7E for E4M3, 0x7B for E5M2."""
        return int(torch.tensor(self.max).to(self.dtype).view(torch.uint8))

    @property
    def min_normal(self) -> float:
        return 2.0 ** (1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.man_bits)

    INF_CODE = 0x7C  # E5M2 only: S.11111.00
    NAN_CODE = 0x7F  # torch writes NaN as S.1111111 in both formats (sign kept)


FORMATS = {
    "e4m3": FP8Format("e4m3", 4, 3, 7, torch.float8_e4m3fn, saturate=True),
    "e5m2": FP8Format("e5m2", 5, 2, 15, torch.float8_e5m2, saturate=False),
}


def get_format(fmt: str | FP8Format) -> FP8Format:
    if isinstance(fmt, FP8Format):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown FP8 format {fmt!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def to_fp8(x: torch.Tensor, fmt: str | FP8Format = "e4m3") -> torch.Tensor:
    """torch's own cast (the oracle): fp32 → FP8, round to nearest even, E4M3 saturating at ±448."""
    return x.float().to(get_format(fmt).dtype)


def encode_fp8_bits(x: torch.Tensor, fmt: str | FP8Format = "e4m3") -> torch.Tensor:
    """fp32 → FP8 bit patterns (uint8) by integer arithmetic; bit-exact with ``to_fp8(x).view(uint8)``.

    The Triton kernel ``_encode_fp8`` (kernels.py) is this function, line for line."""
    f = get_format(fmt)
    man_shift = 23 - f.man_bits  # fp32 mantissa bits that FP8 drops: 20 (E4M3), 21 (E5M2)
    bits = x.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # (…) as unsigned
    sign = bits >> 31
    a = bits & 0x7FFFFFFF  # |x| as an unsigned integer; ordering of |x| = ordering of a
    exp_field = a >> 23
    # 1. normal FP8 results: round the mantissa to M bits, ties to even, by adding just under half
    #    an FP8 ulp plus the lowest kept bit. A carry ripples into the exponent on its own.
    lsb = (a >> man_shift) & 1
    rounded = a + ((1 << (man_shift - 1)) - 1) + lsb
    normal = (rounded >> man_shift) - ((127 - f.bias) << f.man_bits)  # rebias 127 → bias
    # 2. subnormal FP8 results (|x| < 2^(1−bias)): count units of the smallest subnormal,
    #    2^(1−bias−M), with round-to-nearest-even by hand.
    sig = (a & 0x7FFFFF) | 0x800000  # 24-bit significand with its implicit 1
    shift = ((151 - f.bias - f.man_bits) - exp_field).clamp(1, 31)  # ≥ 25 always rounds to 0
    q = sig >> shift
    rem = sig & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(torch.int64)
    is_sub = exp_field < (127 + 1 - f.bias)
    code = torch.where(is_sub, q, normal)
    # 3. overflow: saturate (E4M3fn) or become inf (E5M2); inf inputs take the same path
    if f.saturate:
        code = code.clamp(max=f.max_code)
    else:
        code = torch.where(code > f.max_code, FP8Format.INF_CODE, code)
    # 4. NaN in → NaN out, sign kept
    code = torch.where(a > 0x7F800000, FP8Format.NAN_CODE, code)
    return (code | (sign << 7)).to(torch.uint8)


def decode_fp8_bits(bits: torch.Tensor, fmt: str | FP8Format = "e4m3") -> torch.Tensor:
    """uint8 FP8 bit patterns → fp32 values (through torch's dtype, which is exact)."""
    return bits.to(torch.uint8).view(get_format(fmt).dtype).float()


def all_fp8_values(fmt: str | FP8Format = "e4m3") -> torch.Tensor:
    """The 256 FP8 bit patterns' values (fp32, NaN included), in code order 0x00..0xFF."""
    return decode_fp8_bits(torch.arange(256, dtype=torch.int32).to(torch.uint8), fmt)


def split_fields(code: int, fmt: str | FP8Format = "e4m3") -> tuple[int, int, int]:
    """(sign, exponent field, mantissa field) of one FP8 bit pattern — for the bit-layout figure."""
    f = get_format(fmt)
    return code >> 7, (code >> f.man_bits) & ((1 << f.exp_bits) - 1), code & ((1 << f.man_bits) - 1)


def edge_case_inputs() -> torch.Tensor:
    """fp32 inputs that exercise every branch of the conversion, for both formats (1-D fp32).

    Every FP8 value and every midpoint between neighbours (ties), one fp32 ulp either side of each
    midpoint, subnormals and the subnormal/normal border, ±max and just beyond, the E4M3 saturation
    tie 464 and the E5M2 overflow tie 61440, ±0, ±inf, NaNs with payloads, fp32 subnormals."""
    vals = []
    for fmt in FORMATS.values():
        v = all_fp8_values(fmt).double()
        v = v[torch.isfinite(v)].unique()  # sorted, both signs
        mid = (v[1:] + v[:-1]) / 2  # exact in float64; every one is an fp32 number too
        vals += [v, mid]
        m32 = mid.float()
        vals += [torch.nextafter(m32, torch.tensor(float("inf"))).double(),
                 torch.nextafter(m32, torch.tensor(float("-inf"))).double()]
        top = torch.tensor([fmt.max, fmt.max * 1.0001, fmt.max * 1.5, fmt.max * 2, fmt.max * 1e6],
                           dtype=torch.float64)
        vals += [top, -top]
    special = torch.tensor([0.0, -0.0, 464.0, -464.0, 463.99, 465.0, 480.0, 61439.0, 61440.0, -61440.0, 1e30,
                            3.4028234663852886e38, 1e-30, 1e-45, -1e-45, 1.17549435e-38, 2.0**-10, 2.0**-17,
                            float("inf"), float("-inf")], dtype=torch.float64)
    vals.append(special)
    x = torch.cat(vals).float()
    nans = torch.tensor([0x7FC00000, 0x7F800001, 0x7FFFFFFF, -0x00400000, -0x7FFFFF], dtype=torch.int64)
    nans = nans.to(torch.int32).view(torch.float32)  # quiet, signalling, max payload, negative NaNs
    return torch.cat([x, nans])
