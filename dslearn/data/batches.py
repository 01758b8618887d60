"""Turning a byte string into training and validation batches, reproducibly.

Training batches are random windows of ``seq_len + 1`` bytes. The windows of step ``s`` depend only
on (seed, s): a fresh ``torch.Generator`` is seeded from both, so a resumed run draws exactly the
batches an uninterrupted run would have drawn, with no sampler state to save. Validation uses a
fixed set of evenly spaced windows, the same for every run with the same sequence length.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

from .corpus import CorpusError


@runtime_checkable
class Batches(Protocol):
    """What the Trainer trains on: fixed-shape (inputs, targets) batches, a pure function of (seed, step).

    Targets are next-token ids, -100 where no loss is taken (SFT prompts, padding). TokenStream
    (pretraining) and SFTStream (supervised fine-tuning) are the two in dslearn."""

    def check_fits(self, seq_len: int) -> None:
        """Raise a clear error now if batches of ``seq_len`` cannot be drawn."""

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64."""


@runtime_checkable
class EvalBatches(Protocol):
    """Validation data: a fixed sequence of (inputs, targets) batches."""

    def check_fits(self, seq_len: int) -> None: ...

    def eval_batches(self, n_windows: int, seq_len: int,
                     batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ...


class TokenStream:
    """A 1-D uint8/int tensor of tokens with reproducible batch sampling."""

    def __init__(self, tokens: bytes | torch.Tensor, name: str = "data"):
        if isinstance(tokens, (bytes, bytearray)):
            tokens = torch.frombuffer(bytearray(tokens), dtype=torch.uint8)
        self.tokens = tokens
        self.name = name

    def __len__(self) -> int:
        return self.tokens.numel()

    def check_fits(self, seq_len: int, windows: int = 1) -> None:
        """Raise CorpusError unless ``windows`` windows of ``seq_len + 1`` tokens fit in this stream."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        need = seq_len + windows
        if len(self) < need:
            raise CorpusError(
                f"{self.name} holds {len(self):,} tokens; {windows} window(s) of seq_len={seq_len} "
                f"need at least {need:,}"
            )

    def _windows(self, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + torch.arange(seq_len + 1)  # (B, T+1)
        w = self.tokens[idx].long()
        return w[:, :-1], w[:, 1:]  # inputs, next-token targets: (B, T) each

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of ``step``: a pure function of (seed, step)."""
        self.check_fits(seq_len)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(self) - seq_len, (batch_size,), generator=g)
        return self._windows(starts, seq_len)

    def eval_batches(self, n_windows: int, seq_len: int, batch_size: int):
        """Evenly spaced, non-random windows covering the stream; yields (inputs, targets)."""
        self.check_fits(seq_len, 1)
        last = len(self) - seq_len - 1
        n = min(n_windows, last + 1)
        starts = torch.linspace(0, last, n).long()
        for i in range(0, n, batch_size):
            yield self._windows(starts[i:i + batch_size], seq_len)
