"""Multi-head attention with grouped keys and values: MHA, GQA and MQA in one module.

DeepSeek-LLM 7B uses multi-head attention (MHA, every query head has its own key/value head);
67B uses grouped-query attention (GQA, 8 key/value heads shared by 64 query heads); MQA is
the extreme of one shared key/value head. One module covers all three through
``num_key_value_heads``:

    q_t = W^Q h_t   (n_h heads)      k_t = W^K h_t, v_t = W^V h_t   (n_kv heads each)
    o_t = W^O [softmax(q·kᵀ/√d_h) v]   each query head reads the KV head of its group

Per token and layer the KV cache holds 2·n_kv·d_h numbers — MLA (chapter 02) shrinks exactly this.

Code names: W^Q, W^K, W^V, W^O → ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (the LLaMA and
Hugging Face names, so the baseline loads into ``transformers.LlamaForCausalLM`` unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import apply_rotary


class KVCache:
    """Pre-allocated per-layer key/value cache for MHA/GQA/MQA: (B, n_kv, max_len, d_h) each.

    Only the positions [0, start + T) written so far are read back; ``select`` keeps a subset of
    batch rows (generation drops finished sequences from the batch this way); ``truncate`` drops
    positions from the end (speculative decoding rolls back rejected draft tokens this way).
    """

    def __init__(self, batch: int, n_kv: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, n_kv, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: writing up to position {end} into a cache of {self.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, n_kv, end, d_h)

    def select(self, rows: torch.Tensor) -> None:
        self.k, self.v = self.k[rows], self.v[rows]

    def truncate(self, length: int) -> None:
        """Drop the cached positions >= ``length`` (speculative decoding rolls back rejected tokens this
        way); the next ``update`` writes from ``length`` on. The dropped rows are zeroed, not just ignored."""
        _check_truncate(length, self.max_len)
        self.k[:, :, length:] = 0
        self.v[:, :, length:] = 0

    def nbytes(self, length: int | None = None) -> int:
        """Bytes held for the first ``length`` positions (all allocated ones by default)."""
        n = self.max_len if length is None else length
        return 2 * self.k[:, :, :n].numel() * self.k.element_size()


class StaticKVCache(KVCache):
    """The same buffers, written and read with static shapes (``dslearn.model.static_decode``): ``start`` may be a
    0-d tensor, the chunk is written with ``index_copy_`` at [start, start+T), and the WHOLE buffer is returned —
    the attention mask hides the positions not yet written — so one compiled decode step serves every position."""

    def update(self, k: torch.Tensor, v: torch.Tensor, start) -> tuple[torch.Tensor, torch.Tensor]:
        idx = start + torch.arange(k.shape[2], device=k.device)  # (T,) absolute positions
        self.k.index_copy_(2, idx, k)
        self.v.index_copy_(2, idx, v)
        return self.k, self.v  # (B, n_kv, max_len, d_h)


def _check_truncate(length: int, max_len: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= max_len:
        raise ValueError(f"truncate length must be an integer in [0, {max_len}], got {length!r}")


class MultiHeadAttention(nn.Module):
    """Causal self-attention with n_h query heads and n_kv key/value heads (MHA/GQA/MQA)."""

    def __init__(self, config, layer_idx: int = 0, linear=nn.Linear):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.interleaved = config.rope_interleave
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = linear(d, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = linear(d, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = linear(self.n_heads * self.head_dim, d, bias=bias)

    @property
    def rope_dim(self) -> int:
        return self.head_dim

    def new_cache(self, batch: int, max_len: int, dtype=torch.float32, device=None, static: bool = False) -> KVCache:
        """static=True: a ``StaticKVCache`` (fixed shapes for a compiled decode step)."""
        cls = StaticKVCache if static else KVCache
        return cls(batch, self.n_kv, max_len, self.head_dim, dtype, device)

    def forward(self, x, rope, attn_mask=None, cache: KVCache | None = None, start: int = 0):
        """x (B, T, d); rope = (cos, sin) each (B, T, d_h/2); attn_mask (B, 1, T, start+T) bool or
        None for plain causal attention; cache/start: write this chunk's K/V at [start, start+T)."""
        B, T, _ = x.shape
        # 1. project to heads
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, n_h, T, d_h)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, n_kv, T, d_h)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, n_kv, T, d_h)
        # 2. rotate queries and keys by their positions
        cos, sin = rope
        q = apply_rotary(q, cos, sin, self.interleaved)
        k = apply_rotary(k, cos, sin, self.interleaved)
        # 3. append to the cache and attend over everything cached so far
        if cache is not None:
            k, v = cache.update(k, v, start)  # (B, n_kv, start+T, d_h)
        gqa = self.n_kv != self.n_heads
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        # 4. merge heads and project out
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # (B, T, d)
