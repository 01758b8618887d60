"""Attention variants behind one interface, chosen by ``ModelConfig.attention_type``.

Every variant is an ``nn.Module`` with
    ``forward(x, rope, attn_mask=None, cache=None, start=0) -> y``   x, y: (B, T, d_model)
    ``new_cache(batch, max_len, dtype, device)``                     its own KV-cache type
    ``rope_dim``                                                     how many dims RoPE rotates
so the decoder layer, generation and the trainer never need to know which one they hold.

    "mha"  MultiHeadAttention         MHA, GQA, MQA (num_key_value_heads)   cache: KVCache
    "mla"  MultiHeadLatentAttention   MLA, naive or absorbed (chapter 02)  cache: LatentKVCache

``ATTENTION_CLASSES`` maps ``ModelConfig.attention_type`` to the class; the model's assembler
(``dslearn.model.parts``) is the one place that reads it.
"""

from __future__ import annotations

from .mha import KVCache, MultiHeadAttention
from .mla import MLA_PATHS, LatentKVCache, MultiHeadLatentAttention
from .yarn import build_rotary

ATTENTION_CLASSES = {"mha": MultiHeadAttention, "mla": MultiHeadLatentAttention}  # ModelConfig.attention_type

__all__ = ["ATTENTION_CLASSES", "MLA_PATHS", "KVCache", "LatentKVCache", "MultiHeadAttention",
           "MultiHeadLatentAttention", "build_rotary"]
