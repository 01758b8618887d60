"""Running the routed experts: a per-expert loop (the reference) and a sorted, grouped-matmul fast path.

After the gate, token t must visit experts topk_idx[t, 0..K-1] and sum their outputs weighted by
g_{i,t}:

    routed_t = Σ_k g_{idx[t,k], t} · FFN_{idx[t,k]}(u_t),   FFN_i(u) = W2_i (SiLU(W1_i u) ⊙ W3_i u)

There are N·K (token, expert) *assignments*. Two ways to compute them, same numbers:

- ``loop_dispatch`` (reference, the spec): for each expert that received tokens, gather its tokens,
  run its FFN, scale, scatter-add back. Easy to read; one Python iteration per expert (never per
  token), so E small matmuls plus E gathers/scatters forward and backward.
- ``grouped_dispatch`` (fast): flatten the assignments, *sort them by expert* (a stable argsort), so
  each expert's rows are contiguous; then every expert runs in ONE grouped matmul
  (``layers.grouped``: ``torch.nn.functional.grouped_mm`` with the row offsets where each expert's block
  ends): one for W1;W3 fused, one for W2. One gather before, one ``index_add_`` after, and the gate weight g_{i,t}
  applied to the narrow (A, I) activation before W2 rather than to the (A, d) output. This is what the
  all-to-all + grouped GEMM of a real expert-parallel system computes on one device. Where
  ``grouped_mm`` is missing (older torch), the same sorted layout runs slice by slice.

``keep`` (N, K) bool marks assignments that survive V2's token dropping; dropped ones contribute
nothing (the token still keeps its residual path and the shared experts).

Weight layout (Hugging Face ``DeepseekV3Experts``): ``gate_up_proj`` (E, 2I, d) = [W1_i; W3_i]
stacked per expert, ``down_proj`` (E, d, I) = W2_i.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers.grouped import expert_linear


def _expert_ffn(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, linear=F.linear) -> torch.Tensor:
    """One expert on its tokens: x (n, d), gate_up (2I, d), down (d, I) → (n, d)."""
    g, u = linear(x, gate_up).chunk(2, dim=-1)  # (n, I) each
    return linear(F.silu(g) * u, down)  # (n, d)


def loop_dispatch(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, gate_up_proj: torch.Tensor,
                  down_proj: torch.Tensor, keep: torch.Tensor | None = None, linear=F.linear) -> torch.Tensor:
    """Reference: x (N, d), topk_idx/topk_weight (N, K) → Σ_k g·FFN (N, d), one iteration per expert.
    ``linear(x, w)`` is the matrix product (``F.linear``, or FP8's ``fp8_linear``)."""
    out = torch.zeros_like(x)  # (N, d)
    weight = topk_weight if keep is None else topk_weight * keep
    for e in range(gate_up_proj.shape[0]):
        hit = topk_idx == e if keep is None else (topk_idx == e) & keep  # (N, K)
        token, slot = hit.nonzero(as_tuple=True)  # assignments to expert e
        if token.numel() == 0:
            continue
        y = _expert_ffn(x[token], gate_up_proj[e], down_proj[e], linear)  # (n_e, d)
        out.index_add_(0, token, (y * weight[token, slot, None]).to(out.dtype))
    return out


def sort_by_expert(topk_idx: torch.Tensor, keep: torch.Tensor | None, n_experts: int):
    """Flatten the (token, expert) assignments and sort them by expert.

    Returns (token (A,), flat_pos (A,), counts (E,)): for the A kept assignments in expert order,
    the token each came from, its position in the flattened (N·K) topk arrays, and how many rows
    each expert receives."""
    flat = topk_idx.flatten()  # (N·K,)
    pos = torch.arange(flat.numel(), device=flat.device)
    if keep is not None:
        kept = keep.flatten()
        flat, pos = flat[kept], pos[kept]
    order = flat.argsort(stable=True)  # (A,) expert-major order
    pos = pos[order]
    token = pos // topk_idx.shape[1]
    counts = torch.bincount(flat, minlength=n_experts)  # (E,)
    return token, pos, counts


def grouped_dispatch(x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                     gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                     keep: torch.Tensor | None = None, matmul=expert_linear) -> torch.Tensor:
    """Fast path, same result as ``loop_dispatch``: sort assignments by expert, two grouped matmuls.
    ``matmul(rows, w, counts)`` is the grouped product (``expert_linear``; FP8's ``fp8_expert_linear``;
    the pipeline's ``expert_matmul`` that can defer its weight gradient)."""
    N, d = x.shape
    E = gate_up_proj.shape[0]
    # 1. sort the assignments so each expert's rows are one contiguous block
    token, pos, counts = sort_by_expert(topk_idx, keep, E)  # (A,), (A,), (E,)
    # 2. gather: one row per assignment
    dtype = gate_up_proj.dtype
    xs = x[token].to(dtype)  # (A, d)
    # 3. W1;W3 for all experts at once, SwiGLU, then W2
    h = matmul(xs, gate_up_proj, counts)  # (A, 2I)
    g, u = h.chunk(2, dim=-1)  # (A, I) each
    # 4. weight by g_{i,t} *before* W2 (W2 is linear: W2(g·a) = g·W2(a), and I < d makes it cheaper)
    a = F.silu(g) * u * topk_weight.flatten()[pos, None].to(h.dtype)  # (A, I)
    y = matmul(a, down_proj, counts)  # (A, d)
    # 5. scatter-add back to the tokens
    return torch.zeros(N, d, dtype=x.dtype, device=x.device).index_add(0, token, y.to(x.dtype))  # (N, d)


DISPATCH = {"grouped": grouped_dispatch, "loop": loop_dispatch}  # ModelConfig.moe_impl → dispatch
