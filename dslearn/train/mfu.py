"""Model FLOPs utilisation (MFU): how much of the machine's matmul speed the training run turns into model math.

    MFU = (model FLOPs per token × tokens per second) / peak FLOP/s

**Model FLOPs per token** come from the scaling chapter's accounting, not from a profiler, so they count the
math the model *needs*, not what an implementation happens to do (a re-expanded MLA, padding, recomputation
are not credited):

    model_flops_per_token = M (non-embedding, activated experts only; ``scaling.flops_per_token``)
                          + 6·V·d (the output head, which M leaves out)
                          + the MTP modules (``scaling.mtp_flops_per_token``, their shared-head pass included)

**The peak** is measured, not looked up: the best of a few square matmuls of ``size`` on this process's
device, in fp32 and in bf16, once per process (``matmul_peak`` caches it). On a CPU that is the honest
ceiling for a training step, which is mostly matmuls; a vendor's datasheet peak would also be unreachable
by a plain matmul. A CPU with AMX runs bf16 several times faster than fp32, so the dtype the run trains in
picks the peak.
"""

from __future__ import annotations

import functools
import time

import torch

from ..config import ModelConfig
from ..scaling import flops_per_token, mfu, mtp_flops_per_token

PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def model_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward) of the whole model: M + the output head + MTP."""
    head = 6 * config.vocab_size * config.hidden_size
    mtp = mtp_flops_per_token(config, seq_len) if config.num_nextn_predict_layers else 0
    return flops_per_token(config, seq_len) + head + mtp


@functools.lru_cache(maxsize=8)
def matmul_peak(dtype: str = "fp32", device: str = "cpu", size: int = 1024, repeats: int = 5) -> float:
    """The best matmul FLOP/s of ``repeats`` (size × size) @ (size × size) products on ``device``, measured once
    per process and argument set (cached). ``dtype``: "fp32" or "bf16"."""
    if dtype not in PEAK_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(PEAK_DTYPES)}, got {dtype!r}")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=PEAK_DTYPES[dtype])
    b = torch.randn(size, size, generator=g).to(device=device, dtype=PEAK_DTYPES[dtype])
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    a @ b  # warm-up (allocations, kernel choice)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


__all__ = ["PEAK_DTYPES", "matmul_peak", "mfu", "model_flops_per_token"]
