"""The Triton kernels, run through Triton's CPU interpreter, against the plain-torch reference.

How the interpreter is switched on: not through TRITON_INTERPRET. backend.load_kernels(interpret=True)
loads dslearn/fp8/kernels.py as a separate module whose kernels are wrapped in Triton's
InterpretedFunction explicitly, and the kernels use only Triton builtins. So these tests work
whether or not another test file imported triton first, in one pytest process, in any order.
(test_interpreter_independent_of_env_and_import_order checks exactly that in a fresh process.)

Sizes stay ≤ 256³ so the whole file runs in well under a minute on two cores. The last test compiles
the same kernels for a Hopper GPU (sm_90) without one, to catch what only the GPU compiler would reject.
Tolerances: quantisers and the encoder bit-exact (NaN scales compared as NaN); GEMM within the
rigorous fp32 bound of reference.gemm_error_bound and ≤ 1e-6 max-relative vs the float64 oracle,
and ≤ 1e-5 relative to the torch reference's output.
"""

import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (Linux only); the torch reference is tested elsewhere")

from test_fp8_formats import sweep_inputs  # noqa: E402
from test_fp8_reference import assert_gemm_ok, gemm_case, special_matrix  # noqa: E402

from dslearn.fp8 import backend as be  # noqa: E402
from dslearn.fp8 import reference as ref  # noqa: E402
from dslearn.fp8.formats import edge_case_inputs, to_fp8  # noqa: E402
from dslearn.fp8.linear import FP8Linear  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy warns on NaN/inf inside the interpreter


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_interpreted_encoder_is_bit_exact(fmt):
    x = torch.cat([edge_case_inputs(), sweep_inputs()[::16]])  # edges + 98,304 sweep inputs
    got = be.encode(x, fmt, backend="interpret")
    want = to_fp8(x, fmt).view(torch.uint8)
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, first inputs {x[bad[:5]].tolist()}"


@pytest.mark.parametrize("tile", [ref.TILE_ACT, ref.TILE_WEIGHT, ref.TILE_WGRAD])
@pytest.mark.parametrize("shape", [(8, 256), (130, 200), (257, 129)])
def test_interpreted_quantizer_is_bit_exact(tile, shape):
    x = special_matrix(*shape, seed=shape[0])
    q, s = be.quantize(x, tile, backend="interpret")
    q0, s0 = ref.quantize_blocks(x, tile)
    assert q.dtype == torch.float8_e4m3fn and q.shape == shape and s.shape == s0.shape
    assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8))
    torch.testing.assert_close(s, s0, rtol=0, atol=0, equal_nan=True)


