"""Chapter 06's exercise checkers: reference solutions pass, typical mistakes fail with a useful message."""

import torch
from helpers import todo

import dslearn.exercises.parallel  # noqa: F401  (registers the chapter's exercises)
from dslearn.exercises import check


def order(rank, p, m):
    w = min(p - 1 - rank, m)
    out = [("F", j) for j in range(w)]
    for j in range(m - w):
        out += [("F", w + j), ("B", j)]
    return out + [("B", j) for j in range(m - w, m)]


def split(x, w, gy):
    return gy @ w, gy.flatten(0, -2).T @ x.flatten(0, -2)


def test_reference_solutions_pass():
    assert check("one_f_one_b_order", order).passed
    assert check("linear_backward_split", split).passed
    assert check("makespan_1f1b", lambda p, m, F, B: (m + p - 1) * (F + B)).passed
    assert check("ep_send_counts", send_counts).passed


def send_counts(topk_idx, n_experts, ep):
    return torch.bincount(topk_idx.flatten(), minlength=n_experts).view(ep, n_experts // ep)


def test_typical_mistakes_fail_with_a_hint():
    r = check("one_f_one_b_order", lambda rank, p, m: [("F", j) for j in range(m)] + [("B", j) for j in range(m)])
    assert r.status == "FAIL" and "rank 0" in r.message and "warm-up" in str(r)
    r = check("linear_backward_split", lambda x, w, gy: (gy @ w, gy[..., :, None].mul(x[..., None, :]).mean(0)))
    assert r.status == "FAIL"
    r = check("makespan_1f1b", lambda p, m, F, B: m * (F + B))
    assert r.status == "FAIL" and "expected" in r.message
    r = check("ep_send_counts", lambda idx, e, ep: torch.bincount(idx[:, 0], minlength=e).view(ep, e // ep))
    assert r.status == "FAIL" and "expected" in r.message  # counted only each token's first expert
    r = check("ep_send_counts", lambda idx, e, ep: torch.bincount(idx.flatten(), minlength=e).view(e // ep, ep))
    assert r.status == "FAIL" and "shape" in r.message


def test_untouched_exercises_are_todo():
    for name in ("one_f_one_b_order", "linear_backward_split", "makespan_1f1b", "ep_send_counts"):
        assert check(name, todo).status == "TODO"
