"""Chapter 02's exercise checkers: reference solutions pass, typical mistakes fail with a hint."""

import torch
from helpers import todo

import dslearn.exercises.mla  # noqa: F401  (registers the chapter's exercises)
from dslearn.exercises import check


def per_token(cfg):
    if cfg.attention_type == "mla":
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    return 2 * cfg.num_key_value_heads * cfg.head_dim


def saving(cfg, context, first_layer, window):
    return (cfg.num_hidden_layers - first_layer) * max(0, context - window) * per_token(cfg)


def test_reference_solutions_pass():
    assert check("kv_cache_per_token", per_token).passed
    assert check("absorb_query", lambda q, w: torch.einsum("bhtn,hnc->bhtc", q, w)).passed
    B = lambda o: o.shape[0]  # noqa: E731
    assert check("absorb_output", lambda o, w: torch.einsum("bhtc,hvc->bthv", o, w).reshape(B(o), o.shape[2], -1)
                 ).passed
    assert check("adaptive_cache_saving", saving).passed


def test_typical_mistakes_fail_with_hints():
    r = check("kv_cache_per_token", lambda c: c.num_key_value_heads * c.head_dim)  # forgot the values
    assert r.status == "FAIL" and "expected" in r.message and "a key AND a value" in str(r)
    r = check("kv_cache_per_token", lambda c: 2 * c.num_attention_heads * c.head_dim)  # MHA for everyone
    assert r.status == "FAIL"
    r = check("absorb_query", lambda q, w: torch.einsum("bhtn,hnc->bhtc", q, w.flip(0)))  # wrong head's W^UK
    assert r.status == "FAIL" and "max abs difference" in r.message
    r = check("absorb_output", lambda o, w: torch.einsum("bhtc,hvc->bhtv", o, w).reshape(o.shape[0], o.shape[2], -1))
    assert r.status == "FAIL"  # heads not moved next to d_v before merging
    r = check("adaptive_cache_saving", lambda c, n, f, w: (c.num_hidden_layers - f) * (n - w) * per_token(c))
    assert r.status == "FAIL" and "nothing saved" not in r.message  # negative saving when context < window


def test_untouched_exercises_are_todo():
    assert {check(n, todo).status for n in ("kv_cache_per_token", "absorb_query", "absorb_output",
                                            "adaptive_cache_saving")} == {"TODO"}