def test_interpreted_quantizer_e5m2_and_strided_input():
    x = special_matrix(256, 130).t()  # a non-contiguous (130, 256) view
    for fmt in ("e4m3", "e5m2"):
        q, s = be.quantize(x, ref.TILE_ACT, fmt, backend="interpret")
        q0, s0 = ref.quantize_blocks(x, ref.TILE_ACT, fmt)
        assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8))
        torch.testing.assert_close(s, s0, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("M,N,K", [(64, 64, 128), (100, 70, 300), (256, 256, 256)])
@pytest.mark.parametrize("b_tile", [ref.TILE_WEIGHT, ref.TILE_ACT])
def test_interpreted_gemm_matches_oracle_and_reference(M, N, K, b_tile):
    ops = gemm_case(M, N, K, b_tile, seed=M * 7 + K)
    c = be.block_gemm(*ops, backend="interpret")
    assert c.shape == (M, N) and c.dtype == torch.float32
    assert_gemm_ok(c, *ops)
    torch.testing.assert_close(c, ref.block_scaled_gemm_reference(*ops), rtol=1e-5, atol=1e-5 * c.abs().max().item())


def test_interpreted_gemm_reads_transposed_operands():
    """Dgrad passes Wᵀ as a strided view with transposed block scales; no copy needed."""
    a_q, a_s, _, _ = gemm_case(64, 64, 256, ref.TILE_WEIGHT, seed=3)
    w_q, w_s = ref.quantize_blocks(torch.randn(256, 192, generator=torch.Generator().manual_seed(4)), ref.TILE_WEIGHT)
    c = be.block_gemm(a_q, a_s, w_q.t(), w_s.t(), backend="interpret")  # (64, 192)
    assert_gemm_ok(c, a_q, a_s, w_q.t(), w_s.t())


def test_interpreted_fp8_linear_matches_the_torch_backend():
    torch.manual_seed(0)
    layers = {b: FP8Linear(200, 130, bias=True, backend=b) for b in ("torch", "interpret")}
    layers["interpret"].load_state_dict(layers["torch"].state_dict())
    x = torch.randn(2, 40, 200)
    dy = torch.randn(2, 40, 130)
    outs = {}
    for name, layer in layers.items():
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(dy)
        outs[name] = (y, xi.grad, layer.weight.grad, layer.bias.grad)
    for got, want in zip(outs["interpret"], outs["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_interpreter_independent_of_env_and_import_order():
    """triton imported first, TRITON_INTERPRET unset: the interpreted kernels still run (fresh process)."""
    code = ("import os, torch, triton; os.environ.pop('TRITON_INTERPRET', None)\n"
            "from dslearn.fp8 import backend as be, reference as ref\n"
            "x = torch.randn(16, 256)\n"
            "q, s = be.quantize(x, backend='interpret'); q0, s0 = ref.quantize_blocks(x)\n"
            "assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0)\n"
            "k = be.load_kernels(True)\n"
            "assert k.INTERPRET and type(k._quantize_kernel).__name__ == 'InterpretedFunction'\n"
            "print('ok')\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_backend_resolution_with_triton_present():
    assert be.resolve_backend("auto", "cpu") == "torch"  # the interpreter is only used when asked for
    assert be.resolve_backend("interpret", "cpu") == "interpret"
    with pytest.raises(be.BackendError, match="use backend='interpret'"):
        be.resolve_backend("triton", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert be.load_kernels(True) is be.load_kernels(True)  # loaded once, cached


def test_kernels_compile_for_hopper(monkeypatch, tmp_path):
    """No GPU here, but Triton can still compile for one: every kernel must lower to an sm_90 cubin, and the
    GEMM must use Hopper's FP8 tensor-core instruction (wgmma). Catches GPU-only compile errors the
    interpreter cannot see."""
    import triton
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    kern = be.load_kernels(interpret=False)
    if not isinstance(kern._block_gemm_kernel, triton.runtime.JITFunction):
        pytest.skip("TRITON_INTERPRET=1 is set: triton.jit builds interpreted kernels in this process")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # today's default, stated (silences a deprecation warning)
    target = GPUTarget("cuda", 90, 32)
    e4m3 = dict(MAN_BITS=3, BIAS=7, MAX_CODE=0x7E, SATURATE=True)

    def compile_(fn, sig, const, **opts):
        sig = dict(sig, **{k: "constexpr" for k in const})
        return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=target, options=opts)

    compile_(kern._encode_kernel, {"x_ptr": "*fp32", "out_ptr": "*u8", "n": "i32"}, dict(e4m3, BLOCK=1024))
    qsig = {"x_ptr": "*fp32", "q_ptr": "*u8", "s_ptr": "*fp32", "R": "i32", "C": "i32", "stride_xr": "i32",
            "stride_xc": "i32", "stride_sr": "i32", "stride_sc": "i32", "FP8_MAX": "fp32"}
    for reduce, (br, bc) in ((1, (32, 128)), (0, (128, 32)), (2, (128, 128))):
        compile_(kern._quantize_kernel, qsig, dict(e4m3, BR=br, BC=bc, REDUCE=reduce))
    gsig = {"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": "*fp32", "as_ptr": "*fp32", "bs_ptr": "*fp32",
            "M": "i32", "N": "i32", "K": "i32"}
    gsig.update({s: "i32" for s in ("stride_am", "stride_ak", "stride_bn", "stride_bk", "stride_cm", "stride_cn",
                                    "stride_asm", "stride_ask", "stride_bsn", "stride_bsk")})
    for rows, even in ((128, True), (1, False)):
        out = compile_(kern._block_gemm_kernel, gsig, dict(B_SCALE_ROWS=rows, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128,
                                                           GROUP_M=8, EVEN_K=even), num_warps=8, num_stages=3)
        assert "wgmma" in out.asm["ptx"] and len(out.asm["cubin"]) > 0
