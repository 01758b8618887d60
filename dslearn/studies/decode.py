"""Chapter 02's measurement: decode speed and cache size of attention variants (``bench/attention_decode.py``
is its command line; the notebook runs it small).

One decode state grows through the contexts in order: prefill (in chunks, on the naive path, which
needs no (T × context) score matrix per head) up to the next context, then time ``steps`` single-token
decode steps on the variant's own path. The two paths are two models built from the config
(``with_config(model, mla_impl=...)``: the same weights) sharing one decode state, which is valid for
both because both cache the same latents. Cache bytes are read from the state's tensors at that context.
The timed steps move the context forward by ``warmup + steps`` tokens; the speed reported for context
c is measured over [c, c + warmup + steps) and uses the *median* step time, which a busy shared machine
disturbs far less than the mean.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..attention import MLA_PATHS
from ..model import with_config


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
    "absorbed") is the MLA path of the timed steps (None: the model's own ``mla_impl``); ``model`` itself is
    left as it was built."""
    if sorted(contexts) != list(contexts) or contexts[0] < 1:
        raise ValueError(f"contexts must be ascending positive integers, got {contexts}")
    need = contexts[-1] + warmup + steps
    if need > model.config.max_position_embeddings:
        raise ValueError(f"the largest context plus {warmup + steps} decode steps needs max_position_embeddings "
                         f">= {need}, the model has {model.config.max_position_embeddings}")
    if path is not None and path not in MLA_PATHS:
        raise ValueError(f"MLA path must be one of {MLA_PATHS}, got {path!r}")
    model.eval()
    twins = {}

    def on_path(impl):  # the model computing on this MLA path: itself, or a twin with its weights
        if model.config.attention_type != "mla" or impl in (None, model.config.mla_impl):
            return model
        if impl not in twins:
            twins[impl] = with_config(model, mla_impl=impl)
        return twins[impl]

    prefill, timed = on_path("naive"), on_path(path)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, need), generator=g)
    state = model.new_decode_state(batch, need)
    points = []
    for context in contexts:
        while state.length < context:  # 1. prefill up to this context
            n = min(prefill_chunk, context - state.length)
            prefill(ids[:, state.length:state.length + n], state=state, last_only=True)
        cache = state.nbytes()
        for _ in range(warmup):  # 2. warm up, then time single-token steps
            timed(ids[:, state.length:state.length + 1], state=state, last_only=True)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            timed(ids[:, state.length:state.length + 1], state=state, last_only=True)
            times.append(time.perf_counter() - t0)
        dt = statistics.median(times)
        points.append(DecodePoint(variant, context, batch / dt, 1000 * dt, cache, batch))
    return points
