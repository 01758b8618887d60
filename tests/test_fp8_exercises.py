"""Chapter 05's exercise checkers: reference solutions pass, typical mistakes fail with a useful message."""

import pytest
import torch
from helpers import todo

import dslearn.exercises.fp8  # noqa: F401  (registers the chapter's exercises)
from dslearn.exercises import check
from dslearn.fp8 import backend as be
from dslearn.fp8 import reference as ref

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def e5m2_round(x):
    m, e = torch.frexp(x)
    step = torch.ldexp(torch.ones_like(x), e.clamp(min=-13) - 3)  # 2 mantissa bits; fixed step below 2^-14
    y = torch.round(x / step) * step  # ties to even
    return torch.where(y.abs() > 57344, torch.sign(y) * float("inf"), y)


def test_reference_solutions_pass():
    assert check("e5m2_round", e5m2_round).passed
    assert check("quantize_128x128", lambda w: ref.quantize_blocks(w, ref.TILE_WEIGHT)).passed
    assert check("block_gemm", ref.block_scaled_gemm_reference).passed
    assert check("wgrad_fp8", lambda x, dy: be.block_gemm(*be.quantize(dy.t()), *be.quantize(x.t()))).passed


def test_typical_mistakes_fail_with_a_hint():
    r = check("e5m2_round", lambda x: x.to(torch.float8_e4m3fn).float())  # the wrong format
    assert r.status == "FAIL" and "differ" in r.message and "61440" in str(r)
    r = check("quantize_128x128", lambda w: ref.quantize_blocks(w, ref.TILE_ACT))  # per-row tiles
    assert r.status == "FAIL" and "scales" in r.message
    no_promotion = lambda a_q, a_s, b_q, b_s: (a_q.float() @ b_q.float().T) * a_s[:, :1] * b_s[0, 0]  # noqa: E731
    r = check("block_gemm", no_promotion)
    assert r.status == "FAIL" and "relative error" in r.message
    channels = lambda x, dy: ref.dequantize_blocks(*ref.quantize_blocks(dy)).T @ ref.dequantize_blocks(  # noqa: E731
        *ref.quantize_blocks(x))
    r = check("wgrad_fp8", channels)
    assert r.status == "FAIL" and "along the tokens" in r.message


def test_untouched_exercises_are_todo():
    for name in ("e5m2_round", "quantize_128x128", "block_gemm", "wgrad_fp8"):
        assert check(name, todo).status == "TODO"
