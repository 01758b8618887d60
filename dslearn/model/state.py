"""What incremental decoding carries between steps (``DecodeState``), for the main model and each MTP depth.

Its own module so that both the assembler (transformer.py) and the multi-token-prediction depths (mtp.py),
which decode with caches of their own when they draft tokens, build the same object without an import cycle.
"""

from __future__ import annotations

import torch


class DecodeState:
    """Everything incremental decoding carries between steps: per-layer caches, which cached
    positions hold real tokens, how many positions are filled, and each row's next position."""

    def __init__(self, caches: list, batch: int, max_len: int, device=None):
        self.caches = caches
        self.key_valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.key_valid.shape[1]

    def advance(self, start: int, valid: torch.Tensor) -> None:
        """Record that a chunk written at ``start`` with real-token mask ``valid`` (B, T) has been processed."""
        self.length = start + valid.shape[1]
        self.next_pos = self.next_pos + valid.long().sum(1)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (e.g. drop sequences that finished)."""
        for c in self.caches:
            c.select(rows)
        self.key_valid, self.next_pos = self.key_valid[rows], self.next_pos[rows]

    def truncate(self, length: int) -> None:
        """Forget every position >= ``length``, as if only the first ``length`` had ever been fed: the caches
        drop them, each row's next position goes back by the real tokens among them, and the next chunk is
        written at ``length`` (speculative decoding rolls back rejected drafts this way)."""
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= self.length:
            raise ValueError(f"truncate length must be an integer in [0, {self.length}] (the filled length), "
                             f"got {length!r}")
        if length == self.length:
            return  # nothing to drop (every draft accepted)
        for c in self.caches:
            c.truncate(length)
        self.next_pos = self.next_pos - self.key_valid[:, length:self.length].long().sum(1)
        self.key_valid[:, length:] = False
        self.length = length

    def nbytes(self) -> int:
        return sum(c.nbytes(self.length) for c in self.caches)
