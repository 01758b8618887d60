"""Exercises for notebook 07: the MTP target shift, the expected tokens per verify step, greedy speculative
acceptance, and the speculative-sampling acceptance rule with its residual distribution.

Import this module (``import dslearn.exercises.mtp``) to register them, then ``check(name, fn)``.
"""

from __future__ import annotations

import torch

from .core import exercise


@exercise("mtp_shift", hint="x = t_1..t_T are the inputs, y = t_2..t_{T+1} the targets; depth k at position i reads "
                            "Emb(t_{i+k}) = x[:, k:] and predicts t_{i+k+1} = y[:, k:] — both drop the first k")
def _mtp_shift(fn) -> str:
    """mtp_shift(x (B,T), y (B,T), k) → (embedding ids (B,T−k), targets (B,T−k)) of MTP depth k."""
    t = torch.arange(100, 112).view(1, 12)  # t_1..t_12: token value = 100 + position
    x, y = t[:, :-1], t[:, 1:]
    for k in (1, 2, 3):
        out = fn(x.clone(), y.clone(), k)
        assert isinstance(out, tuple) and len(out) == 2, "return (embedding ids, targets)"
        emb, tgt = out
        want_emb, want_tgt = x[:, k:], y[:, k:]
        assert tuple(emb.shape) == tuple(want_emb.shape), (f"k={k}: embedding ids of shape {tuple(emb.shape)}, "
                                                           f"expected {tuple(want_emb.shape)}")
        assert torch.equal(emb, want_emb), (f"k={k}: position 0 should read token {want_emb[0, 0].item()} "
                                            f"(t_{1 + k}), got {emb[0, 0].item()}")
        assert tuple(tgt.shape) == tuple(want_tgt.shape), (f"k={k}: targets of shape {tuple(tgt.shape)}, "
                                                           f"expected {tuple(want_tgt.shape)}")
        assert torch.equal(tgt, want_tgt), (f"k={k}: position 0 should predict token {want_tgt[0, 0].item()} "
                                            f"(t_{2 + k}), got {tgt[0, 0].item()}")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 50, (3, 9), generator=g), torch.randint(0, 50, (3, 9), generator=g)
    emb, tgt = fn(x, y, 2)
    assert torch.equal(emb, x[:, 2:]) and torch.equal(tgt, y[:, 2:]), "a batch of 3 rows: shift every row alike"
    return "depth k reads Emb(t_{i+k}) and predicts t_{i+k+1}, for k = 1, 2, 3 and a batch"


def _expected(alpha: float, depth: int) -> float:
    return float(depth + 1) if alpha == 1.0 else (1 - alpha ** (depth + 1)) / (1 - alpha)


@exercise("expected_tokens", hint="draft j is kept only if drafts 1..j all are: P = α^j; the verify step always "
                                  "adds one token of its own, so E = 1 + α + … + α^D = (1 − α^{D+1}) / (1 − α), "
                                  "and D + 1 at α = 1 (do not divide by zero)")
def _expected_tokens(fn) -> str:
    """expected_tokens(alpha, depth) → expected tokens per verify step with D drafted tokens, each accepted
    with probability α independently (given the earlier ones were)."""
    cases = [(0.0, 1), (0.5, 1), (0.85, 1), (0.9, 2), (0.7, 3), (1.0, 2), (0.3, 0)]
    for a, d in cases:
        got = float(fn(a, d))
        assert abs(got - _expected(a, d)) < 1e-9, f"α={a}, D={d}: got {got:.6f}, expected {_expected(a, d):.6f}"
    return f"1 + α + … + α^D on {len(cases)} cases, α = 1 included"


def _greedy(draft: list[int], main: list[int]) -> list[int]:
    out = []
    for j, d in enumerate(draft):
        if d != main[j]:
            return out + [main[j]]
        out.append(d)
    return out + [main[len(draft)]]


@exercise("greedy_accept", hint="walk the drafts in order: keep draft j while it equals the main model's argmax "
                                "at the position before it; at the first mismatch emit the main model's token "
                                "instead and stop; if every draft was kept, emit the main model's last token too")
def _greedy_accept(fn) -> str:
    """greedy_accept(draft [d_1..d_D], main [m_0..m_D]) → the tokens this verify step emits, where m_j is the
    main model's argmax after the prompt and d_1..d_j."""
    cases = [([5], [5, 7]), ([5], [4, 7]), ([1, 2], [1, 2, 3]), ([1, 2], [1, 9, 3]), ([1, 2], [8, 2, 3]),
             ([], [6]), ([3, 3, 3], [3, 3, 3, 3])]
    for draft, main in cases:
        got = [int(t) for t in fn(list(draft), list(main))]
        want = _greedy(draft, main)
        assert got == want, f"draft {draft}, main argmax {main}: got {got}, expected {want}"
    return f"{len(cases)} cases: the same tokens plain greedy decoding would produce, 1 to D + 1 per step"


@exercise("speculative_residual", hint="accept draft x with probability min(1, p(x)/q(x)); on rejection sample "
                                       "from max(p − q, 0) normalised to sum 1 (torch.clamp(p - q, min=0))")
def _speculative_residual(fn) -> str:
    """speculative_residual(p (V,), q (V,)) → (accept (V,), residual (V,)): the probability of keeping a draft x
    ~ q, and the distribution to sample from after a rejection (p = main model, q = draft)."""
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64) * (1 + i), 0)
        q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64) * (1 + i), 0)
        out = fn(p.clone(), q.clone())
        assert isinstance(out, tuple) and len(out) == 2, "return (accept, residual)"
        acc, res = (torch.as_tensor(t, dtype=torch.float64) for t in out)
        want = torch.clamp(p / q, max=1.0)
        err = (acc - want).abs().max().item()
        assert err < 1e-9, f"case {i}: acceptance probabilities differ by up to {err:.3g} from min(1, p/q)"
        assert abs(res.sum().item() - 1) < 1e-9 and res.min().item() >= 0, \
            f"case {i}: the residual must be a distribution (≥ 0, sum 1), sums to {res.sum().item():.4f}"
        kept = q * acc  # P(draft x and keep it)
        marginal = kept + (1 - kept.sum()) * res
        err = (marginal - p).abs().max().item()
        assert err < 1e-9, f"case {i}: the emitted token's distribution differs from p by {err:.3g}"
    return "min(1, p/q) and norm(max(p − q, 0)): the emitted token is distributed exactly as p, on 4 cases"
