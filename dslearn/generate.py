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

Two ways to run the cached steps (``decode=``), same tokens (tested):

    "eager"     the reference: the model's forward on a growing ``DecodeState``; finished rows leave at once
    "static"    the same forward on a ``StaticDecodeState`` (fixed shapes, ``dslearn.model.static_decode``)
    "compiled"  "static" with the step compiled by torch.compile (eager static step where it is unavailable)

"eager" is the default: compiling a step graph costs tens of seconds per batch shape on a CPU (minutes for a
GRPO rollout that meets several), which only many calls on one model pay back — ``bench/generate_vs_hf.py`` and
``bench/rollout_throughput.py`` measure both sides.

On the static paths a finished row stays in the batch (fed padding, its logits ignored) until at most half of
the rows are alive; then the batch shrinks to the next power of two that holds them, so a whole generation
compiles at most log2(B) + 1 step shapes. The cache length is rounded up to a multiple of ``CACHE_BUCKET``
for the same reason. Sampling reads only the live rows' logits, in row order, so the random draws are the
eager path's, draw for draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .model.static_decode import decode_step

DECODE_PATHS = ("eager", "static", "compiled")  # generate(decode=...)
CACHE_BUCKET = 64  # static caches hold a multiple of this many positions


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


def check_generation_args(prompts, max_new_tokens, temperature, top_k, top_p, context, vocab_size=None,
                          decode="eager"):
    if decode not in DECODE_PATHS:
        raise ValueError(f"decode must be one of {DECODE_PATHS}, got {decode!r}")
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
    decode: str = "eager",
) -> list[Generation]:
    """Sample continuations of each prompt (lists of token ids); returns one Generation per prompt.

    stop: token sequences; a row ends as soon as its new tokens end with one of them.
    decode: how the cached steps run — "eager" (the reference), "static" or "compiled" (module docstring).
    """
    cfg = model.config
    check_generation_args(prompts, max_new_tokens, temperature, top_k, top_p, cfg.max_position_embeddings,
                          cfg.vocab_size, decode)
    if use_cache and decode in ("static", "compiled"):
        return _generate_static(model, prompts, max_new_tokens, temperature, top_k, top_p, stop, generator,
                                pad_id, compile=decode == "compiled")
    stops = [list(s) for s in (stop or []) if len(s) > 0]
    device = model.lm_head.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    ids, mask = _left_pad(prompts, pad_id, device)  # 1. the prompts in one batch
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
                if _stopped(out_tokens[row], stops):
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


def _left_pad(prompts, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned into one (B, P) batch: ids (left-padded with pad_id) and the mask of real tokens."""
    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(B, P, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):] = True
    return ids, mask


def _stopped(tokens: list[int], stops: list[list[int]]) -> bool:
    return any(tokens[-len(s):] == s for s in stops)


@torch.no_grad()
def _generate_static(model, prompts, max_new_tokens, temperature, top_k, top_p, stop, generator, pad_id,
                     compile: bool) -> list[Generation]:
    """generate()'s cached loop on a StaticDecodeState, each step one ``DecodeStep`` call."""
    stops = [list(s) for s in (stop or []) if len(s) > 0]
    device = model.lm_head.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    ids, mask = _left_pad(prompts, pad_id, device)
    max_len = -(-(P + max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET
    step_fn = decode_step(model, compile)
    was_training = model.training
    model.eval()
    out_tokens: list[list[int]] = [[] for _ in range(B)]
    reasons = ["length"] * B
    rows = list(range(B))  # original row index of each row of the state (finished ones included)
    live = list(range(B))  # positions in `rows` of the live rows, ascending (= original row order)
    state = model.new_decode_state(B, max_len, static=True)
    try:
        # 1. prefill, eagerly (its shape changes with the prompts); the steps after it are compiled
        logits = model(ids, attention_mask=mask, state=state, last_only=True).logits[:, -1]  # (B, V)
        feed = torch.full((B, 1), pad_id, dtype=torch.long, device=device)  # finished rows are fed padding
        for step in range(max_new_tokens):
            live_t = torch.tensor(live, device=device)
            nxt = sample_next(logits[live_t], temperature, top_k, top_p, generator)  # (B_live,): eager's draws
            still, picked = [], []  # positions of the rows that go on, and their index in nxt
            for k, (j, tok) in enumerate(zip(live, nxt.tolist())):
                row = rows[j]
                out_tokens[row].append(tok)
                if _stopped(out_tokens[row], stops):
                    reasons[row] = "stop"
                else:
                    still.append(j)
                    picked.append(k)
            if step == max_new_tokens - 1 or not still:
                break
            feed.fill_(pad_id)
            feed[torch.tensor(still, device=device), 0] = nxt[torch.tensor(picked, device=device)]
            # 2. shrink the batch to the next power of two once at most half of it is alive
            if len(still) <= len(rows) // 2:
                size = 1 << (len(still) - 1).bit_length()
                alive = set(still)
                dead = [j for j in range(len(rows)) if j not in alive][:size - len(still)]
                order = torch.tensor(still + dead, device=device)
                state.select(order)
                feed = feed[order]
                rows = [rows[j] for j in still + dead]
                still = list(range(len(still)))
            live = still
            logits = step_fn(feed, state)  # (B_state, V)
    finally:
        model.train(was_training)
    return [Generation(list(p), t, r) for p, t, r in zip(prompts, out_tokens, reasons)]
