"""Exercises for notebooks 03–04: device-limited routing, the expert balance loss, V3's gate and bias update.

Import this module (``import dslearn.exercises.moe``) to register them, then ``check(name, fn)``.
"""

from __future__ import annotations

import torch

from ..moe import expert_balance_loss, max_violation, route
from .core import exercise


def _cases(n: int, E: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, E, generator=g) * (1 + i) for i in range(n)]


def _same_choice(got, r, what: str) -> None:
    idx, w = got
    assert isinstance(idx, torch.Tensor) and isinstance(w, torch.Tensor), f"{what}: return (indices, weights) tensors"
    assert idx.shape == r.topk_idx.shape, (f"{what}: indices of shape {tuple(idx.shape)}, "
                                           f"expected {tuple(r.topk_idx.shape)}")
    got_idx, order = idx.long().sort(dim=-1)
    want_idx, want_order = r.topk_idx.sort(dim=-1)
    bad = (got_idx != want_idx).any(dim=-1).nonzero()
    assert len(bad) == 0, (f"{what}: token {bad[0].item()} chose experts {got_idx[bad[0].item()].tolist()}, "
                           f"expected {want_idx[bad[0].item()].tolist()}")
    err = (w.float().gather(1, order) - r.topk_weight.detach().gather(1, want_order)).abs().max().item()
    assert err < 1e-5, f"{what}: gate weights differ by up to {err:.3g}"


@exercise("device_limited_topk", hint="softmax the logits; device score = max affinity of its experts "
                                      "(scores.view(N, D, E//D).amax(-1)); set experts outside the top-M devices "
                                      "to -inf; then topk(K); the weights are the softmax affinities themselves")
def _device_limited(fn) -> str:
    """device_limited_topk(logits (N,E), k, n_devices, m) → (indices (N,k), weights (N,k)), V2's routing."""
    for i, logits in enumerate(_cases(3, 8, 0)):
        for D, M, K in ((4, 1, 2), (2, 1, 3), (4, 2, 3)):
            r = route(logits, top_k=K, topk_method="group_limited_greedy", n_group=D, topk_group=M)
            _same_choice(fn(logits.clone(), K, D, M), r, f"case {i} (D={D}, M={M}, K={K})")
    return "chooses the same experts with the same weights as dslearn on 9 cases"


@exercise("expert_balance_loss", hint="f_i = N_r/(K_r·T) · (number of tokens whose top-K holds i) — "
                                      "torch.bincount(topk_idx.flatten(), minlength=E); P_i = scores.mean(0); "
                                      "return (f * P).sum() (without α1)")
def _balance(fn) -> str:
    """expert_balance_loss(scores (T,E), topk_idx (T,K)) → Σ_i f_i P_i (a 0-d tensor with gradient)."""
    for i, logits in enumerate(_cases(3, 8, 1)):
        r = route(logits, top_k=2)
        got = fn(r.scores.detach().clone(), r.topk_idx.clone())
        want = expert_balance_loss(r.scores.detach(), r.topk_idx)
        assert isinstance(got, torch.Tensor), f"case {i}: return a tensor, got {type(got).__name__}"
        assert abs(got.item() - want.item()) < 1e-5, f"case {i}: got {got.item():.6f}, expected {want.item():.6f}"
    s = torch.full((4, 4), 0.25)
    got = fn(s, torch.arange(4)[:, None])
    assert abs(float(got) - 1.0) < 1e-6, f"perfect balance should give exactly 1, got {float(got):.6f}"
    return "matches the formula on 4 cases, and equals 1 at perfect balance"


@exercise("v3_gate", hint="s = sigmoid(logits); choose with s + bias: group score = sum of the top-2 biased "
                          "scores in each group, keep topk_group groups, topk(K) among them; weights = s (NOT "
                          "s + bias) at the chosen experts, divided by their sum, times the scaling factor")
def _v3_gate(fn) -> str:
    """v3_gate(logits (N,E), bias (E,), k, n_group, topk_group, scaling) → (indices (N,k), weights (N,k))."""
    g = torch.Generator().manual_seed(2)
    for i, logits in enumerate(_cases(3, 16, 3)):
        bias = 0.3 * torch.randn(16, generator=g)
        for G, M, K in ((4, 2, 4), (8, 3, 2), (1, 1, 3)):
            r = route(logits, top_k=K, scoring_func="sigmoid", topk_method="noaux_tc", n_group=G, topk_group=M,
                      bias=bias, norm_topk_prob=True, routed_scaling_factor=2.5)
            _same_choice(fn(logits.clone(), bias.clone(), K, G, M, 2.5), r, f"case {i} (G={G}, M={M}, K={K})")
    return "selection by s + b, weights from s, on 9 cases: the same as Hugging Face's DeepseekV3TopkRouter"


@exercise("bias_update", hint="overloaded (load > mean) → bias − γ; underloaded → bias + γ; exactly at the "
                              "mean → unchanged: bias - gamma * torch.sign(load - load.mean())")
def _bias_update(fn) -> str:
    """bias_update(bias (E,), load (E,), gamma) → the new bias (do not modify the input)."""
    cases = [(torch.zeros(4), torch.tensor([10.0, 2.0, 4.0, 4.0]), 0.001),
             (torch.tensor([0.1, -0.2, 0.0]), torch.tensor([3.0, 3.0, 3.0]), 0.5),
             (torch.randn(8, generator=torch.Generator().manual_seed(0)), torch.arange(8.0), 0.01)]
    for i, (b, load, gamma) in enumerate(cases):
        before = b.clone()
        got = fn(b, load, gamma)
        assert torch.equal(b, before), f"case {i}: the input bias was modified in place; return a new tensor"
        want = before - gamma * torch.sign(load - load.mean())
        err = (got - want).abs().max().item()
        assert err < 1e-7, f"case {i}: got {got.tolist()}, expected {want.tolist()}"
    return "±γ by over/under load, unchanged at the mean, on 3 cases"


@exercise("max_violation", hint="MaxVio = max(load) / mean(load) − 1")
def _maxvio(fn) -> str:
    """max_violation(load (E,)) → float, 0 for perfect balance."""
    cases = [torch.ones(8), torch.tensor([4.0, 2.0, 1.0, 1.0]), torch.tensor([8.0, 0.0, 0.0, 0.0])]
    for load in cases:
        got, want = float(fn(load)), max_violation(load)
        assert abs(got - want) < 1e-6, f"load {load.tolist()}: got {got:.4f}, expected {want:.4f}"
    return "0 when balanced, N_r − 1 = 3 when one of 4 experts takes everything"
