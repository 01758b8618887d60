"""Supervised fine-tuning data: (prompt, response) pairs → fixed-shape batches with the prompt masked.

SFT (DeepSeek-V2 §4, R1's cold start) trains on the response only: the model reads the prompt but
is not asked to predict it. One example, prompt ``p`` and response ``r``, becomes

    tokens    p_1 … p_m r_1 … r_n                         (m + n tokens)
    inputs    p_1 … p_m r_1 … r_{n−1}   pad …             (seq_len, right-padded with pad_id)
    targets   -100 … -100 r_1 … r_n    -100 …             (position t predicts token t+1)

so the first m−1 targets (prompt tokens) and every padding target are -100, which the cross-entropy
ignores. Right padding needs no attention mask: causal attention never lets a real token see the
padding that follows it.

The examples of step ``s`` are a pure function of (seed, s): positions s·B … s·B+B−1 of an endless
sequence of epochs, each epoch a permutation of the examples drawn from a generator seeded by
(seed, epoch). Every example is seen once per epoch, and a resumed run draws the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

IGNORE = -100  # the target id the cross-entropy skips


def _ids(x: str | bytes | Sequence[int]) -> list[int]:
    if isinstance(x, str):
        return list(x.encode("utf-8"))
    return list(x)


class SFTStream:
    """(prompt, response) pairs → (inputs, targets) batches of shape (B, seq_len); a ``Batches``."""

    def __init__(self, pairs: Sequence[tuple[str | bytes | Sequence[int], str | bytes | Sequence[int]]],
                 name: str = "sft", pad_id: int = 0):
        self.examples = [(_ids(p), _ids(r)) for p, r in pairs]
        if not self.examples:
            raise ValueError(f"{name}: no (prompt, response) pairs")
        empty = [i for i, (_, r) in enumerate(self.examples) if not r]
        if empty:
            raise ValueError(f"{name}: example {empty[0]} has an empty response (nothing to learn)")
        bad = [i for i, (p, _) in enumerate(self.examples) if not p]
        if bad:
            raise ValueError(f"{name}: example {bad[0]} has an empty prompt (the first response token "
                             f"needs a token before it)")
        self.name, self.pad_id = name, pad_id

    def __len__(self) -> int:
        return len(self.examples)

    def check_fits(self, seq_len: int, windows: int = 1) -> None:
        """ValueError naming the longest example unless every example fits in ``seq_len`` inputs."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        longest = max(range(len(self)), key=lambda i: sum(map(len, self.examples[i])))
        need = sum(map(len, self.examples[longest])) - 1
        if need > seq_len:
            raise ValueError(f"{self.name}: example {longest} needs seq_len >= {need} "
                             f"(prompt + response − 1 tokens), got seq_len={seq_len}")

    def encode(self, indices: Sequence[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``indices`` → inputs, targets (len(indices), seq_len) int64, prompt and padding targets -100."""
        x = torch.full((len(indices), seq_len), self.pad_id, dtype=torch.long)
        y = torch.full((len(indices), seq_len), IGNORE, dtype=torch.long)
        for row, i in enumerate(indices):
            prompt, response = self.examples[i]
            tokens = torch.tensor(prompt + response)
            n = len(tokens) - 1  # positions with a next token
            if n > seq_len:
                raise ValueError(f"{self.name}: example {i} needs seq_len >= {n}, got {seq_len}")
            x[row, :n] = tokens[:-1]
            y[row, len(prompt) - 1:n] = tokens[len(prompt):]  # targets are response tokens only
        return x, y

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of ``step``: a pure function of (seed, step)."""
        n, start = len(self), step * batch_size
        indices, perms = [], {}
        for pos in range(start, start + batch_size):
            epoch = pos // n
            if epoch not in perms:
                g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                perms[epoch] = torch.randperm(n, generator=g).tolist()
            indices.append(perms[epoch][pos % n])
        return self.encode(indices, seq_len)

    def eval_batches(self, n_windows: int, seq_len: int,
                     batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n_windows`` examples, in order (no randomness)."""
        indices = list(range(min(n_windows, len(self))))
        for i in range(0, len(indices), batch_size):
            yield self.encode(indices[i:i + batch_size], seq_len)
