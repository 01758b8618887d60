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
from ..attention.cache_accounting import cache_report
from ..config import get_preset
from ..model import with_config
from ..scaling.accounting import parameter_counts


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


# ----------------------------------------------------------------------------------------------------------
# MLA's throughput claim in its own terms: a fixed cache memory, each variant at the largest batch that fits.
#
# DeepSeek-V2 reports 5.76× DeepSeek 67B's maximum generation throughput. At batch 1 a smaller cache buys little
# (the step reads the weights either way); its payoff is that a server holding the cache in a fixed memory can run
# a larger batch, and each generated token reads fewer cache bytes. ``measure_fixed_memory`` times exactly that.


@dataclass
class FixedMemoryPoint:
    variant: str
    context: int
    budget_bytes: int
    batch: int  # the largest batch whose cache at ``context`` fits in budget_bytes
    cache_bytes_per_row: int  # all layers, one sequence at ``context`` (read once per generated token)
    tokens_per_s: float  # batch / median step time
    ms_per_step: float

    def to_dict(self) -> dict:
        return asdict(self)


def max_batch(cache_bytes_per_row: int, budget_bytes: int) -> int:
    """How many sequences' caches fit in the budget (at least 1 is refused: the caller must choose a budget)."""
    if budget_bytes < cache_bytes_per_row:
        raise ValueError(f"budget_bytes={budget_bytes} cannot hold one sequence's cache ({cache_bytes_per_row} bytes)")
    return budget_bytes // cache_bytes_per_row


def fill_state(state, context: int, generator: torch.Generator) -> None:
    """Make a fresh DecodeState look as if ``context`` tokens had been decoded: random cache contents (the step's
    speed does not depend on them), every position real. Prefilling a batch of hundreds of long sequences
    through the model would cost minutes and measure nothing this study needs."""
    for c in state.caches:
        if hasattr(c, "kv"):  # MLA: (B, max_len, d_c + d_h^R)
            c.kv[:, :context].normal_(generator=generator)
        else:  # MHA/GQA/MQA: (B, n_kv, max_len, d_h) each
            c.k[:, :, :context].normal_(generator=generator)
            c.v[:, :, :context].normal_(generator=generator)
    state.key_valid[:, :context] = True
    state.next_pos.fill_(context)
    state.length = context


@torch.no_grad()
def measure_fixed_memory(models: dict, context: int, budget_bytes: int, steps: int = 8, warmup: int = 2,
                         max_rows: int | None = None, seed: int = 0) -> list[FixedMemoryPoint]:
    """For each ``{name: model}`` (eager cached path, each on its own attention: pass MLA built with
    ``mla_impl="absorbed"``), decode ``steps`` tokens at ``context`` with the largest batch whose cache fits
    ``budget_bytes`` (capped at ``max_rows`` if given); median step time → tokens/s."""
    points = []
    for name, model in models.items():
        model.eval()
        dtype = model.lm_head.weight.dtype
        probe = model.new_decode_state(1, context + warmup + steps, dtype=dtype)
        per_row = sum(c.nbytes(context) for c in probe.caches)
        batch = max_batch(per_row, budget_bytes)
        if max_rows is not None:
            batch = min(batch, max_rows)
        g = torch.Generator().manual_seed(seed)
        state = model.new_decode_state(batch, context + warmup + steps, dtype=dtype)
        fill_state(state, context, g)
        ids = torch.randint(0, model.config.vocab_size, (batch, 1), generator=g)
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            model(ids, state=state, last_only=True)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        dt = statistics.median(times)
        points.append(FixedMemoryPoint(name, context, budget_bytes, batch, per_row, batch / dt, 1000 * dt))
        del state
    return points


def v2_throughput_accounting(kv_bits_v2: float = 6.0) -> dict:
    """The arithmetic behind V2's "KV cache −93.3%, max generation throughput 5.76×" against DeepSeek 67B (V2 §3.2.3),
    from the presets: cache per token in BF16 (67B: GQA, 8 groups of 128, 95 layers; V2: d_c + d_h^R = 576, 60
    layers), V2's deployed cache at ~``kv_bits_v2`` bits per element (its KV-cache quantisation), the batch each
    fits in the same memory (∝ 1 / bytes per token), and activated parameters per token (the compute each token
    needs, which bounds the gain once a large batch makes decoding compute-bound)."""
    dense, v2 = get_preset("deepseek-llm-67b"), get_preset("deepseek-v2")
    b67 = cache_report(dense, "bf16").bytes_per_token
    bv2 = cache_report(v2, "bf16").bytes_per_token
    bv2_q = cache_report(v2, "bf16").elements_per_token * kv_bits_v2 / 8
    act67, actv2 = parameter_counts(dense)["activated"], parameter_counts(v2)["activated"]
    return {
        "bytes_per_token_67b_bf16": b67, "bytes_per_token_v2_bf16": bv2, "bytes_per_token_v2_quantised": bv2_q,
        "cache_ratio_bf16": b67 / bv2, "cache_ratio_deployed": b67 / bv2_q,
        "cache_reduction_deployed": 1 - bv2_q / b67,  # the paper: 93.3%
        "max_batch_ratio_same_memory": b67 / bv2_q,
        "activated_params_67b": act67, "activated_params_v2": actv2, "compute_ratio": act67 / actv2,
        "reported_throughput_ratio": 5.76,
    }


def attention_cost_per_cached_token(config, bytes_per_element: int = 4) -> dict:
    """What one generated token's attention costs per cached position and layer: the cache bytes it reads and the
    FLOPs it does on them. MHA/GQA/MQA: reads 2·n_kv·d_h numbers, does 4·n_h·d_h FLOPs (scores and weighted sum);
    absorbed MLA: reads d_c + d_h^R numbers, does 2·n_h·(d_c + d_h^R) + 2·n_h·d_c — every head works in the
    d_c-wide latent space. Their ratio, FLOPs per byte, decides whether a long-context step is bound by memory
    (a GPU: hundreds of FLOPs per byte of bandwidth) or by arithmetic (one CPU core: a few)."""
    n_h = config.num_attention_heads
    if config.attention_type == "mla":
        d_c, d_r = config.kv_lora_rank, config.qk_rope_head_dim
        elements, flops = d_c + d_r, 2 * n_h * (d_c + d_r) + 2 * n_h * d_c
    else:
        elements, flops = 2 * config.num_key_value_heads * config.head_dim, 4 * n_h * config.head_dim
    nbytes = elements * bytes_per_element
    return {"bytes": nbytes, "flops": flops, "flops_per_byte": flops / nbytes}


@torch.no_grad()
def machine_rates(nbytes: int = 256 * 2**20, reps: int = 5) -> dict:
    """This process's streaming read bandwidth (sum over an ``nbytes`` tensor) and batched-matmul FLOP rate (an
    absorbed-attention-shaped bmm: 64 × (32×72 @ 72×2048)), medians of ``reps`` — the two roofs of a decode step."""
    x = torch.ones(nbytes // 4)
    q, k = torch.randn(64, 32, 72), torch.randn(64, 72, 2048)
    bw, fl = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        bw.append(nbytes / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        torch.bmm(q, k)
        fl.append(2 * 64 * 32 * 72 * 2048 / (time.perf_counter() - t0))
    return {"read_bytes_per_s": statistics.median(bw), "bmm_flops_per_s": statistics.median(fl)}
