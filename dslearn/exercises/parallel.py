"""Exercises for notebook 06: the 1F1B order, the B/W split of a Linear layer, a pipeline simulator, the
send table of an expert-parallel dispatch.

Import this module (``import dslearn.exercises.parallel``) to register them, then ``check(name, fn)``.
"""

from __future__ import annotations

import torch

from ..parallel import Costs, build_schedule, simulate
from .core import exercise


@exercise("one_f_one_b_order", hint="rank i runs min(PP−1−i, M) warm-up forwards, then alternates "
                                    "('F', next) and ('B', oldest), then runs the remaining backwards")
def _one_f_one_b_order(fn) -> str:
    """one_f_one_b_order(rank, num_ranks, num_microbatches) → [("F", 0), ("F", 1), ("B", 0), ...]."""
    cases = [(r, p, m) for p, m in [(2, 4), (4, 8), (3, 3), (4, 2)] for r in range(p)]
    for r, p, m in cases:
        want = [("F" if op.kind == "F" else "B", op.mb) for op in build_schedule("1f1b", p, m).ops[r]]
        got = [tuple(x) for x in fn(r, p, m)]
        assert got == want, f"rank {r} of PP={p}, M={m}: got {got[:8]}..., expected {want[:8]}..."
    return f"the 1F1B order is right on all {len(cases)} (rank, PP, M) cases"


@exercise("linear_backward_split", hint="B: gx = gy @ W (what the previous stage needs); "
                                        "W: gW = gyᵀ · x, summed over every token (flatten the leading dims)")
def _linear_backward_split(fn) -> str:
    """linear_backward_split(x, weight, gy) → (gx, gw) for y = x @ weightᵀ, x of any leading shape."""
    g = torch.Generator().manual_seed(0)
    for shape in [(5, 3), (2, 4, 3), (2, 2, 3, 3)]:
        x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(7, shape[-1], generator=g, dtype=torch.float64, requires_grad=True)
        gy = torch.randn(*shape[:-1], 7, generator=g, dtype=torch.float64)
        (x @ w.T).backward(gy)
        out = fn(x.detach(), w.detach(), gy)
        assert isinstance(out, tuple) and len(out) == 2, "return (gx, gw)"
        gx, gw = out
        assert tuple(gx.shape) == tuple(x.shape), f"gx has shape {tuple(gx.shape)}, expected {tuple(x.shape)}"
        assert tuple(gw.shape) == tuple(w.shape), f"gw has shape {tuple(gw.shape)}, expected {tuple(w.shape)}"
        torch.testing.assert_close(gx, x.grad, msg=f"x of shape {shape}: gx differs from autograd")
        torch.testing.assert_close(gw, w.grad, msg=f"x of shape {shape}: gw differs from autograd")
    return "B and W of a Linear layer equal autograd's gradients for 2-, 3- and 4-d inputs"


@exercise("makespan_1f1b", hint="keep per rank the time it is free; F(s, m) starts at max(free, end of F(s−1, m)), "
                                "B(s, m) at max(free, end of B(s+1, m)); walk each rank's 1F1B order")
def _makespan_1f1b(fn) -> str:
    """makespan_1f1b(num_ranks, num_microbatches, F, B) → the time the last 1F1B op ends (no latency)."""
    cases = [(2, 4, 1.0, 2.0), (4, 8, 1.0, 2.0), (4, 4, 1.5, 1.0), (3, 7, 0.5, 2.5), (1, 3, 1.0, 1.0)]
    for p, m, F, B in cases:
        want = simulate(build_schedule("1f1b", p, m), Costs(F=F, B=B, W=0.0)).makespan
        got = fn(p, m, F, B)
        assert abs(float(got) - want) < 1e-9, f"PP={p}, M={m}, F={F}, B={B}: got {got}, expected {want}"
    return f"matches dslearn's simulator on {len(cases)} cases: (M + PP − 1)(F + B)"


@exercise("ep_send_counts", hint="expert e lives on EP rank e // (E/EP) as its local expert e % (E/EP); count "
                                 "the (token, k) assignments per expert (torch.bincount with minlength) and reshape")
def _ep_send_counts(fn) -> str:
    """ep_send_counts(topk_idx, n_experts, ep_size) → (ep_size, n_experts // ep_size) int64: how many token rows
    this rank's dispatch sends to EP rank j for its local expert i (one row per (token, chosen expert))."""
    g = torch.Generator().manual_seed(0)
    cases = [(16, 2, 8, 2), (7, 3, 12, 4), (5, 1, 4, 1), (1, 2, 6, 3)]
    for n, k, e, ep in cases:
        idx = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(n)])  # (N, K) distinct experts per token
        want = torch.bincount(idx.flatten(), minlength=e).view(ep, e // ep)
        got = fn(idx, e, ep)
        assert torch.is_tensor(got) and tuple(got.shape) == (ep, e // ep), \
            f"N={n}, K={k}, E={e}, EP={ep}: expected a tensor of shape {(ep, e // ep)}, got {got!r}"
        assert torch.equal(got.long(), want), \
            f"N={n}, K={k}, E={e}, EP={ep}: got {got.tolist()}, expected {want.tolist()}"
    return f"the dispatch's send table is right on {len(cases)} cases (its row sums are all_to_all_single's in_splits)"
