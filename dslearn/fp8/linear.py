"""FP8Linear: a Linear layer whose three GEMMs all run in FP8 with DeepSeek-V3's tilings (§3.3, Figure 6).

A Linear layer y = x·Wᵀ (x: T tokens × K inputs, W: N outputs × K) needs three GEMMs per step:

    GEMM     computes            contraction over   FP8 operands and their tiles
    ----     --------            ----------------   -----------------------------------------------
    Fprop    y  = x · Wᵀ         K (inputs)         x: 1×128 along K            W: 128×128 blocks
    Dgrad    dx = dy · W         N (outputs)        dy: 1×128 along N           W: the same 128×128 blocks
    Wgrad    dW = dyᵀ · x        T (tokens)         dyᵀ, xᵀ: 1×128 along T = x, dy in 128×1 tiles

Every tiling puts its 128 elements along the contraction axis, so each 128-wide slice of the
contraction has one scale per row of each operand and equation (1) of reference.py applies. The
square weight blocks are why one quantised W serves both Fprop and Dgrad (a block of Wᵀ is the
transpose of a block of W, with the same amax). In the backward pass the activations and output
gradients need a *second* quantisation, along the token axis, which is what 128×1 tiles are.

What stays in higher precision, as in DeepSeek-V3:
- master weights (``self.weight``, fp32) and the AdamW moments (fp32 here; DeepSeek keeps them in
  BF16): the optimizer never sees FP8. The FP8 copy of W is made afresh in every forward pass.
- the GEMM outputs and the gradients handed back to autograd (fp32, or the input's dtype), and
  the bias. The saved activation x is kept in its own precision (DeepSeek caches it in FP8 to
  save memory; we re-quantise it 128×1 in backward, which is the same computation).
- everything that is not a Linear layer: embedding, output head (``lm_head`` stays ``nn.Linear``),
  normalisation, attention's softmax(QKᵀ)V, and the loss.

All three GEMMs use E4M3, activations and gradients alike (DeepSeek chose E4M3 everywhere
instead of the usual E5M2 for gradients, relying on the fine-grained scales for range).

    paper                         code
    -----                         ----
    Fprop / Dgrad / Wgrad         FP8LinearFunction.forward / backward (steps 2, 3)
    1×128, 128×128, 128×1 tiles   TILE_ACT, TILE_WEIGHT, TILE_WGRAD
    master weights (FP32)         FP8Linear.weight
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.weightgrad import WeightGradStore, accumulate
from . import backend as be
from .reference import TILE_ACT, TILE_WEIGHT


def _fp8_matmul(a: torch.Tensor, b: torch.Tensor, b_tile, backend: str) -> torch.Tensor:
    """a (M, Kc) · b (N, Kc)ᵀ with a in 1×128 tiles and b in ``b_tile`` tiles, both along Kc → fp32 (M, N)."""
    a_q, a_s = be.quantize(a, TILE_ACT, "e4m3", backend)
    b_q, b_s = be.quantize(b, b_tile, "e4m3", backend)
    return be.block_gemm(a_q, a_s, b_q, b_s, backend)


class FP8LinearFunction(torch.autograd.Function):
    """y = x·Wᵀ + b with Fprop, Dgrad and Wgrad as block-scaled FP8 GEMMs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str,
                store: WeightGradStore | None = None):
        out_dtype = x.dtype if x.dtype.is_floating_point else torch.float32
        x2 = x.reshape(-1, x.shape[-1])  # (T, K)
        # 1. quantise W once, in 128×128 blocks: used by Fprop now and by Dgrad in backward
        w_q, w_s = be.quantize(weight.detach(), TILE_WEIGHT, "e4m3", backend)  # (N, K), (⌈N/128⌉, ⌈K/128⌉)
        # 2. Fprop: x (1×128 tiles along K) · Wᵀ
        x_q, x_s = be.quantize(x2.detach(), TILE_ACT, "e4m3", backend)  # (T, K), (T, ⌈K/128⌉)
        y = be.block_gemm(x_q, x_s, w_q, w_s, backend)  # (T, N) fp32
        if bias is not None:
            y = y + bias.float()
        ctx.save_for_backward(x2, w_q, w_s)
        ctx.has_bias, ctx.backend, ctx.x_shape, ctx.store = bias is not None, backend, x.shape, store
        ctx.weight, ctx.bias = weight, bias  # for a deferred Wgrad (DualPipe's W), which accumulates into them
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, w_q, w_s = ctx.saved_tensors
        backend = ctx.backend
        dy2 = dy.reshape(-1, dy.shape[-1]).float()  # (T, N)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            # 3a. Dgrad: dy (1×128 tiles along N) · W, with W's blocks read transposed (Wᵀ is (K, N))
            dy_q, dy_s = be.quantize(dy2, TILE_ACT, "e4m3", backend)  # (T, N), (T, ⌈N/128⌉)
            dx = be.block_gemm(dy_q, dy_s, w_q.t(), w_s.t(), backend)  # (T, K) fp32
            dx = dx.to(ctx.dtypes[0]).reshape(ctx.x_shape)
        def wgrad():
            # 3b. Wgrad: dyᵀ · x, contracting over tokens: both operands in 1×128 tiles along T,
            #     i.e. dy and x in 128×1 tiles
            dw = _fp8_matmul(dy2.t(), x2.float().t(), TILE_ACT, backend).to(ctx.dtypes[1])  # (N, K)
            db = dy2.sum(0).to(ctx.dtypes[2]) if ctx.has_bias else None
            return dw, db

        if ctx.store is not None and ctx.store.deferring:  # DualPipe's W: computed later, into .grad
            weight, bias = ctx.weight, ctx.bias

            def deferred():
                dw, db = wgrad()
                accumulate(weight, dw)
                if db is not None:
                    accumulate(bias, db)

            ctx.store.queue.append(deferred)
            return dx, None, None, None, None
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            dw, db = wgrad()
            dw = dw if ctx.needs_input_grad[1] else None
            db = db if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               backend: str = "auto", store: WeightGradStore | None = None) -> torch.Tensor:
    """Functional form: x (..., K), weight (N, K), bias (N,) → (..., N), all three GEMMs in FP8.
    With a deferring ``store`` the Wgrad GEMM is queued for DualPipe's W (layers/weightgrad.py)."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but weight is {tuple(weight.shape)} (N, K)")
    return FP8LinearFunction.apply(x, weight, bias, backend, store)


def fp8_expert_linear(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Routed experts in FP8: rows of x (A, K) sorted by expert, each block times w[e]ᵀ (E, N, K) → (A, N), every
    expert's three GEMMs in FP8 (the drop-in for ``layers.grouped.expert_linear``; one FP8 GEMM per expert)."""
    blocks = x.split(counts.tolist())
    return torch.cat([fp8_linear(xe, w[e], None, backend) for e, xe in enumerate(blocks)])  # (A, N)


class FP8Linear(nn.Linear):
    """Drop-in ``nn.Linear`` (same constructor, parameters and state dict) computing in FP8.

    ``backend``: "auto" (Triton on CUDA, else the torch reference), "torch", "triton" or "interpret".
    Any in/out size works (non-multiples of 128 are zero-padded); multiples of 128 waste nothing."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 backend: str = "auto", store: WeightGradStore | None = None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if backend not in be.BACKENDS:
            raise ValueError(f"backend must be one of {be.BACKENDS}, got {backend!r}")
        self.backend, self.store = backend, store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, self.backend, self.store)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fp8=e4m3, backend={self.backend}"
