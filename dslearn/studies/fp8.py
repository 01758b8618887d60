"""Chapter 05's experiments, as functions the notebook runs small and experiments/fp8/run_fp8.py runs full.

1. ``scaling_error_study`` — why fine-grained scaling: activations with outliers quantised with one
   scale per tensor, per token, per 1×128 tile (DeepSeek) and per 128×128 block; the relative
   error of the ordinary (non-outlier) values and how many of them are flushed to zero.
2. ``dslearn.fp8.accumulation.accumulation_sweep`` — why promotion: error of an emulated 14-bit
   tensor-core accumulator vs K, with and without FP32 promotion every N_C = 128 (it emulates the
   hardware and needs no model, so it stays with the idea it illustrates).
3. ``train_compare`` — does it train: the same small model, data and budget with fp32, bf16
   autocast and FP8Linear; the relative gap in final validation loss (DeepSeek-V3: < 0.25% vs BF16).
"""

from __future__ import annotations

import time

import torch

from ..config import ModelConfig
from ..data import TokenStream, load_corpus
from ..fp8.reference import TILE_ACT, TILE_WEIGHT, fake_quantize
from ..model import CausalLM
from ..train import TrainConfig, Trainer

SCHEMES = {  # name → tile (None = per tensor); "per token" is one scale per row of the whole tensor
    "per tensor": None,
    "per token (1×K)": "row",
    "1×128 tiles (DeepSeek)": TILE_ACT,
    "128×128 blocks": TILE_WEIGHT,
}


def activations_with_outliers(T: int = 256, K: int = 1024, magnitude: float = 100.0, kind: str = "sparse",
                              fraction: float = 0.001, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (T, K) ~ N(0, 1) with outliers of size ``magnitude``: "sparse" (a random ``fraction`` of
    entries) or "channel" (a few whole channels, as in LLM activations). Returns x and the outlier mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K, generator=g)
    if kind == "sparse":
        mask = torch.rand(T, K, generator=g) < fraction
    elif kind == "channel":
        mask = torch.zeros(T, K, dtype=torch.bool)
        mask[:, torch.randperm(K, generator=g)[: max(1, int(fraction * K))]] = True
    else:
        raise ValueError(f"kind must be 'sparse' or 'channel', got {kind!r}")
    signs = torch.where(torch.rand(T, K, generator=g) < 0.5, -1.0, 1.0)
    x = torch.where(mask, signs * magnitude * (1 + torch.rand(T, K, generator=g)), x)
    return x, mask


def quantization_error(x: torch.Tensor, mask: torch.Tensor, scheme: str, fmt: str = "e4m3") -> dict[str, float]:
    """Over the non-outlier entries: normwise ‖x̂ − x‖/‖x‖, the mean of |x̂ − x|/|x| (a value flushed
    to 0 counts as 100% error), and the fraction flushed to 0."""
    tile = SCHEMES[scheme]
    if tile == "row":
        tile = (1, x.shape[1])  # one scale per token over all K channels
    xh = fake_quantize(x, tile, fmt)
    keep = ~mask & (x != 0)
    err = ((xh - x)[keep].norm() / x[keep].norm()).item()
    elem = ((xh - x).abs() / x.abs())[keep].mean().item()
    flushed = ((xh == 0) & keep).sum().item() / max(1, keep.sum().item())
    return {"rel_error": err, "mean_elem_rel_error": elem, "flushed_to_zero": flushed}


def scaling_error_study(magnitudes=(1, 10, 100, 1e3, 1e4, 3e4, 1e5), kinds=("sparse", "channel"), T: int = 256,
                        K: int = 1024, seed: int = 0) -> list[dict]:
    """Rows {kind, magnitude, scheme, rel_error, mean_elem_rel_error, flushed_to_zero}, every scheme in SCHEMES."""
    rows = []
    for kind in kinds:
        for mag in magnitudes:
            x, mask = activations_with_outliers(T, K, float(mag), kind, seed=seed)
            for scheme in SCHEMES:
                rows.append({"kind": kind, "magnitude": float(mag), "scheme": scheme,
                             **quantization_error(x, mask, scheme)})
    return rows


# ----------------------------------------------------------------------------------------
def fp8_model_config(**overrides):
    """The comparison model: every Linear's in/out size a multiple of 128 (hidden 128, FFN 384)."""
    base = dict(vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                max_position_embeddings=128)
    base.update(overrides)
    return ModelConfig(**base)


def train_compare(modes=("fp32", "bf16", "fp8"), steps: int = 400, batch_size: int = 16, seq_len: int = 128,
                  lr: float = 3e-3, warmup_steps: int = 30, eval_windows: int = 128, eval_every: int = 50,
                  seed: int = 0, model_overrides: dict | None = None, progress: bool = True) -> dict:
    """Train the same model (same init, same batches) once per mode on the stdlib corpus.

    modes: "fp32" (plain), "bf16" (autocast, fp32 master weights), "fp8" (every Linear but the
    output head is FP8Linear). A mode may carry a seed, "fp32@1", to measure seed-to-seed noise.
    Returns {mode: {final_val_loss, final_val_bpb, losses, val, tokens_per_s, wall_s}}."""
    corpus = load_corpus()
    train, val = TokenStream(corpus.train, "train"), TokenStream(corpus.val, "val")
    out = {}
    for mode in modes:
        kind, _, mode_seed = mode.partition("@")
        if kind not in ("fp32", "bf16", "fp8"):
            raise ValueError(f"mode must be fp32, bf16 or fp8 (optionally @seed), got {mode!r}")
        run_seed = int(mode_seed) if mode_seed else seed
        cfg = fp8_model_config(linear_impl="fp8" if kind == "fp8" else "torch", **(model_overrides or {}))
        model = CausalLM(cfg, seed=run_seed)
        tc = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup_steps=warmup_steps,
                         bf16=kind == "bf16", seed=run_seed, eval_every=eval_every, eval_windows=eval_windows,
                         progress=progress)
        t0 = time.perf_counter()
        result = Trainer(model, tc, train, val).fit()
        out[mode] = {"final_val_loss": result.val[-1]["val_loss"], "final_val_bpb": result.final_val_bpb,
                     "losses": result.losses, "val": result.val, "tokens_per_s": result.tokens_per_s,
                     "wall_s": time.perf_counter() - t0}
    return out


def relative_gap(results: dict, mode: str, baseline: str) -> float:
    """(L_mode − L_baseline) / L_baseline of the final validation loss, in percent."""
    a, b = results[mode]["final_val_loss"], results[baseline]["final_val_loss"]
    return 100.0 * (a - b) / b
