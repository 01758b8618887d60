"""KV-cache accounting for every attention variant, from a ModelConfig (DeepSeek-V2 Table 1).

During generation each layer keeps, for every earlier token, what later queries need:

    variant   cached elements per token per layer     V2 Table 1 (with l layers)
    -------   ------------------------------------    --------------------------
    MHA       2 · n_h · d_h                           2 n_h d_h l
    GQA       2 · n_g · d_h   (n_g KV groups)         2 n_g d_h l
    MQA       2 · d_h                                 2 d_h l
    MLA       d_c + d_h^R                             (d_c + d_h^R) l  ≈ 9/2 d_h l   (d_c = 4 d_h, d_h^R = d_h/2)

so MLA's cache equals GQA's with (d_c + d_h^R)/(2 d_h) = 2.25 groups, while attending with all n_h
heads. For DeepSeek-V3 (61 layers): (512 + 64) · 61 = 35,136 elements = 70,272 bytes per token in BF16.

Code names: n_h → ``num_attention_heads``, n_g → ``num_key_value_heads``, d_h → ``head_dim`` (MHA) /
``qk_nope_head_dim`` (MLA), d_c → ``kv_lora_rank``, d_h^R → ``qk_rope_head_dim``, l → ``num_hidden_layers``.

``layer_windows`` describes the layer-wise adaptive cache *experiment* (not DeepSeek's method; see
``adaptive_cache``): {layer index: tokens kept}. Tests check every number here against the bytes the
real caches hold (``measured_elements_per_token``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelConfig

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1}


def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of a torch dtype or a name ("fp32", "bf16", "fp16", "fp8")."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use a torch.dtype or one of {sorted(DTYPE_BYTES)}") from None


def elements_per_token_per_layer(config: ModelConfig) -> int:
    """Cached numbers per token per layer: 2·n_kv·d_h (MHA/GQA/MQA) or d_c + d_h^R (MLA)."""
    if config.attention_type == "mla":
        return config.kv_lora_rank + config.qk_rope_head_dim
    return 2 * config.num_key_value_heads * config.head_dim


def variant_name(config: ModelConfig) -> str:
    if config.attention_type == "mla":
        return "MLA"
    if config.num_key_value_heads == config.num_attention_heads:
        return "MHA"
    return "MQA" if config.num_key_value_heads == 1 else "GQA"


def gqa_equivalent_groups(config: ModelConfig, head_dim: int | None = None) -> float:
    """How many GQA groups of ``head_dim`` (default: the config's per-head dim) cache as much as this config."""
    d_h = head_dim or (config.qk_nope_head_dim if config.attention_type == "mla" else config.head_dim)
    return elements_per_token_per_layer(config) / (2 * d_h)


def _check_windows(config: ModelConfig, layer_windows: dict[int, int] | None) -> dict[int, int]:
    windows = dict(layer_windows or {})
    for layer, w in windows.items():
        if not 0 <= layer < config.num_hidden_layers:
            raise ValueError(f"layer_windows names layer {layer}; the model has {config.num_hidden_layers}")
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"layer_windows[{layer}] must be an integer >= 1, got {w!r}")
    return windows


def cache_elements(config: ModelConfig, context: int, batch: int = 1,
                   layer_windows: dict[int, int] | None = None) -> int:
    """Numbers cached after ``context`` tokens, over all layers and the batch."""
    if context < 0 or batch < 1:
        raise ValueError(f"need context >= 0 and batch >= 1, got context={context}, batch={batch}")
    windows = _check_windows(config, layer_windows)
    per = elements_per_token_per_layer(config)
    tokens = sum(min(context, windows.get(layer, context)) for layer in range(config.num_hidden_layers))
    return batch * per * tokens


def cache_bytes(config: ModelConfig, context: int, dtype: str | torch.dtype = "bf16", batch: int = 1,
                layer_windows: dict[int, int] | None = None) -> int:
    """Bytes cached after ``context`` tokens (all layers, whole batch) in ``dtype``."""
    return cache_elements(config, context, batch, layer_windows) * dtype_bytes(dtype)


@dataclass(frozen=True)
class CacheReport:
    name: str
    elements_per_token_per_layer: int
    layers: int
    bytes_per_element: int

    @property
    def elements_per_token(self) -> int:
        return self.elements_per_token_per_layer * self.layers

    @property
    def bytes_per_token(self) -> int:
        return self.elements_per_token * self.bytes_per_element

    def bytes_at(self, context: int, batch: int = 1) -> int:
        return self.bytes_per_token * context * batch


def cache_report(config: ModelConfig, dtype: str | torch.dtype = "bf16", name: str | None = None) -> CacheReport:
    return CacheReport(name or variant_name(config), elements_per_token_per_layer(config),
                       config.num_hidden_layers, dtype_bytes(dtype))


def attention_variants(config: ModelConfig, gqa_groups: int | None = None) -> dict[str, ModelConfig]:
    """MHA, GQA, MQA and MLA at the same n_h, layer count and width as ``config``.

    MLA keeps the config's MLA fields if it has them, else uses V2's ratios d_c = 4·d_h, d_h^R = d_h/2
    (rounded to even). GQA uses ``gqa_groups`` KV heads (default n_h/4, at least 1)."""
    n_h = config.num_attention_heads
    d_h = config.qk_nope_head_dim if config.attention_type == "mla" else config.head_dim
    if gqa_groups is None:
        gqa_groups = max(1, n_h // 4)
    dense = dict(attention_type="mha", head_dim=d_h, q_lora_rank=None, kv_lora_rank=None, qk_nope_head_dim=None,
                 qk_rope_head_dim=None, v_head_dim=None, rope_scaling=None)
    if config.attention_type == "mla":
        mla = config.replace(num_key_value_heads=n_h)
    else:
        mla = config.replace(attention_type="mla", kv_lora_rank=4 * d_h, qk_nope_head_dim=d_h,
                             qk_rope_head_dim=max(2, d_h // 4 * 2), v_head_dim=d_h)
    return {
        "MHA": config.replace(**dense, num_key_value_heads=n_h),
        "GQA": config.replace(**dense, num_key_value_heads=gqa_groups),
        "MQA": config.replace(**dense, num_key_value_heads=1),
        "MLA": mla,
    }


def measured_elements_per_token(cache, batch: int, dtype: torch.dtype) -> float:
    """Numbers one token occupies in a real pre-allocated cache (per batch row): the bytes its tensors
    hold for one position, divided by the batch and the element size."""
    return cache.nbytes(1) / (batch * dtype_bytes(dtype))
