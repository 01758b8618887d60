"""Measuring decode speed and cache size of attention variants, as the bench script and chapter 02 do.

One decode state grows through the contexts in order: prefill (in chunks, on the naive path, which
needs no (T × context) score matrix per head) up to the next context, then time ``steps`` single-token
decode steps on the variant's own path. Cache bytes are read from the state's tensors at that context.
The timed steps move the context forward by ``warmup + steps`` tokens; the speed reported for context
c is measured over [c, c + warmup + steps) and uses the *median* step time, which a busy shared machine
disturbs far less than the mean.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from .mla import set_mla_path


@dataclass
class DecodePoint:
    variant: str
    context: int
    tokens_per_s: float  # decode throughput: batch / median step time
    ms_per_step: float  # median over the timed steps
    cache_bytes: int  # bytes the decode state holds at ``context`` (all layers, whole batch)
    batch: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def measure_decode(model, variant: str, contexts: list[int], steps: int = 32, batch: int = 1, warmup: int = 2,
                   path: str | None = None, prefill_chunk: int = 256, seed: int = 0) -> list[DecodePoint]:
    """Decode speed and cache bytes of ``model`` at each context (ascending). ``path`` ("naive" or
    "absorbed") is set on MLA layers for the timed steps."""
    if sorted(contexts) != list(contexts) or contexts[0] < 1:
        raise ValueError(f"contexts must be ascending positive integers, got {contexts}")
    need = contexts[-1] + warmup + steps
    if need > model.config.max_position_embeddings:
        raise ValueError(f"the largest context plus {warmup + steps} decode steps needs max_position_embeddings "
                         f">= {need}, the model has {model.config.max_position_embeddings}")
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, need), generator=g)
    state = model.new_decode_state(batch, need)
    points = []
    for context in contexts:
        set_mla_path(model, "naive")
        while state.length < context:  # 1. prefill up to this context
            n = min(prefill_chunk, context - state.length)
            model(ids[:, state.length:state.length + n], state=state, last_only=True)
        cache = state.nbytes()
        if path is not None:
            set_mla_path(model, path)
        for _ in range(warmup):  # 2. warm up, then time single-token steps
            model(ids[:, state.length:state.length + 1], state=state, last_only=True)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            model(ids[:, state.length:state.length + 1], state=state, last_only=True)
            times.append(time.perf_counter() - t0)
        dt = statistics.median(times)
        points.append(DecodePoint(variant, context, batch / dt, 1000 * dt, cache, batch))
    set_mla_path(model, "naive")
    return points
