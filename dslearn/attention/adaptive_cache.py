"""EXPERIMENT — a "layer-wise adaptive cache": deeper layers forget older tokens.

The overview article this course started from says DeepSeek-V3 "prunes older KV entries at deeper
layers". **The V3 technical report describes no such thing**: V3 keeps MLA's full latent cache at
every layer (576 numbers per token per layer) and reaches 128K context with YaRN (V3 §4.3). So this
module is not DeepSeek's method. It is a question the article raises, built so that we can measure
the answer: what would pruning save, and what would it cost?

The rule tested here: layers ``l ≥ first_layer`` keep only the ``window`` most recent earlier
tokens of their latent cache; a query at position t attends to positions [t − window, t]. Earlier
layers keep everything. In training or a full forward the same rule is an attention mask, so a
model can be *evaluated* with pruning (no retraining) or *trained* with it, and cached decoding
gives exactly what the masked full forward gives (tested).

    saved cache (elements, context n, L layers) = (L − first_layer) · max(0, n − window) · (d_c + d_h^R)

The cache below really evicts: between steps it holds at most ``window`` rows, so its bytes are
measured from tensors, not computed.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .mla import MultiHeadLatentAttention


class AdaptiveLatentCache:
    """An MLA latent cache that keeps only the last ``window`` tokens (B, ≤window, d_c+d_h^R)."""

    def __init__(self, batch: int, window: int, kv_lora_rank: int, rope_dim: int, dtype, device):
        self.window = window
        self.kv = torch.zeros(batch, 0, kv_lora_rank + rope_dim, dtype=dtype, device=device)
        self.first = 0  # absolute position of self.kv[:, 0]

    def update(self, latent: torch.Tensor, start: int) -> tuple[torch.Tensor, int]:
        """Append latent (B, T, D) written at absolute [start, start+T); return the kept rows plus the new
        ones and the absolute position of the first, then evict down to the last ``window`` rows."""
        if start != self.first + self.kv.shape[1]:
            raise ValueError(f"adaptive cache holds positions up to {self.first + self.kv.shape[1]}, "
                             f"cannot write at {start}")
        everything = torch.cat([self.kv, latent], dim=1)  # (B, kept+T, D)
        first = self.first
        drop = max(0, everything.shape[1] - self.window)
        self.kv = everything[:, drop:].clone()  # clone: free the evicted rows' storage
        self.first = first + drop
        return everything, first

    def select(self, rows: torch.Tensor) -> None:
        self.kv = self.kv[rows]

    def truncate(self, length: int) -> None:
        """An evicting cache cannot roll back: the rows it dropped are gone, and a rolled-back position would
        need them again. Speculative decoding (and anything else that truncates) is not supported here."""
        raise NotImplementedError(
            f"AdaptiveLatentCache cannot truncate to {length}: it has evicted positions before {self.first} "
            "and cannot restore them; speculative decoding needs a full cache (turn the experiment off with "
            "apply_adaptive_cache(model, first_layer, window=None))")

    def nbytes(self, length: int | None = None) -> int:
        """Bytes actually held (``length`` is ignored: the cache holds at most ``window`` rows)."""
        return self.kv.numel() * self.kv.element_size()


def apply_adaptive_cache(model: nn.Module, first_layer: int, window: int | None) -> list[int]:
    """Set the experiment on every MLA layer with ``layer_idx >= first_layer`` (``window=None`` turns it
    off everywhere). Returns the layer indices that now prune. Only MLA layers are supported."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be an integer >= 1 or None, got {window!r}")
    layers = [m for m in model.modules() if isinstance(m, MultiHeadLatentAttention)]
    if not layers:
        raise ValueError("apply_adaptive_cache needs a model with MLA layers (attention_type='mla')")
    if isinstance(first_layer, bool) or not isinstance(first_layer, int) or not 0 <= first_layer <= len(layers):
        raise ValueError(f"first_layer must be an integer in [0, {len(layers)}], got {first_layer!r}")
    pruned = []
    for m in layers:
        m.window = window if (window is not None and m.layer_idx >= first_layer) else None
        m.cache_factory = None
        if m.window is not None:
            m.cache_factory = functools.partial(_evicting_cache, m)
            pruned.append(m.layer_idx)
    return pruned


def _evicting_cache(m: MultiHeadLatentAttention, batch: int, max_len: int, dtype, device) -> AdaptiveLatentCache:
    return AdaptiveLatentCache(batch, m.window, m.kv_lora_rank, m.rope_head_dim, dtype, device)
