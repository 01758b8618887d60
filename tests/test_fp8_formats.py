"""FP8 formats: the integer encoder is bit-exact with torch's casts (the oracle), over every edge case.

Coverage: the edge-case set (every FP8 value of both formats, every midpoint between neighbours, one
fp32 ulp either side of each midpoint, ±max and beyond, saturation/overflow ties, subnormals, ±0,
±inf, NaNs with payloads, fp32 subnormals) plus a structured sweep of every one of the 65,536 upper
16-bit patterns of fp32 (sign, exponent, top 7 mantissa bits) × 8 lower-16-bit patterns, and
2^20 random bit patterns: 1,572,864 inputs per format beyond the edge cases.
"""

import pytest
import torch

from dslearn.fp8.formats import (
    FORMATS,
    all_fp8_values,
    decode_fp8_bits,
    edge_case_inputs,
    encode_fp8_bits,
    get_format,
    split_fields,
    to_fp8,
)

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def torch_bits(x, fmt):
    return to_fp8(x, fmt).view(torch.uint8)


def sweep_inputs():
    hi = torch.arange(1 << 16, dtype=torch.int64) << 16
    lows = torch.tensor([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x1234, 0xC000], dtype=torch.int64)
    structured = (hi[:, None] | lows[None, :]).flatten()
    rand = torch.randint(0, 1 << 32, (1 << 20,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    bits = torch.cat([structured, rand])
    return torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32).view(torch.float32)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_encoder_bit_exact_on_edge_cases(fmt):
    x = edge_case_inputs()
    assert x.numel() > 1500 and torch.isnan(x).sum() >= 5
    got, want = encode_fp8_bits(x, fmt), torch_bits(x, fmt)
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, f"{fmt}: {bad.numel()} mismatches, first inputs {x[bad[:5]].tolist()}"


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_encoder_bit_exact_on_structured_sweep(fmt):
    x = sweep_inputs()
    assert torch.equal(encode_fp8_bits(x, fmt), torch_bits(x, fmt))


def test_documented_edge_behaviour():
    x = torch.tensor([1.0625, 1.1875, 2.0**-10, 3 * 2.0**-10, 449.0, 464.0, 1e9, float("inf"), float("-inf"),
                      -0.0, 0.0, float("nan"), -float("nan")])
    e4 = encode_fp8_bits(x, "e4m3").tolist()
    # ties to even: 1+1/16 → 1.0 (0x38), 1+3/16 → 1.25 (0x3A); 2^-10 (half the smallest subnormal) → +0;
    # 3·2^-10 → 2^-8 (0x02); everything ≥ 448, inf included, saturates to 0x7E; signs of 0 and NaN kept
    assert e4 == [0x38, 0x3A, 0x00, 0x02, 0x7E, 0x7E, 0x7E, 0x7E, 0xFE, 0x80, 0x00, 0x7F, 0xFF]
    e5 = encode_fp8_bits(torch.tensor([57344.0, 61439.0, 61440.0, float("inf"), float("nan")]), "e5m2").tolist()
    assert e5 == [0x7B, 0x7B, 0x7C, 0x7C, 0x7F]  # E5M2 overflows to inf at the tie above its max


def test_format_constants_and_fields():
    e4, e5 = get_format("e4m3"), get_format("e5m2")
    assert (e4.max, e4.max_code, e4.min_normal, e4.min_subnormal) == (448.0, 0x7E, 2.0**-6, 2.0**-9)
    assert (e5.max, e5.max_code, e5.min_normal, e5.min_subnormal) == (57344.0, 0x7B, 2.0**-14, 2.0**-16)
    assert split_fields(0x7E, "e4m3") == (0, 0b1111, 0b110)
    assert split_fields(0xBC, "e5m2") == (1, 0b01111, 0b00)
    v = all_fp8_values("e4m3")
    assert torch.isnan(v).sum() == 2 and v[0x38] == 1.0 and v[0x01] == 2.0**-9
    assert torch.equal(decode_fp8_bits(encode_fp8_bits(v[~torch.isnan(v)])), v[~torch.isnan(v)])
    with pytest.raises(ValueError, match="unknown FP8 format"):
        get_format("e3m4")
    assert set(FORMATS) == {"e4m3", "e5m2"}


def test_encoder_accepts_any_shape_and_dtype():
    x = torch.randn(3, 5, 7, dtype=torch.bfloat16)
    assert encode_fp8_bits(x).shape == (3, 5, 7)
    assert torch.equal(encode_fp8_bits(x), torch_bits(x.float(), "e4m3"))
