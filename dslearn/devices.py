"""Choosing where tensors live. CPU everywhere by default; CUDA when present and asked for;
Apple MPS only best-effort, with a warning (other courses' users report wrong losses on MPS)."""

from __future__ import annotations

import warnings

import torch


def resolve_device(name: str | torch.device = "cpu") -> torch.device:
    """"cpu", "cuda[:i]", "mps" or "auto" (CUDA if available, else CPU) → torch.device."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = name.split(":")[0]
    if kind == "cpu":
        return torch.device(name)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} was asked for, but torch sees no CUDA GPU; use 'cpu'")
        return torch.device(name)
    if kind == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RuntimeError("device 'mps' was asked for, but this torch has no MPS backend; use 'cpu'")
        warnings.warn("MPS support is best-effort: results may differ from CPU; compare losses before trusting them",
                      stacklevel=2)
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")
