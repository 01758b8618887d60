"""FP8 mixed precision the DeepSeek-V3 way (§3.3): formats, fine-grained scaling, block-scaled GEMMs
with FP32 promotion, an FP8 Linear layer — in plain torch, and as Triton kernels.

    formats.py       E4M3/E5M2 and the fp32 → FP8 rounding, as integer arithmetic
    reference.py     1×128 / 128×128 / 128×1 quantisation, dequantisation, the block-scaled GEMM (spec)
    kernels.py       the same in Triton (GPU, or the CPU interpreter); imported only when Triton is used
    backend.py       "auto" / "torch" / "triton" / "interpret" dispatch; Triton stays optional
    accumulation.py  an emulated ~14-bit tensor-core accumulator, with and without promotion
    linear.py        FP8Linear: Fprop, Dgrad and Wgrad in FP8

The chapter's experiments (scaling error with outliers, FP32 vs BF16 vs FP8 training) train and measure
models, so they live in ``dslearn.studies.fp8``; this package imports only ``dslearn.config`` and
``dslearn.layers`` (the B/W split FP8Linear's Wgrad can defer into).
"""

from .accumulation import accumulation_sweep, limited_precision_matmul
from .backend import BACKENDS, BackendError, block_gemm, encode, quantize, quantize_act, quantize_weight
from .formats import FORMATS, FP8Format, decode_fp8_bits, encode_fp8_bits, get_format, to_fp8
from .linear import FP8Linear, FP8LinearFunction, fp8_expert_linear, fp8_linear
from .reference import BLOCK, TILE_ACT, TILE_WEIGHT, TILE_WGRAD, dequantize_blocks, fake_quantize, quantize_blocks

__all__ = [
    "BACKENDS", "BLOCK", "FORMATS", "TILE_ACT", "TILE_WEIGHT", "TILE_WGRAD", "BackendError", "FP8Format", "FP8Linear",
    "FP8LinearFunction", "accumulation_sweep", "block_gemm", "decode_fp8_bits", "dequantize_blocks", "encode",
    "encode_fp8_bits", "fake_quantize", "fp8_expert_linear", "fp8_linear", "get_format", "limited_precision_matmul",
    "quantize", "quantize_act", "quantize_blocks", "quantize_weight", "to_fp8",
]
