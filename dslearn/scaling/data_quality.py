"""A documented, seeded way to make the corpus worse, for the data-quality experiment.

DeepSeek-LLM (§3.3) found that the allocation exponent depends on data quality: the better the data, the
more of a budget should go to the model. To ask the same question in miniature, ``degrade`` lowers the
quality of our corpus in two ways real web data suffers from:

- **duplication**: ``dup_fraction`` of the 4 KiB chunks are replaced by copies of other chunks
  (the corpus keeps its size, but holds less distinct text);
- **noise**: ``noise_rate`` of the bytes are replaced by uniformly random bytes.

The transform is deterministic for a given seed; the validation split is never degraded.
"""

from __future__ import annotations

import torch

CHUNK = 4096


def degrade(data: bytes, dup_fraction: float = 0.5, noise_rate: float = 0.02, seed: int = 0) -> torch.Tensor:
    """A degraded copy of ``data`` (as a uint8 tensor of the same length)."""
    if not 0 <= dup_fraction < 1 or not 0 <= noise_rate < 1:
        raise ValueError(f"dup_fraction and noise_rate must be in [0, 1), got {dup_fraction}, {noise_rate}")
    g = torch.Generator().manual_seed(seed)
    x = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
    n_chunks = len(x) // CHUNK
    if n_chunks >= 2 and dup_fraction > 0:
        chunks = x[: n_chunks * CHUNK].view(n_chunks, CHUNK)
        n_dup = int(dup_fraction * n_chunks)
        perm = torch.randperm(n_chunks, generator=g)
        targets, sources = perm[:n_dup], perm[n_dup:]
        picks = sources[torch.randint(0, len(sources), (n_dup,), generator=g)]
        chunks[targets] = chunks[picks].clone()
    if noise_rate > 0:
        hit = torch.rand(len(x), generator=g) < noise_rate
        x[hit] = torch.randint(0, 256, (int(hit.sum()),), generator=g, dtype=torch.uint8)
    return x
