"""Exercises for notebook 01: compute accounting and fitting a power law."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..scaling.accounting import flops_per_token
from .core import exercise


@exercise("flops_per_token", hint="6 FLOPs per matrix parameter of every layer (q, k, v, o, gate, up, down), plus "
                                  "12·n_layer·n_h·d_h·l_seq for the attention scores and weighted sum")
def _flops(fn) -> str:
    """flops_per_token(config, seq_len) → M, non-embedding training FLOPs per token (dense MHA/GQA configs)."""
    cases = [ModelConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4),
             ModelConfig(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=6,
                         num_key_value_heads=2),
             ModelConfig.from_preset("deepseek-llm-7b")]
    for cfg, seq in zip(cases, (128, 256, 4096)):
        got, want = fn(cfg, seq), flops_per_token(cfg, seq)
        assert isinstance(got, (int, float, np.integer, np.floating)), f"expected a number, got {type(got).__name__}"
        assert abs(got - want) <= 1e-9 * want, (
            f"{cfg.num_hidden_layers} layers, d={cfg.hidden_size}, n_kv={cfg.num_key_value_heads}, l_seq={seq}: "
            f"got {got:,.0f}, expected {want:,.0f} (ratio {got / want:.4f})")
    return "matches dslearn.scaling.flops_per_token on 3 configs, GQA and DeepSeek-LLM 7B included"


@exercise("fit_power_law", hint="fit a straight line to (log x, log y): the slope is the exponent, "
                                "exp(intercept) the coefficient (np.polyfit(np.log(x), np.log(y), 1))")
def _fit(fn) -> str:
    """fit_power_law(x, y) → (coef, exponent) of y = coef · x^exponent."""
    rng = np.random.default_rng(0)
    for coef, exp in [(0.3118, -0.125), (0.292, 0.3271), (5.0, 1.0)]:
        x = np.logspace(10, 14, 6)
        y = coef * x**exp * np.exp(rng.normal(0, 1e-3, len(x)))
        got = fn(x, y)
        assert len(got) == 2, f"return (coef, exponent), got {got!r}"
        c, e = float(got[0]), float(got[1])
        assert abs(e - exp) < 0.01, f"exponent {e:.4f}, expected about {exp}"
        assert abs(c / coef - 1) < 0.1, f"coefficient {c:.4g}, expected about {coef}"
    return "recovers three known laws from noisy points"
