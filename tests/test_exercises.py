import math

import torch
from helpers import todo

from dslearn.exercises import check, exercise, list_exercises
from dslearn.exercises.core import _REGISTRY


def good_rmsnorm(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def good_rope(x, pos, theta):
    d = x.shape[-1]
    ang = pos.double()[..., None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = ang.cos().float()[:, None], ang.sin().float()[:, None]
    a, b = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([a * c - b * s, a * s + b * c], -1)


def test_reference_solutions_pass():
    assert check("rmsnorm", good_rmsnorm).passed
    assert check("bits_per_byte", lambda loss, bpt: loss / math.log(2) / bpt).passed
    assert check("rope", good_rope).passed
    assert set(list_exercises()) >= {"rmsnorm", "bits_per_byte", "rope"}


def test_wrong_answers_fail_with_a_hint():
    r = check("rmsnorm", lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w)
    assert r.status == "FAIL" and "max abs difference" in r.message and "eps inside the sqrt" in str(r)
    r = check("bits_per_byte", lambda loss, bpt: loss / bpt)
    assert r.status == "FAIL" and "expected" in r.message
    r = check("rope", lambda x, pos, theta: x)
    assert r.status == "FAIL"


def test_untouched_and_crashing_exercises():
    assert check("rope", todo).status == "TODO"
    r = check("rmsnorm", lambda x, w, eps: x.nope())
    assert r.status == "FAIL" and "AttributeError" in r.message
    assert check("rmsnorm", 3).status == "FAIL"


def test_registry_rejects_duplicates_and_unknown_names():
    import pytest

    with pytest.raises(KeyError, match="no exercise named"):
        check("nonexistent", good_rope)
    with pytest.raises(ValueError, match="twice"):
        exercise("rmsnorm", hint="")(lambda fn: "")
    assert "rmsnorm" in _REGISTRY


def test_scaling_exercises():
    import numpy as np

    from dslearn.scaling import flops_per_token

    assert check("flops_per_token", flops_per_token).passed
    r = check("flops_per_token", lambda cfg, seq: 72 * cfg.num_hidden_layers * cfg.hidden_size**2)
    assert r.status == "FAIL" and "expected" in r.message
    def fit(x, y):
        slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
        return np.exp(intercept), slope

    assert check("fit_power_law", fit).passed
    assert check("fit_power_law", lambda x, y: (1.0, 0.5)).status == "FAIL"
