"""Exercises for notebook 09: DPO's loss, the Bradley–Terry loss, the helpfulness rule, and distillation's compute."""

from __future__ import annotations

import torch

from ..rl.distill import grpo_step_flops
from ..rl.preference import Candidate, bradley_terry_loss, dpo_loss, prefer
from .core import exercise


@exercise("dpo_loss", hint="Δ = (π_c − ref_c) − (π_r − ref_r); loss = mean of −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ) "
                           "(torch.nn.functional.logsigmoid is stable)")
def _dpo(fn) -> str:
    """dpo_loss(pc, pr, rc, rr, beta, eps) → mean −(1−ε) log σ(βΔ) − ε log σ(−βΔ) over pairs (sequence log-probs)."""
    g = torch.Generator().manual_seed(0)
    for beta, eps in [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2), (2.0, 0.1)]:
        pc, pr, rc, rr = (-10 * torch.rand(5, generator=g) for _ in range(4))
        got = fn(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta, eps)
        want, _ = dpo_loss(pc, pr, rc, rr, beta, eps)
        assert isinstance(got, torch.Tensor) and got.dim() == 0, "return one number (a 0-d tensor): the mean over pairs"
        err = abs(got.item() - want.item())
        assert err < 1e-5, f"β={beta}, ε={eps}: {got.item():.6f} vs {want.item():.6f}" + (
            " — with ε > 0 a share ε of the labels is assumed flipped" if eps else "")
    return "matches dslearn.rl.preference.dpo_loss (and so TRL's) for 4 settings of β and label smoothing"


@exercise("bradley_terry", hint="−log σ(r_chosen − r_rejected), averaged over pairs")
def _bt(fn) -> str:
    """bradley_terry(r_chosen, r_rejected) → mean −log σ(r_c − r_r)."""
    g = torch.Generator().manual_seed(1)
    rc, rr = torch.randn(7, generator=g) * 3, torch.randn(7, generator=g) * 3
    got, (want, _) = fn(rc.clone(), rr.clone()), bradley_terry_loss(rc, rr)
    assert isinstance(got, torch.Tensor) and got.dim() == 0, "return one number (a 0-d tensor)"
    assert abs(got.item() - want.item()) < 1e-5, f"{got.item():.6f} vs {want.item():.6f}"
    return "matches dslearn.rl.preference.bradley_terry_loss"


@exercise("helpfulness_rule", hint="correct beats wrong; two correct: the shorter wins if shorter by ≥ min_gap tokens; "
                                   "two wrong: neither is preferred")
def _rule(fn) -> str:
    """prefer(a, b, min_gap) → True when the helpfulness rule prefers Candidate a to Candidate b."""
    p = (1,)
    cases = [(True, 10, True, 20, 4), (True, 20, True, 10, 4), (True, 30, False, 5, 4), (False, 5, True, 30, 4),
             (False, 5, False, 30, 4), (True, 10, True, 12, 4), (True, 10, True, 14, 4), (True, 10, True, 12, 2)]
    for ca, la, cb, lb, gap in cases:
        a, b = Candidate(p, (0,) * la, ca), Candidate(p, (0,) * lb, cb)
        got, want = fn(a, b, gap), prefer(a, b, gap)
        ra, rb = "right" if ca else "wrong", "right" if cb else "wrong"
        assert bool(got) == want, f"a = ({ra}, {la} tokens), b = ({rb}, {lb} tokens), min_gap {gap}: expected {want}"
    return f"agrees with dslearn.rl.preference.prefer on {len(cases)} cases"


@exercise("grpo_flops", hint="t = P + R; sampling and the π_old pass are forwards (2N·t each), the π_ref pass too when "
                             "β > 0; each of the μ updates is a forward + backward (6N·t)")
def _flops(fn) -> str:
    """grpo_flops(n_params, prompt_tokens, response_tokens, mu, beta) → the student FLOPs of one GRPO step."""
    for args in [(1000, 40, 60, 2, 0.0), (500, 10, 90, 1, 0.04), (123, 7, 0, 3, 0.1)]:
        got, want = fn(*args), grpo_step_flops(*args)
        assert abs(got - want) <= 1e-9 * want, f"N, P, R, μ, β = {args}: {got:g} vs {want:g}"
    return "matches dslearn.rl.distill.grpo_step_flops"
