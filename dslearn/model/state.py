"""What incremental decoding carries between steps (``DecodeState``), for the main model and each MTP depth.

Its own module so that both the assembler (transformer.py) and the multi-token-prediction depths (mtp.py),
which decode with caches of their own when they draft tokens, build the same object without an import cycle.
"""

from __future__ import annotations

import torch


class DecodeState:
    """Everything incremental decoding carries between steps: per-layer caches, which cached
    positions hold real tokens, how many positions are filled, and each row's next position."""

    static = False  # True for StaticDecodeState

    def __init__(self, caches: list, batch: int, max_len: int, device=None):
        self.caches = caches
        self.key_valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.key_valid.shape[1]

    @property
    def offset(self):
        """Where the next chunk is written: the filled length (an int here; a 0-d tensor in StaticDecodeState)."""
        return self.length

    def mark(self, valid: torch.Tensor) -> torch.Tensor:
        """Record the real-token mask ``valid`` (B, T) of the chunk about to be written at ``offset``; return the
        mask of every key it attends over (B, offset+T)."""
        start, T = self.length, valid.shape[1]
        if start + T > self.max_len:
            raise ValueError(f"decode state holds {self.max_len} positions; {start + T} needed")
        self.key_valid[:, start:start + T] = valid
        return self.key_valid[:, :start + T]

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


class StaticDecodeState(DecodeState):
    """A DecodeState whose every tensor keeps its shape from step to step, so that one compiled decode step
    (``dslearn.model.static_decode``) serves every position: the write offset is a 0-d tensor ``position``
    (not a Python int a compiled graph would specialise on), the caches are the static ones (``StaticKVCache``,
    ``StaticLatentKVCache``: written with ``index_copy_``, read whole), and attention reads all ``max_len``
    positions with ``key_valid`` hiding those not written yet. Advancing mutates the tensors in place.

    ``length`` reads the position back to Python (a host sync): for bookkeeping between steps, never inside one."""

    static = True

    def __init__(self, caches: list, batch: int, max_len: int, device=None):
        self.position = torch.zeros((), dtype=torch.long, device=device)
        super().__init__(caches, batch, max_len, device)

    @property
    def length(self) -> int:
        return int(self.position)

    @length.setter
    def length(self, value: int) -> None:
        self.position.fill_(value)

    @property
    def offset(self) -> torch.Tensor:
        return self.position

    def mark(self, valid: torch.Tensor) -> torch.Tensor:
        """As DecodeState.mark, with static shapes: returns the whole (B, max_len) key mask. Room is checked by
        the caller between steps (``static_decode``), since reading the position here would end a compiled graph."""
        idx = self.position + torch.arange(valid.shape[1], device=valid.device)  # (T,)
        self.key_valid.index_copy_(1, idx, valid)
        return self.key_valid

    def advance(self, start, valid: torch.Tensor) -> None:
        self.position.add_(valid.shape[1])
        self.next_pos.add_(valid.long().sum(1))
