"""The grouped matrix product of an MoE layer: rows sorted by expert, each block times its expert's matrix.

After routing, the A (token, expert) assignments are sorted so each expert's rows form one contiguous
block of ``counts[e]`` rows. One expert-batched GEMM then computes every block at once:

    y[rows of e] = x[rows of e] · W_eᵀ        x (A, k), W (E, n, k) → y (A, n)

``torch.nn.functional.grouped_mm`` (torch ≥ 2.8) does this in one call, given the row offsets where
each block ends; on an older torch the same sorted layout runs block by block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HAS_GROUPED_MM = hasattr(F, "grouped_mm")


def block_offsets(counts: torch.Tensor) -> torch.Tensor | None:
    """(E,) int32 row offsets where each expert's block ends, or None when grouped_mm is unavailable."""
    return counts.cumsum(0).to(torch.int32) if HAS_GROUPED_MM else None


def _aligned(t: torch.Tensor) -> bool:
    """grouped_mm's requirement: the data and every non-unit stride on 16-byte boundaries."""
    size = t.element_size()
    return t.data_ptr() % 16 == 0 and all(st * size % 16 == 0 for st in t.stride() if st != 1)


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, offs: torch.Tensor | None) -> torch.Tensor:
    """Rows of x (A, k) sorted by expert times their expert's w[e] (E, k, n) → (A, n).

    ``F.grouped_mm`` needs 16-byte-aligned strides: widths that are not a multiple of 4 in fp32 (8 in bf16), which
    ModelConfig accepts, run block by block instead (same numbers; tests/test_moe_dispatch.py)."""
    out_row_bytes = w.shape[-1] * x.element_size()  # the output (A, n), and its gradient in backward, too
    if offs is not None and _aligned(x) and _aligned(w) and out_row_bytes % 16 == 0:
        return F.grouped_mm(x, w, offs=offs)
    return torch.cat([xe @ w[e] for e, xe in enumerate(x.split(counts.tolist()))])  # block by block


def expert_linear(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Like ``F.linear`` per expert: rows of x (A, k) sorted by expert times w[e]ᵀ, w (E, n, k) → (A, n)."""
    return grouped_matmul(x, w.transpose(1, 2), counts, block_offsets(counts))
