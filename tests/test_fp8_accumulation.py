"""The limited-precision accumulator emulation and its K sweep (small, fast versions)."""

import pytest
import torch

from dslearn.fp8.accumulation import accumulation_sweep, limited_precision_matmul, random_fp8_operands, relative_errors

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def test_wide_accumulator_is_exact():
    a, b = random_fp8_operands(8, 8, 512, "normal", seed=1)
    exact = a.double() @ b.double().T  # FP8 products and their sums are exact in float64 here
    assert torch.equal(limited_precision_matmul(a, b, mantissa_bits=53, chunk=32), exact)


def test_swamping_by_hand():
    """8192 + 1 + 1 + 1, one product per step: a 14-bit window keeps the ones, a 12-bit one drops them."""
    a = torch.tensor([[8192.0, 1.0, 1.0, 1.0]])
    b = torch.ones(1, 4)
    assert limited_precision_matmul(a, b, mantissa_bits=14, chunk=1).item() == 8195
    assert limited_precision_matmul(a, b, mantissa_bits=12, chunk=1).item() == 8192
    assert limited_precision_matmul(-a, b, mantissa_bits=12, chunk=1).item() == -8192  # toward zero
    # with promotion every 2 elements the second pair starts from 0 and survives
    assert limited_precision_matmul(a, b, mantissa_bits=12, chunk=1, promote_every=2).item() == 8194


def test_error_grows_with_k_and_promotion_bounds_it():
    rows = accumulation_sweep(Ks=(128, 4096), dists=("uniform", "normal"), M=16, N=16)
    err = {(r["dist"], r["K"], r["accumulation"]): r["norm_rel"] for r in rows}
    for dist in ("uniform", "normal"):
        assert err[(dist, 4096, "limited")] > 5 * err[(dist, 128, "limited")]  # grows with K
        assert err[(dist, 4096, "promote 128")] < 2 * err[(dist, 128, "limited")]  # stays at one block's error
        assert err[(dist, 4096, "fp32")] < 1e-6 < err[(dist, 4096, "promote 128")]
    assert err[("uniform", 4096, "limited")] > 0.01  # same-sign sums: percent-level error without promotion


def test_emulation_rejects_bad_parameters():
    a, b = torch.ones(2, 64), torch.ones(3, 64)
    with pytest.raises(ValueError, match="multiple of chunk"):
        limited_precision_matmul(a, b, promote_every=48)
    with pytest.raises(ValueError, match="K must match"):
        limited_precision_matmul(a, torch.ones(3, 32))
    with pytest.raises(ValueError, match="mantissa_bits"):
        limited_precision_matmul(a, b, mantissa_bits=1)
    with pytest.raises(ValueError, match="dist must be"):
        random_fp8_operands(2, 2, 2, "cauchy")
    assert relative_errors(a @ b.T, a, b)["norm_rel"] == 0.0
