"""Shared pieces of the attention tests (chapter 02)."""

from __future__ import annotations

import torch

from dslearn.model import CausalLM


def perturbed_model(cfg, seed: int = 0) -> CausalLM:
    """A model whose weights are far from the init (norm gains ≠ 1, larger weights), so differences show."""
    model = CausalLM(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model
