"""Fill-in-the-middle (FIM) in prefix-suffix-middle order, at rate 0.1 (DeepSeek-V3 §4.1; Bavarian et al. 2022).

A left-to-right model never learns to fill a gap, which is what a code editor asks of it. FIM teaches it
without hurting next-token prediction: with probability ``rate`` a training text is cut at two random points
into prefix, middle and suffix, and rearranged so that the middle comes last, after sentinels that say what
each part is:

    <|fim_begin|> f_pre <|fim_hole|> f_suf <|fim_end|> f_middle          (PSM: prefix, suffix, middle)

The model is trained on the whole rearranged sequence with the ordinary next-token loss; at inference a
prompt ``<|fim_begin|> before <|fim_hole|> after <|fim_end|>`` makes it write the missing middle.
V3 uses rate 0.1 in PSM order (as DeepSeekCoder-V2 did) — it suits our corpus, which is Python source.

Byte tokens and sentinels. Our vocabulary is the 256 byte values, so the three sentinels are bytes that never
occur in UTF-8 text: 0xF5, 0xF6, 0xF7 (0xF8–0xFF are chapter 09's chat-template tokens). V3 applies FIM to
each *document* before packing documents into sequences; our batches are random windows of one long byte
stream, so ``FIMStream`` applies it to each *window* (what Bavarian et al. call context-level FIM): the window
is drawn 3 bytes shorter, cut, rearranged and given its 3 sentinels, so it is exactly ``seq_len + 1`` tokens.
Which windows get FIM and where they are cut are a pure function of (seed, step, row), like the windows
themselves: a resumed run trains on the same sequences.
"""

from __future__ import annotations

import torch

from .batches import TokenStream

FIM_BEGIN, FIM_HOLE, FIM_END = 0xF5, 0xF6, 0xF7  # bytes no UTF-8 text contains
FIM_TOKENS = (FIM_BEGIN, FIM_HOLE, FIM_END)


def psm(tokens: torch.Tensor, cut1: int, cut2: int) -> torch.Tensor:
    """One text (1-D) → <fim_begin> prefix <fim_hole> suffix <fim_end> middle, cut at ``cut1 <= cut2``."""
    if not 0 <= cut1 <= cut2 <= tokens.numel():
        raise ValueError(f"need 0 <= cut1 <= cut2 <= {tokens.numel()}, got cut1={cut1}, cut2={cut2}")
    s = lambda t: torch.tensor([t], dtype=tokens.dtype)  # noqa: E731
    pre, mid, suf = tokens[:cut1], tokens[cut1:cut2], tokens[cut2:]
    return torch.cat([s(FIM_BEGIN), pre, s(FIM_HOLE), suf, s(FIM_END), mid])


def fim_prompt(before: bytes | str, after: bytes | str) -> list[int]:
    """The PSM prompt that asks for the middle between ``before`` and ``after``."""
    b = before.encode() if isinstance(before, str) else before
    a = after.encode() if isinstance(after, str) else after
    return [FIM_BEGIN, *b, FIM_HOLE, *a, FIM_END]


class FIMStream(TokenStream):
    """A TokenStream whose training windows are rearranged into PSM form with probability ``rate``."""

    def __init__(self, tokens, name: str = "data", rate: float = 0.1):
        super().__init__(tokens, name)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"FIM rate must be in [0, 1], got {rate!r}")
        self.rate = rate

    def check_fits(self, seq_len: int, windows: int = 1) -> None:
        super().check_fits(seq_len, windows)
        if seq_len < 4:
            raise ValueError(f"FIM needs seq_len >= 4 (three sentinels and a token), got {seq_len}")

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of ``step``: the plain windows, a ``rate`` share of them in PSM form."""
        x, y = super().batch(step, batch_size, seq_len, seed)
        if self.rate == 0:
            return x, y
        g = torch.Generator().manual_seed(seed * 1_000_003 + step + 0x5F1A)  # FIM's own draws, per (seed, step)
        chosen = torch.rand(batch_size, generator=g) < self.rate
        cuts = torch.randint(0, seq_len - 2, (batch_size, 2), generator=g).sort(dim=1).values  # (B, 2)
        w = torch.cat([x, y[:, -1:]], dim=1)  # (B, T+1): the windows
        for row in chosen.nonzero().flatten().tolist():
            text = w[row, : seq_len + 1 - len(FIM_TOKENS)]  # 3 bytes shorter, room for the sentinels
            w[row] = psm(text, int(cuts[row, 0]), int(cuts[row, 1]))
        return w[:, :-1], w[:, 1:]
