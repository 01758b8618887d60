"""Shared pieces of the attention tests (chapter 02)."""

from __future__ import annotations

import pytest
import torch

from dslearn.model import CausalLM


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is as fast as two, and immune to OpenMP spin-waits on busy shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def perturbed_model(cfg, seed: int = 0) -> CausalLM:
    """A model whose weights are far from the init (norm gains ≠ 1, larger weights), so differences show."""
    model = CausalLM(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model
