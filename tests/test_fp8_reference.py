"""The plain-torch reference: tile quantisers, dequantisation, the block-scaled GEMM, padding, bad input.

Stated tolerances:
- quantisers: bit-exact with a per-element torch cast of x / (amax/448) for every tile;
- GEMM vs the float64 oracle (dequantise, multiply in float64): |C − C64| ≤ γ_(128+⌈K/128⌉+2)·(|Â|·|B̂|ᵀ)
  element-wise (the rigorous fp32 bound, reference.gemm_error_bound), and max|C − C64|/max|C64| ≤ 1e-6.
"""

import pytest
import torch

from dslearn.fp8 import reference as ref
from dslearn.fp8.formats import get_format

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def naive_quantize(x, tile, fmt="e4m3"):
    """Tile by tile with Python loops: the definition, written as plainly as possible."""
    f = get_format(fmt)
    R, C = x.shape
    tr, tc = tile
    q = torch.empty(R, C, dtype=torch.uint8)
    s = torch.empty(-(-R // tr), -(-C // tc))
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            t = x[i * tr:(i + 1) * tr, j * tc:(j + 1) * tc]
            scale = t.abs().max() / f.max
            scale = torch.ones(()) if scale == 0 else scale
            y = t / scale
            bits = y.to(f.dtype).view(torch.uint8)
            q[i * tr:(i + 1) * tr, j * tc:(j + 1) * tc] = torch.where(torch.isnan(y), 0x7F, bits)
            s[i, j] = scale
    return q, s


def special_matrix(R, C, seed=0):
    x = rand(R, C, seed=seed, scale=10.0)
    x[0, :] = 0.0  # all-zero tiles
    x[1, : min(C, 128)] = -0.0  # negative zeros
    x[2, 3] = float("nan")
    x[5, 7] = float("inf")
    x[6, 1] = -1e30  # an outlier that dominates its tile
    x[7, :] = 2.0**-149  # the smallest fp32 subnormal: amax/448 underflows to 0 → scale 1, q = 0
    return x


@pytest.mark.parametrize("tile", [ref.TILE_ACT, ref.TILE_WEIGHT, ref.TILE_WGRAD])
@pytest.mark.parametrize("shape", [(8, 256), (130, 200), (257, 129)])
def test_quantize_blocks_matches_the_tile_by_tile_definition(tile, shape):
    x = special_matrix(*shape)
    q, s = ref.quantize_blocks(x, tile)
    q0, s0 = naive_quantize(x, tile)
    assert q.shape == shape and q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    assert s.shape == ref.scale_shape(shape, tile)
    assert torch.equal(q.view(torch.uint8), q0)
    torch.testing.assert_close(s, s0, rtol=0, atol=0, equal_nan=True)


def test_special_tiles():
    x = special_matrix(8, 256)
    q, s = ref.quantize_blocks(x, ref.TILE_ACT)
    assert s[0, 0] == 1.0 and (q[0].float() == 0).all()  # all-zero tile: scale 1, exact zeros
    assert (q[1, :128].view(torch.uint8) == 0x80).all()  # −0 keeps its sign
    assert torch.isnan(s[2, 0]) and torch.isnan(ref.dequantize_blocks(q, s)[2, :128]).all()  # NaN poisons its tile
    assert not torch.isnan(s[2, 1]) and torch.isfinite(ref.dequantize_blocks(q, s)[2, 128:]).all()  # only its tile
    assert torch.isinf(s[5, 0]) and torch.isnan(ref.dequantize_blocks(q, s)[5, :128]).all()  # inf: never made finite
    assert s[7, 0] == 1.0 and (q[7].float() == 0).all()  # amax/448 underflows: treated as all-zero
    assert s[6, 0] == torch.tensor(1e30) / 448 and q[6, 1].float() == -448  # the outlier maps onto −448


def test_scale_is_amax_over_448_and_max_maps_to_448():
    x = rand(4, 384, seed=3)
    for fmt in ("e4m3", "e5m2"):
        q, s = ref.quantize_blocks(x, ref.TILE_ACT, fmt)
        amax = x.view(4, 3, 128).abs().amax(-1)
        assert torch.equal(s, amax / get_format(fmt).max)
        assert torch.equal(q.float().view(4, 3, 128).abs().amax(-1), torch.full((4, 3), get_format(fmt).max))


def test_dequantize_round_trip_error_is_within_half_an_ulp():
    x = rand(64, 300, seed=4)
    for tile in (ref.TILE_ACT, ref.TILE_WEIGHT, ref.TILE_WGRAD):
        q, s = ref.quantize_blocks(x, tile)
        xh = ref.dequantize_blocks(q, s, tile)
        big = xh.abs() >= s.repeat_interleave(tile[0], 0).repeat_interleave(tile[1], 1)[:64, :300] * 2.0**-6
        rel = ((xh - x).abs() / x.abs())[big]
        assert rel.max() <= 2.0**-4 * (1 + 1e-6)  # E4M3 normal numbers: relative error ≤ 2^-(M+1)


def test_padding_is_exact():
    """A tensor whose sides are not multiples of 128 quantises like its zero-padded version, cropped."""
    x = rand(130, 200, seed=5)
    xp = torch.nn.functional.pad(x, (0, 56, 0, 126))
    for tile in (ref.TILE_ACT, ref.TILE_WEIGHT, ref.TILE_WGRAD):
        q, s = ref.quantize_blocks(x, tile)
        qp, sp = ref.quantize_blocks(xp, tile)
        assert torch.equal(q.view(torch.uint8), qp[:130, :200].view(torch.uint8))
        assert torch.equal(s, sp[: s.shape[0], : s.shape[1]])


def test_per_tensor_and_fake_quantize():
    x = rand(10, 50, seed=6)
    q, s = ref.quantize_per_tensor(x)
    assert s.shape == (1, 1) and s.item() == (x.abs().max() / 448).item()
    assert torch.equal(ref.fake_quantize(x, None), q.float() * s)
    assert torch.equal(ref.fake_quantize(x, ref.TILE_ACT), ref.dequantize_blocks(*ref.quantize_blocks(x)))


def gemm_case(M, N, K, b_tile, seed):
    a, b = rand(M, K, seed=seed), rand(N, K, seed=seed + 1, scale=0.05)
    a[0, : min(K, 64)] *= 1000  # an outlier row segment
    a_q, a_s = ref.quantize_blocks(a, ref.TILE_ACT)
    b_q, b_s = ref.quantize_blocks(b, b_tile)
    return a_q, a_s, b_q, b_s


def assert_gemm_ok(c, a_q, a_s, b_q, b_s):
    oracle = ref.gemm_oracle_float64(a_q, a_s, b_q, b_s)
    err = (c.double() - oracle).abs()
    assert (err <= ref.gemm_error_bound(a_q, a_s, b_q, b_s)).all()
    assert err.max() / oracle.abs().max() <= 1e-6


@pytest.mark.parametrize("M,N,K", [(64, 64, 128), (100, 70, 300), (256, 256, 256), (3, 130, 1000)])
@pytest.mark.parametrize("b_tile", [ref.TILE_WEIGHT, ref.TILE_ACT])
def test_block_gemm_matches_the_float64_oracle(M, N, K, b_tile):
    ops = gemm_case(M, N, K, b_tile, seed=M + N + K)
    c = ref.block_scaled_gemm_reference(*ops)
    assert c.shape == (M, N) and c.dtype == torch.float32
    assert_gemm_ok(c, *ops)


def test_gemm_check_catches_a_wrong_promotion():
    """Negative control: applying only the first K block's scales everywhere fails the same check."""
    a_q, a_s, b_q, b_s = gemm_case(64, 64, 384, ref.TILE_WEIGHT, seed=9)
    wrong = ref.block_scaled_gemm_reference(a_q, a_s[:, :1].expand_as(a_s).contiguous(), b_q, b_s)
    with pytest.raises(AssertionError):
        assert_gemm_ok(wrong, a_q, a_s, b_q, b_s)


def test_transposed_weight_blocks_serve_dgrad():
    """One 128×128 quantisation of W gives the quantisation of Wᵀ by transposing q and the scales."""
    w = rand(256, 384, seed=10)
    q, s = ref.quantize_blocks(w, ref.TILE_WEIGHT)
    qt, st = ref.quantize_blocks(w.t().contiguous(), ref.TILE_WEIGHT)
    assert torch.equal(q.t().view(torch.uint8), qt.view(torch.uint8)) and torch.equal(s.t(), st)


def test_bad_input_raises_clear_errors():
    q, s = ref.quantize_blocks(rand(4, 256))
    with pytest.raises(ValueError, match="must be 2-D"):
        ref.quantize_blocks(rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"do not describe a \(4, 256\) tensor"):
        ref.dequantize_blocks(q, s[:, :1])
    with pytest.raises(ValueError, match="both must hold K"):
        ref.block_scaled_gemm_reference(q, s, q[:, :128], s[:, :1])
    with pytest.raises(ValueError, match="a_s must hold one scale per 1×128 tile"):
        ref.block_scaled_gemm_reference(q, s[:, :1], q, s)
    with pytest.raises(ValueError, match="b_s must hold one scale per 128×128 block"):
        ref.block_scaled_gemm_reference(q, s, q, s[:3])
