"""Learning-rate schedules: linear warm-up, then DeepSeek-LLM's multi-step decay, V3's four phases, or a cosine.

DeepSeek-LLM (§2.3) warms up for 2000 steps, then holds the peak until 80% of the training tokens,
drops to 31.6% of the peak, and to 10% after 90%. Unlike a cosine, the first stage does not depend
on the final budget, so one run's first 80% can be reused when the budget grows.

DeepSeek-V3 (§4.2) keeps the same "hold the peak, decay late" idea with a cosine in the middle. Over its
14.8T tokens: warm-up (2K steps) to η = 2.2e-4, **constant** until 10T tokens, **cosine decay** to 2.2e-5
over the next 4.3T, then a **constant tail**: 2.2e-5 for 333B tokens and 7.3e-6 for the last 167B.
``kind="v3"`` is that shape in fractions of the run (``V3_PHASES``, computed from the report's token
counts, not typed in), so a run of any length has V3's proportions:

    phase            V3 tokens          fraction of the run            LR / peak
    warm-up          2K steps           warmup_steps                   rising linearly to 1
    constant         0 → 10T            → 10/14.8      = 0.676         1
    cosine decay     10T → 14.3T        → 14.3/14.8    = 0.966         1 → 0.1  (2.2e-5 / 2.2e-4)
    tail 1           14.3T → 14.633T    → 14.633/14.8  = 0.989         0.1
    tail 2           last 167B          → 1                            0.0332   (7.3e-6 / 2.2e-4)
"""

from __future__ import annotations

import math

SCHEDULES = ("multistep", "cosine", "constant", "v3")
MULTISTEP = ((0.8, 0.316), (0.9, 0.1))  # (fraction of steps, LR multiplier from then on)

# DeepSeek-V3 §4.2, in tokens (T = 1e12) and learning rates: the phases of kind="v3" derive from these
V3_TOKENS = {"constant_until": 10.0e12, "decay_tokens": 4.3e12, "tail1_tokens": 0.333e12, "tail2_tokens": 0.167e12}
V3_LR = {"peak": 2.2e-4, "decayed": 2.2e-5, "final": 7.3e-6}
_V3_TOTAL = sum(V3_TOKENS.values())  # 14.8T
V3_PHASES = {
    "decay_start": V3_TOKENS["constant_until"] / _V3_TOTAL,
    "decay_end": (V3_TOKENS["constant_until"] + V3_TOKENS["decay_tokens"]) / _V3_TOTAL,
    "tail2_start": 1 - V3_TOKENS["tail2_tokens"] / _V3_TOTAL,
    "decayed_ratio": V3_LR["decayed"] / V3_LR["peak"],
    "final_ratio": V3_LR["final"] / V3_LR["peak"],
}


def v3_multiplier(fraction: float) -> float:
    """LR / peak of V3's schedule after warm-up, at ``fraction`` (0–1) of the run's steps."""
    p = V3_PHASES
    if fraction < p["decay_start"]:
        return 1.0
    if fraction < p["decay_end"]:
        t = (fraction - p["decay_start"]) / (p["decay_end"] - p["decay_start"])
        return p["decayed_ratio"] + (1 - p["decayed_ratio"]) * 0.5 * (1 + math.cos(math.pi * t))
    return p["decayed_ratio"] if fraction < p["tail2_start"] else p["final_ratio"]


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int = 0,
          kind: str = "multistep", min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return peak_lr
    if kind == "multistep":
        mult = 1.0
        for frac, m in MULTISTEP:
            if step >= frac * total_steps:
                mult = m
        return peak_lr * mult
    if kind == "v3":
        return peak_lr * v3_multiplier(step / max(1, total_steps))
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # cosine
    return peak_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
