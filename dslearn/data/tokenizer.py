"""Byte-level tokenisation: token id = byte value, vocabulary 256.

It needs no training and no download, loses nothing (every string round-trips through UTF-8), and
makes bits per byte trivial: with one token per byte, bits/byte = loss in nats / ln 2. The price is
long sequences — DeepSeek's 100K-token BPE packs about 4 bytes of English per token.
"""

from __future__ import annotations

import math


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"byte tokens must be in 0..255, got {bad[:5]}")
        return bytes(ids).decode("utf-8", errors="replace")

    def bytes_per_token(self) -> float:
        return 1.0


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float = 1.0) -> float:
    """Convert a mean cross-entropy (nats per token) into bits per byte of text."""
    return loss_nats_per_token / (math.log(2) * bytes_per_token)
