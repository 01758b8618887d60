"""Learning-rate schedules: linear warm-up, then DeepSeek-LLM's multi-step decay or a cosine.

DeepSeek-LLM (§2.3) warms up for 2000 steps, then holds the peak until 80% of the training tokens,
drops to 31.6% of the peak, and to 10% after 90%. Unlike a cosine, the first stage does not depend
on the final budget, so one run's first 80% can be reused when the budget grows.
"""

from __future__ import annotations

import math

SCHEDULES = ("multistep", "cosine", "constant")
MULTISTEP = ((0.8, 0.316), (0.9, 0.1))  # (fraction of steps, LR multiplier from then on)


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
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # cosine
    return peak_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
