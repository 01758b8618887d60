"""Attention variants behind one interface, chosen by ``ModelConfig.attention_type``.

Every variant is an ``nn.Module`` with
    ``forward(x, rope, attn_mask=None, cache=None, start=0) -> y``   x, y: (B, T, d_model)
    ``new_cache(batch, max_len, dtype, device)``                     its own KV-cache type
    ``rope_dim``                                                     how many dims RoPE rotates
so the decoder layer, generation and the trainer never need to know which one they hold.

    "mha"  MultiHeadAttention         MHA, GQA, MQA (num_key_value_heads)   cache: KVCache
    "mla"  MultiHeadLatentAttention   MLA, naive or absorbed (chapter 02)  cache: LatentKVCache
"""

from __future__ import annotations

from ..config import ConfigError
from .mha import KVCache, MultiHeadAttention
from .mla import LatentKVCache, MultiHeadLatentAttention, set_mla_path
from .yarn import build_rotary

ATTENTION_CLASSES = {"mha": MultiHeadAttention, "mla": MultiHeadLatentAttention}


def build_attention(config, layer_idx: int, linear):
    try:
        cls = ATTENTION_CLASSES[config.attention_type]
    except KeyError:
        raise ConfigError(
            f"attention_type={config.attention_type!r} has no trainable implementation in this "
            f"version of dslearn (available: {sorted(ATTENTION_CLASSES)})"
        ) from None
    return cls(config, layer_idx, linear=linear)


__all__ = ["ATTENTION_CLASSES", "KVCache", "LatentKVCache", "MultiHeadAttention", "MultiHeadLatentAttention",
           "build_attention", "build_rotary", "set_mla_path"]
