"""Multi-head latent attention (MLA): DeepSeek-V2 §2.1, kept unchanged in DeepSeek-V3 §2.1.

MHA caches 2·n_h·d_h numbers per token and layer (every head's key and value). MLA caches one
small latent instead and rebuilds keys and values from it:

    c_t^KV = W^DKV h_t                       (d_c numbers; RMSNorm'd)       ← cached
    k_t^C  = W^UK c_t^KV,  v_t^C = W^UV c_t^KV   (n_h heads of d_h each)
    c_t^Q  = W^DQ h_t,     q_t^C = W^UQ c_t^Q    (queries compressed too; RMSNorm'd; optional)

RoPE does not commute with W^UK (it rotates by a position-dependent matrix), so positions live in
a separate, *decoupled* part: per-head q_t^R = RoPE(W^QR c_t^Q) and ONE key k_t^R = RoPE(W^KR h_t)
shared by all heads (d_h^R numbers; cached). Each head then attends with

    score_{t,j} = [q_t^C; q_t^R] · [k_j^C; k_j^R] / √(d_h + d_h^R)

so the cache holds d_c + d_h^R numbers per token and layer: 512 + 64 = 576 in V2 and V3.

Two inference paths, same weights, same outputs (tests hold them to each other):

- ``naive``: re-expand every cached latent into per-head K and V (W^UK, W^UV) at every step, then
  ordinary attention. Simple, and the reference; per decode step it costs O(context · d_c · n_h · d_h).
- ``absorbed``: since q^C·k^C = q^C·(W^UK c) = (W^UKᵀ q^C)·c, fold W^UK into the query and W^UV
  into the output (o = W^UV Σ_j p_j c_j): attention runs directly over the cached [c^KV; k^R], and
  per-head keys and values are never built. This is what makes the small cache fast.

Paper symbol → code (names and layouts match Hugging Face's ``DeepseekV3Attention``):

    W^DQ, RMSNorm, W^UQ;W^QR     q_a_proj, q_a_layernorm, q_b_proj  (or q_proj when q_lora_rank=None)
                                   q_b_proj rows per head: [d_h nope | d_h^R rope]
    W^DKV ; W^KR                  kv_a_proj_with_mqa rows: [d_c latent | d_h^R shared key]
    RMSNorm on c^KV               kv_a_layernorm
    W^UK ; W^UV                   kv_b_proj rows per head: [d_h nope (W^UK) | d_h^v (W^UV)]
    W^O                           o_proj
    d_c, d_c', d_h, d_h^R, d_h^v  kv_lora_rank, q_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim
    c^KV ; k^R (cached)           LatentKVCache.kv[..., :d_c] ; LatentKVCache.kv[..., d_c:]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MLA_IMPLS
from ..layers import RMSNorm, apply_rotary
from .mha import _check_truncate
from .yarn import softmax_scale

MLA_PATHS = MLA_IMPLS  # the values of ModelConfig.mla_impl, declared once in config.py
# ε of the latent norms (q_a_layernorm, kv_a_layernorm): DeepSeek's inference/model.py and HF's DeepseekV3Attention
# build them with RMSNorm's default 1e-6, not config.rms_norm_eps (equal in every released config)
LATENT_NORM_EPS = 1e-6


class LatentKVCache:
    """Pre-allocated MLA cache: (B, max_len, d_c + d_h^R) — per token the normalised latent c^KV
    followed by the already-rotated shared key k^R. Nothing per head is stored."""

    def __init__(self, batch: int, max_len: int, kv_lora_rank: int, rope_dim: int, dtype, device):
        self.kv = torch.zeros(batch, max_len, kv_lora_rank + rope_dim, dtype=dtype, device=device)

    @property
    def max_len(self) -> int:
        return self.kv.shape[1]

    def update(self, latent: torch.Tensor, start: int) -> tuple[torch.Tensor, int]:
        """Write latent (B, T, d_c+d_h^R) at [start, start+T); return everything cached so far
        (B, start+T, d_c+d_h^R) and the absolute position of its first row (always 0 here)."""
        end = start + latent.shape[1]
        if end > self.max_len:
            raise ValueError(f"latent cache overflow: writing up to position {end} into a cache of {self.max_len}")
        self.kv[:, start:end] = latent
        return self.kv[:, :end], 0

    def select(self, rows: torch.Tensor) -> None:
        self.kv = self.kv[rows]

    def truncate(self, length: int) -> None:
        """Drop the cached positions >= ``length`` (zeroed); the next ``update`` writes from ``length`` on."""
        _check_truncate(length, self.max_len)
        self.kv[:, length:] = 0

    def nbytes(self, length: int | None = None) -> int:
        """Bytes held for the first ``length`` positions (all allocated ones by default)."""
        n = self.max_len if length is None else length
        return self.kv[:, :n].numel() * self.kv.element_size()


class StaticLatentKVCache(LatentKVCache):
    """The same buffer with static shapes (``dslearn.model.static_decode``): ``start`` may be a 0-d tensor, the
    chunk is written with ``index_copy_`` and the WHOLE buffer is returned (the mask hides unwritten positions)."""

    def update(self, latent: torch.Tensor, start) -> tuple[torch.Tensor, int]:
        idx = start + torch.arange(latent.shape[1], device=latent.device)  # (T,) absolute positions
        self.kv.index_copy_(1, idx, latent)
        return self.kv, 0  # (B, max_len, d_c+d_h^R)


class MultiHeadLatentAttention(nn.Module):
    """MLA with decoupled RoPE; ``path`` chooses the naive (re-expanding) or absorbed computation
    (``ModelConfig.mla_impl`` unless given; the weights are the same, so a model rebuilt with the other
    ``mla_impl`` loads the same state dict: ``dslearn.model.with_config(model, mla_impl="absorbed")``).

    ``window`` and ``cache_factory`` (None by default) are set only by the *layer-wise adaptive cache
    experiment*, not DeepSeek's method: with a window this layer only sees the ``window`` most recent earlier
    tokens, and ``cache_factory(batch, max_len, dtype, device)`` builds its (evicting) cache. The experiment
    lives in ``dslearn.attention.adaptive_cache`` and injects both; this module never imports it."""

    def __init__(self, config, layer_idx: int = 0, linear=nn.Linear, path: str | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.q_lora_rank = config.q_lora_rank
        self.kv_lora_rank = config.kv_lora_rank
        self.nope_dim = config.qk_nope_head_dim
        self.rope_head_dim = config.qk_rope_head_dim
        self.v_dim = config.v_head_dim
        self.qk_dim = self.nope_dim + self.rope_head_dim
        self.interleaved = config.rope_interleave
        self.scale = softmax_scale(config, self.qk_dim)  # 1/√(d_h + d_h^R), × mscale² under YaRN
        self.path = config.mla_impl if path is None else path
        self.window: int | None = None
        self.cache_factory = None
        d, bias = config.hidden_size, config.attention_bias
        if self.q_lora_rank is None:
            self.q_proj = linear(d, self.n_heads * self.qk_dim, bias=False)
        else:
            self.q_a_proj = linear(d, self.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = linear(self.q_lora_rank, self.n_heads * self.qk_dim, bias=False)
        self.kv_a_proj_with_mqa = linear(d, self.kv_lora_rank + self.rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = linear(self.kv_lora_rank, self.n_heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = linear(self.n_heads * self.v_dim, d, bias=bias)

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in MLA_PATHS:
            raise ValueError(f"MLA path must be one of {MLA_PATHS}, got {value!r}")
        self._path = value

    @property
    def rope_dim(self) -> int:
        return self.rope_head_dim

    def new_cache(self, batch: int, max_len: int, dtype=torch.float32, device=None, static: bool = False):
        """static=True: a ``StaticLatentKVCache`` (fixed shapes for a compiled decode step)."""
        if self.cache_factory is not None:  # injected by the adaptive-cache experiment
            if static:
                raise ValueError("the adaptive-cache experiment's evicting caches have no static-shape version; "
                                 "decode this model with the eager path")
            return self.cache_factory(batch, max_len, dtype, device)
        cls = StaticLatentKVCache if static else LatentKVCache
        return cls(batch, max_len, self.kv_lora_rank, self.rope_head_dim, dtype, device)

    # ------------------------------------------------------------------------------------
    def forward(self, x, rope, attn_mask=None, cache=None, start: int = 0):
        """x (B, T, d); rope = (cos, sin) each (B, T, d_h^R/2); attn_mask (B, 1, T, start+T) bool or
        None for plain causal attention; cache/start: write this chunk's latents at [start, start+T)."""
        B, T, _ = x.shape
        # 1. queries: per head a content part q^C and a rotary part q^R
        if self.q_lora_rank is None:
            q = self.q_proj(x)  # (B, T, n_h·(d_h+d_h^R))
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))  # c^Q: (B, T, d_c') → (B, T, n_h·(d_h+d_h^R))
        q = q.view(B, T, self.n_heads, self.qk_dim).transpose(1, 2)  # (B, n_h, T, d_h+d_h^R)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_head_dim], dim=-1)
        # 2. the latent c^KV and the ONE shared rotary key k^R
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_head_dim], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)  # (B, T, d_c)
        cos, sin = rope
        q_rope = apply_rotary(q_rope, cos, sin, self.interleaved)  # (B, n_h, T, d_h^R)
        k_rope = apply_rotary(k_rope[:, None], cos, sin, self.interleaved)[:, 0]  # (B, T, d_h^R)
        # 3. cache [c^KV; k^R] and read back everything cached so far
        latent = torch.cat([c_kv, k_rope], dim=-1)  # (B, T, d_c+d_h^R)
        key_start = start
        if cache is not None:
            latent, key_start = cache.update(latent, start)  # (B, S, d_c+d_h^R), S keys from key_start
        mask = self._mask(attn_mask, T, start, key_start, latent.shape[1], x.device)
        # 4. attend, naively or absorbed, and project out
        attend = self._attend_absorbed if self.path == "absorbed" else self._attend_naive
        y = attend(q_nope, q_rope, latent, mask, causal_fast=mask is None and T > 1)  # (B, T, n_h·d_h^v)
        return self.o_proj(y)  # (B, T, d)

    def _mask(self, attn_mask, T, start, key_start, S, device):
        """(B|1, 1, T, S) bool, or None for plain causal attention over keys [0, T)."""
        if attn_mask is None and self.window is None and start == 0 and key_start == 0 and S == T:
            return None
        q_abs = start + torch.arange(T, device=device)[:, None]  # (T, 1); start may be a 0-d tensor (static decode)
        k_abs = key_start + torch.arange(S, device=device)[None, :]  # (1, S)
        mask = k_abs <= q_abs  # (T, S) causal
        if self.window is not None:
            mask = mask & (k_abs >= q_abs - self.window)  # the experiment: only `window` earlier tokens
        mask = mask[None, None]  # (1, 1, T, S)
        if attn_mask is not None:
            mask = mask & attn_mask[..., key_start:key_start + S]  # (B, 1, T, S): padding
            mask = mask | (k_abs == q_abs)  # a query always sees itself
        return mask

    def _attend_naive(self, q_nope, q_rope, latent, mask, causal_fast):
        """Reference path: expand per-head K and V from every cached latent, then ordinary attention."""
        B, H, T, _ = q_nope.shape
        S = latent.shape[1]
        c_kv, k_rope = latent.split([self.kv_lora_rank, self.rope_head_dim], dim=-1)  # (B, S, d_c), (B, S, d_h^R)
        kv = self.kv_b_proj(c_kv).view(B, S, H, self.nope_dim + self.v_dim).transpose(1, 2)  # (B, n_h, S, d_h+d_h^v)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)  # (B, n_h, S, d_h), (B, n_h, S, d_h^v)
        k = torch.cat([k_nope, k_rope[:, None].expand(B, H, S, self.rope_head_dim)], dim=-1)  # (B, n_h, S, d_h+d_h^R)
        q = torch.cat([q_nope, q_rope], dim=-1)  # (B, n_h, T, d_h+d_h^R)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal_fast, scale=self.scale)
        return y.transpose(1, 2).reshape(B, T, H * self.v_dim)  # (B, T, n_h·d_h^v)

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W^UK (n_h, d_h, d_c) and W^UV (n_h, d_h^v, d_c): views of kv_b_proj.weight, no copies."""
        w = self.kv_b_proj.weight.view(self.n_heads, self.nope_dim + self.v_dim, self.kv_lora_rank)
        return w[:, :self.nope_dim], w[:, self.nope_dim:]

    def _attend_absorbed(self, q_nope, q_rope, latent, mask, causal_fast):
        """Fast path: fold W^UK into the query and W^UV into the output; attend over the latents."""
        B, H, T, _ = q_nope.shape
        S, D = latent.shape[1], latent.shape[2]
        w_uk, w_uv = self.absorbed_weights()
        q_lat = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)  # (B, n_h, T, d_c): W^UKᵀ q^C
        q = torch.cat([q_lat, q_rope], dim=-1)  # (B, n_h, T, d_c+d_h^R)
        # every head attends over the same keys: fold heads into rows, one GEMM per batch row
        scores = torch.bmm(q.reshape(B, H * T, D), latent.transpose(1, 2)).view(B, H, T, S) * self.scale
        if causal_fast:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        p = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(-1).to(q.dtype)  # (B, n_h, T, S)
        #   (at least fp32: a float64 model keeps float64 here)
        o_lat = torch.bmm(p.view(B, H * T, S), latent[..., :self.kv_lora_rank]).view(B, H, T, -1)  # (B, n_h, T, d_c)
        y = torch.einsum("bhtc,hvc->bthv", o_lat, w_uv)  # (B, T, n_h, d_h^v): W^UV applied after attention
        return y.reshape(B, T, H * self.v_dim)  # (B, T, n_h·d_h^v)
