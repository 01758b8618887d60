"""Batched sampling from a CausalLM, with or without a KV cache.

Prompts of different lengths are left-padded into one batch. With ``use_cache=True`` the prompt
is run once (prefill) and every new token costs one position per layer, reading earlier keys and
values from the cache; with ``use_cache=False`` every step re-runs the whole sequence. Both paths
draw the same random numbers in the same order, so for the same generator they return the same
tokens (tested) — the uncached path is the reference, the cached one the fast path.

Rows that finish (a stop string or ``max_new_tokens``) leave the batch, so a group of GRPO samples
with very different lengths costs only what its live rows need.

Sampling: ``temperature=0`` is greedy; otherwise logits/temperature, then optional top-k and
top-p (nucleus) filtering, then one multinomial draw per row from ``generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int]  # the new tokens (a matched stop string included)
    finish_reason: str  # "stop" or "length"


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability
    reaches top_p (the most likely token always stays). logits: (B, V)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass strictly before each token
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float, top_k, top_p, generator) -> torch.Tensor:
    """One token per row from logits (B, V) → (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def check_generation_args(prompts, max_new_tokens, temperature, top_k, top_p, context, vocab_size=None):
    if isinstance(prompts, (str, bytes, torch.Tensor)) or not isinstance(prompts, (list, tuple)) or any(
            not isinstance(p, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            for p in prompts):
        raise TypeError(f"prompts must be a list of token-id lists (e.g. [tokenizer.encode(text)]), "
                        f"got {type(prompts).__name__}"
                        + (" of " + type(prompts[0]).__name__ if isinstance(prompts, (list, tuple)) and prompts
                           else ""))
    if not prompts:
        raise ValueError("prompts is empty")
    if vocab_size is not None and any(not 0 <= t < vocab_size for p in prompts for t in p):
        raise ValueError(f"prompt token ids must be in [0, {vocab_size}) (the model's vocab_size)")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > context:
        raise ValueError(
            f"the longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context max_position_embeddings={context}"
        )


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: list[list[int]] | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    pad_id: int = 0,
) -> list[Generation]:
    """Sample continuations of each prompt (lists of token ids); returns one Generation per prompt.

    stop: token sequences; a row ends as soon as its new tokens end with one of them.
    """
    cfg = model.config
    check_generation_args(prompts, max_new_tokens, temperature, top_k, top_p, cfg.max_position_embeddings,
                          cfg.vocab_size)
    stops = [list(s) for s in (stop or []) if len(s) > 0]
    device = model.lm_head.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    # 1. left-pad the prompts into one batch
    ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(B, P, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):] = True
    was_training = model.training
    model.eval()
    out_tokens: list[list[int]] = [[] for _ in range(B)]
    reasons = ["length"] * B
    active = torch.arange(B, device=device)  # original row index of each live row
    state = model.new_decode_state(B, P + max_new_tokens) if use_cache else None
    # 2. prefill (cached) or the first full pass (uncached)
    logits = model(ids, attention_mask=mask, state=state, last_only=True).logits[:, -1]
    try:
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B_live,)
            keep = []
            for j, tok in enumerate(nxt.tolist()):
                row = active[j].item()
                out_tokens[row].append(tok)
                if any(out_tokens[row][-len(s):] == s for s in stops):
                    reasons[row] = "stop"
                else:
                    keep.append(j)
            if step == max_new_tokens - 1 or not keep:
                break
            # 3. drop finished rows, then feed the new token
            if len(keep) < len(active):
                keep_t = torch.tensor(keep, device=device)
                active, nxt = active[keep_t], nxt[keep_t]
                ids, mask = ids[keep_t], mask[keep_t]
                if state is not None:
                    state.select(keep_t)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(nxt[:, None], dtype=torch.bool)], 1)
            if state is not None:
                logits = model(nxt[:, None], state=state, last_only=True).logits[:, -1]
            else:
                logits = model(ids, attention_mask=mask, last_only=True).logits[:, -1]
    finally:
        model.train(was_training)
    return [Generation(list(p), t, r) for p, t, r in zip(prompts, out_tokens, reasons)]
