"""Choosing where the FP8 operations run, and the public entry points that dispatch to it.

    backend       runs on                         when
    -------       -------                         ----
    "torch"       the plain-torch reference       always possible; the default on CPU, and the
                                                  only choice when Triton is not installed
    "triton"      compiled Triton kernels (GPU)   tensors on CUDA and Triton installed
    "interpret"   the same kernels, Triton's CPU  asked for explicitly (tests, notebook demos at
                  interpreter                     small sizes: 256³ takes about half a second)
    "auto"        "triton" for CUDA tensors when Triton is installed and the GPU has FP8 tensor cores
                  (compute capability 8.9+), else "torch"

Triton stays optional: nothing here imports it at module import time. ``TRITON_AVAILABLE`` says
whether it can be imported (tests monkeypatch it to False to check the fallback), and the kernel
module is loaded lazily the first time a Triton backend is used — as a separate interpreted copy
for "interpret", so the TRITON_INTERPRET environment variable and test ordering do not matter
(kernels.py explains the loading).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from ..config import FP8_BACKENDS
from . import reference as ref
from .formats import FP8Format, encode_fp8_bits, get_format

BACKENDS = FP8_BACKENDS  # the values of ModelConfig.fp8_backend, declared once in config.py


def _triton_importable() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a stub in sys.modules, a broken install
        return False


TRITON_AVAILABLE = _triton_importable()


class BackendError(RuntimeError):
    """The requested backend cannot run here (no Triton, no GPU, …); the message says why."""


def resolve_backend(backend: str, device: torch.device | str = "cpu") -> str:
    """Turn "auto" (or an explicit request) into "torch", "triton" or "interpret", or raise BackendError."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    is_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        return "triton" if (is_cuda and TRITON_AVAILABLE and _has_fp8_tensor_cores(device)) else "torch"
    if backend in ("triton", "interpret") and not TRITON_AVAILABLE:
        raise BackendError(f"backend={backend!r} needs Triton, which is not installed (Linux: pip install triton); "
                           f"use backend='torch' (the plain-torch reference) instead")
    if backend == "triton" and not is_cuda:
        raise BackendError("backend='triton' compiles for a GPU, but the tensors are on "
                           f"{torch.device(device)}; use backend='interpret' to run the kernels on the CPU")
    return backend


def load_kernels(interpret: bool) -> ModuleType:
    """The kernels module: compiled flavour (``triton.jit``) or an explicitly interpreted copy."""
    if not TRITON_AVAILABLE:
        raise BackendError("Triton is not installed; the FP8 kernels are unavailable (backend='torch' works)")
    return _load_kernels(bool(interpret))


def _has_fp8_tensor_cores(device) -> bool:
    """FP8 tl.dot needs compute capability 8.9+ (Ada, Hopper, Blackwell); older GPUs use the torch path."""
    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 9)


@functools.lru_cache(maxsize=2)
def _load_kernels(interpret: bool) -> ModuleType:
    try:
        if not interpret:
            from . import kernels
            return kernels
        name = "dslearn.fp8._kernels_interpreted"
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("kernels.py"))
        module = importlib.util.module_from_spec(spec)
        module._DSLEARN_INTERPRET = True  # read by kernels.py before it defines its decorator
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    except ImportError as e:  # found but not importable: a broken or partial install
        raise BackendError(f"Triton is installed but cannot be imported ({e}); use backend='torch'") from e


def _kernels_for(backend: str, device) -> ModuleType | None:
    mode = resolve_backend(backend, device)
    return None if mode == "torch" else load_kernels(mode == "interpret")


# ----------------------------------------------------------------------------------------
def encode(x: torch.Tensor, fmt: str | FP8Format = "e4m3", backend: str = "auto") -> torch.Tensor:
    """fp32 → FP8 bit patterns (uint8), element by element, no scaling."""
    k = _kernels_for(backend, x.device)
    return encode_fp8_bits(x, fmt) if k is None else k.encode(x, get_format(fmt))


def quantize(x: torch.Tensor, tile: tuple[int, int] = ref.TILE_ACT, fmt: str | FP8Format = "e4m3",
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Tile-wise FP8 quantisation of a 2-D tensor → (q FP8, scales fp32); see reference.quantize_blocks."""
    if tuple(tile) not in (ref.TILE_ACT, ref.TILE_WEIGHT, ref.TILE_WGRAD):
        raise ValueError(f"tile must be one of {ref.TILE_ACT}, {ref.TILE_WEIGHT}, {ref.TILE_WGRAD}; got {tile}")
    ref._check_2d(x, "x")
    k = _kernels_for(backend, x.device)
    if k is None:
        return ref.quantize_blocks(x, tuple(tile), fmt)
    return k.quantize(x.float(), tuple(tile), get_format(fmt))


def quantize_act(x, fmt="e4m3", backend="auto"):
    """Activations / output gradients: 1×128 tiles along the last dim. x (R, C) → q (R, C), s (R, ⌈C/128⌉)."""
    return quantize(x, ref.TILE_ACT, fmt, backend)


def quantize_weight(w, fmt="e4m3", backend="auto"):
    """Weights: 128×128 blocks. w (N, K) → q (N, K), s (⌈N/128⌉, ⌈K/128⌉)."""
    return quantize(w, ref.TILE_WEIGHT, fmt, backend)


def block_gemm(a_q: torch.Tensor, a_s: torch.Tensor, b_q: torch.Tensor, b_s: torch.Tensor,
               backend: str = "auto", **launch) -> torch.Tensor:
    """C = A·Bᵀ (fp32) from FP8 operands and their scales; equation (1) of reference.py.

    a_q (M, K) with a_s (M, ⌈K/128⌉); b_q (N, K) with b_s per 128×128 block or per 1×128 tile."""
    _, _, _, b_rows = ref._check_gemm_operands(a_q, a_s, b_q, b_s)
    k = _kernels_for(backend, a_q.device)
    if k is None:
        return ref.block_scaled_gemm_reference(a_q, a_s, b_q, b_s)
    return k.block_gemm(a_q, a_s.float(), b_q, b_s.float(), b_rows, **launch)
