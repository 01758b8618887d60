"""Backward split in two: B (input gradients, now) and W (weight gradients, later) — DualPipe's WeightGradStore.

A layer y = x·Wᵀ has two gradients. The previous pipeline stage is waiting for dL/dx = gy·W (**B**);
nobody needs dL/dW = gyᵀ·x (**W**) until the optimizer step. Zero-bubble schedules (ZB1P, DualPipe)
compute B at once and postpone W into what would otherwise be idle time.

Here, as in DeepSeek's DualPipe code, a layer's backward returns the input gradient and, while the
``WeightGradStore`` is ``deferring``, queues a closure that computes and accumulates the weight
gradient; ``take()`` hands the queue to the schedule's W op. The split layers are chosen when the model
is built (``dslearn.model.parts.choose_parts(config, weight_grads=store)``), never patched in afterwards:

    Linear           ``SplitLinear`` (an nn.Linear with the same parameters and state dict), or
                     ``FP8Linear(store=...)`` whose FP8 Wgrad is deferred the same way (fp8/linear.py)
    routed experts   ``expert_matmul(x, w, counts, store)``: rows of x sorted by expert, each block times its
                     expert's matrix w[e] (the grouped GEMM of an MoE layer, local or expert-parallel)

Norm gains, the embedding and the MoE gate are cheap and keep their gradients in B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .grouped import block_offsets, grouped_matmul


class WeightGradStore:
    """The queue of deferred weight-gradient closures. While ``deferring`` is set, split layers return
    only the input gradient and queue their weight gradient here."""

    def __init__(self):
        self.deferring = False
        self.queue: list = []

    def take(self) -> list:
        q, self.queue = self.queue, []
        return q


def accumulate(p: nn.Parameter, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g.clone()
    else:
        p.grad += g


class _DeferredLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, store):
        ctx.save_for_backward(x, weight)
        ctx.store, ctx.bias = store, bias
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gx = gy @ weight  # (..., d_in): B, needed now by the previous stage
        bias = ctx.bias

        def wgrad():  # W: gyᵀ·x over all tokens
            accumulate(weight, gy.flatten(0, -2).T @ x.flatten(0, -2))  # (d_out, d_in)
            if bias is not None:
                accumulate(bias, gy.flatten(0, -2).sum(0))

        if ctx.store.deferring:
            ctx.store.queue.append(wgrad)
            return gx, None, None, None
        gw = gy.flatten(0, -2).T @ x.flatten(0, -2)
        gb = gy.flatten(0, -2).sum(0) if bias is not None else None
        return gx, gw, gb, None


class SplitLinear(nn.Linear):
    """``nn.Linear`` (same constructor, parameters and state dict) whose weight gradient goes to ``store``'s
    queue while the store is deferring, and is computed at once otherwise."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 store: WeightGradStore):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.store = store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DeferredLinear.apply(x, self.weight, self.bias, self.store)


class _ExpertMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, counts, store):
        ctx.save_for_backward(x, weight, counts)
        ctx.store = store
        return grouped_matmul(x, weight.transpose(1, 2), counts, block_offsets(counts))  # (A, n)

    @staticmethod
    def backward(ctx, gy):
        x, weight, counts = ctx.saved_tensors
        gy = gy.contiguous()
        gx = grouped_matmul(gy, weight, counts, block_offsets(counts))  # (A, k): B

        def per_expert():  # W: gy_eᵀ·x_e for each expert's block of rows → (E, n, k)
            sizes = counts.tolist()
            return torch.stack([a.T @ b for a, b in zip(gy.split(sizes), x.split(sizes))])

        if ctx.store is not None and ctx.store.deferring:
            ctx.store.queue.append(lambda: accumulate(weight, per_expert()))
            return gx, None, None, None
        return gx, per_expert(), None, None


def expert_matmul(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor,
                  store: WeightGradStore | None = None) -> torch.Tensor:
    """Rows of x (A, k), sorted by expert with ``counts[e]`` rows for expert e, times that expert's
    weight[e] (E, n, k) transposed → (A, n). With a deferring ``store`` the weight gradient is queued (W)."""
    return _ExpertMatmul.apply(x, weight, counts, store)
