"""Exercises for notebook 08: group advantages and the k3 KL estimator."""

from __future__ import annotations

import torch

from ..rl.grpo import group_advantages, per_token_kl
from .core import exercise


@exercise("group_advantages", hint="reshape to (groups, G); subtract each group's mean and divide by its "
                                    "(unbiased) std + 1e-4; flatten back")
def _adv(fn) -> str:
    """group_advantages(rewards, G) → (r − group mean) / (group std + 1e-4), rewards in group order."""
    cases = [(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4), (torch.tensor([0.0, 1.1, 0.1, 0.1, 1.0, 1.0]), 3),
             (torch.tensor([2.0, 2.0, 0.0, 1.0]), 2)]
    for r, g in cases:
        got, want = fn(r.clone(), g), group_advantages(r, g).advantages
        assert isinstance(got, torch.Tensor) and got.shape == want.shape, f"expected shape {tuple(want.shape)}"
        err = (got.float() - want).abs().max().item()
        assert err < 1e-4, f"rewards {r.tolist()}, G={g}: max difference {err:.3g} (a group of equal rewards → 0)"
    return "matches dslearn.rl.group_advantages, including a zero-variance group"


@exercise("k3_kl", hint="with d = ref_logp − logp: exp(d) − d − 1 (it is ≥ 0 and 0 when the policies agree)")
def _kl(fn) -> str:
    """k3_kl(logp, ref_logp) → π_ref/π_θ − log(π_ref/π_θ) − 1 per token."""
    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(3, 5, generator=g) * 3, -torch.rand(3, 5, generator=g) * 3
    got = fn(logp.clone(), ref.clone())
    want = per_token_kl(logp, ref)
    assert isinstance(got, torch.Tensor) and got.shape == want.shape, f"expected shape {tuple(want.shape)}"
    err = (got - want).abs().max().item()
    assert err < 1e-5, f"max difference {err:.3g}; check the direction of the ratio (π_ref / π_θ)"
    return "matches dslearn.rl.per_token_kl"
