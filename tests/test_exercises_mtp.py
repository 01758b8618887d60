"""Chapter 07's exercise checkers: reference solutions pass, untouched stubs are TODO, typical mistakes fail."""

import torch
from helpers import todo

import dslearn.exercises.mtp  # noqa: F401  (registers the chapter's exercises)
from dslearn.exercises import check


def mtp_shift(x, y, k):
    return x[:, k:], y[:, k:]


def expected_tokens(alpha, depth):
    return depth + 1 if alpha == 1 else (1 - alpha ** (depth + 1)) / (1 - alpha)


def greedy_accept(draft, main):
    out = []
    for j, d in enumerate(draft):
        if d != main[j]:
            return out + [main[j]]
        out.append(d)
    return out + [main[len(draft)]]


def speculative_residual(p, q):
    r = torch.clamp(p - q, min=0)
    return torch.clamp(p / q, max=1), r / r.sum()


def test_reference_solutions_pass():
    for name, fn in [("mtp_shift", mtp_shift), ("expected_tokens", expected_tokens),
                     ("greedy_accept", greedy_accept), ("speculative_residual", speculative_residual)]:
        r = check(name, fn)
        assert r.passed, str(r)


def test_stubs_are_todo():
    for name in ("mtp_shift", "expected_tokens", "greedy_accept", "speculative_residual"):
        assert check(name, todo).status == "TODO"


def test_typical_mistakes_fail_with_a_useful_message():
    r = check("mtp_shift", lambda x, y, k: (x[:, k - 1:-1], y[:, k:]))  # off by one: reads t_{i+k−1}
    assert r.status == "FAIL" and "should read token 101 (t_2), got 100" in r.message
    r = check("mtp_shift", lambda x, y, k: (x[:, k:], y[:, k + 1:]))  # predicts one too far
    assert r.status == "FAIL" and "targets of shape" in r.message
    r = check("expected_tokens", lambda a, d: (1 - a ** (d + 1)) / (1 - a))  # no α = 1 limit
    assert r.status == "FAIL" and "ZeroDivisionError" in r.message and "D + 1" in r.hint
    r = check("expected_tokens", lambda a, d: 1 + a * d)  # linear: ignores that acceptances compound
    assert r.status == "FAIL" and "α=0.9, D=2" in r.message  # right for D = 1 only
    r = check("greedy_accept", lambda d, m: greedy_accept(d, m)[:len(d)] or greedy_accept(d, m))  # no bonus token
    assert r.status == "FAIL" and "expected [5, 7]" in r.message
    r = check("speculative_residual", lambda p, q: (torch.clamp(p / q, max=1), p))  # resample from p: biased
    assert r.status == "FAIL" and "differs from p" in r.message
