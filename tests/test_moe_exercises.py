"""Chapters 03–04 exercises: reference solutions pass, untouched stubs are TODO, wrong answers FAIL with a hint."""

from __future__ import annotations

import torch
from helpers import todo

import dslearn.exercises.moe  # noqa: F401  (registers the exercises)
from dslearn.exercises import check


def device_limited_topk(logits, k, n_devices, m):
    s = logits.softmax(-1)
    N, E = s.shape
    dev = s.view(N, n_devices, E // n_devices).amax(-1)
    keep = torch.zeros_like(dev, dtype=torch.bool).scatter(1, dev.topk(m, -1).indices, True)
    masked = s.masked_fill(~keep.repeat_interleave(E // n_devices, dim=1), float("-inf"))
    idx = masked.topk(k, -1).indices
    return idx, s.gather(1, idx)


def expert_balance_loss(scores, topk_idx):
    T, K = topk_idx.shape
    E = scores.shape[1]
    f = torch.bincount(topk_idx.flatten(), minlength=E).float() * E / (K * T)
    return (f * scores.mean(0)).sum()


def v3_gate(logits, bias, k, n_group, topk_group, scaling):
    s = logits.sigmoid()
    N, E = s.shape
    c = s + bias
    gs = c.view(N, n_group, -1).topk(min(2, E // n_group), -1).values.sum(-1)
    keep = torch.zeros_like(gs, dtype=torch.bool).scatter(1, gs.topk(topk_group, -1).indices, True)
    idx = c.masked_fill(~keep.repeat_interleave(E // n_group, dim=1), float("-inf")).topk(k, -1).indices
    w = s.gather(1, idx)
    return idx, w / w.sum(-1, keepdim=True) * scaling


def test_reference_solutions_pass():
    assert check("device_limited_topk", device_limited_topk).passed
    assert check("expert_balance_loss", expert_balance_loss).passed
    assert check("v3_gate", v3_gate).passed
    assert check("bias_update", lambda b, load, g: b - g * torch.sign(load - load.mean())).passed
    assert check("max_violation", lambda load: (load.max() / load.mean() - 1).item()).passed


def test_stubs_and_mistakes():
    assert check("v3_gate", todo).status == "TODO"
    biased = lambda lg, b, k, G, M, sc: (lambda i: (i, (lg.sigmoid() + b).gather(1, i)))(
        v3_gate(lg, b, k, G, M, sc)[0])  # weights from s + b: the classic mistake
    r = check("v3_gate", biased)
    assert r.status == "FAIL" and "gate weights differ" in r.message and "NOT" in r.hint
    in_place = lambda b, load, g: b.sub_(g * torch.sign(load - load.mean()))
    r = check("bias_update", in_place)
    assert r.status == "FAIL" and "modified in place" in r.message
