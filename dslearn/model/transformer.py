"""The DeepSeek-LLM baseline: a pre-norm decoder-only transformer (DeepSeek-LLM §2.2).

    h_0 = Emb(tokens)
    for each layer l:   u = h + Attn(RMSNorm(h))          (MHA/GQA here; MLA in chapter 02)
                        h = u + FFN(RMSNorm(u))           (SwiGLU here; DeepSeekMoE in chapters 03–04)
    logits = W_out · RMSNorm(h_L)

The attention and the feed-forward are built by factories from the config
(``build_attention``, ``build_ffn``), so later chapters swap them in without copying this file.
Module names follow Hugging Face (``model.embed_tokens``, ``model.layers.{i}.self_attn.q_proj``,
``input_layernorm``, ``mlp.gate_proj``, ``model.norm``, ``lm_head``): the state dict loads
into ``transformers.LlamaForCausalLM`` as is, which is how the tests check this model.

Padding and caching: a batch of prompts of different lengths is *left*-padded. ``attention_mask``
(B, T) marks real tokens; positions count real tokens only, so a padded row computes exactly
what it would alone. A ``DecodeState`` carries each layer's KV cache plus the mask of cached keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention  # a module reference: dslearn.attention imports model.layers, so no names at import time
from ..config import ConfigError, ModelConfig
from .layers import RMSNorm, SwiGLU


def make_linear(config: ModelConfig):
    """The Linear class the model's projections use (``config.linear_impl``): ``nn.Linear``, or
    ``FP8Linear`` (chapter 05: Fprop, Dgrad and Wgrad in FP8, DeepSeek-V3 §3.3). The output head
    ``lm_head`` and the embedding stay in full precision either way, as in DeepSeek-V3."""
    if config.linear_impl == "torch":
        return nn.Linear
    if config.linear_impl == "fp8":
        from ..fp8.linear import FP8Linear
        return FP8Linear
    raise ConfigError(f"linear_impl={config.linear_impl!r} has no implementation in this version of dslearn")


def build_ffn(config: ModelConfig, layer_idx: int, linear) -> nn.Module:
    """Dense SwiGLU, or DeepSeekMoE for layers past ``first_k_dense_replace`` in MoE configs."""
    if config.is_moe_layer(layer_idx):
        from ..moe import DeepSeekMoE  # chapters 03–04; imported here because dslearn.moe imports model.layers
        return DeepSeekMoE(config, layer_idx, linear=linear)
    return SwiGLU(config.hidden_size, config.intermediate_size, linear=linear)


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, V), or (B, 1, V) with last_only=True
    loss: torch.Tensor | None = None  # mean next-token cross-entropy in nats (fp32)
    aux_loss: torch.Tensor | None = None  # sum of this forward's auxiliary losses (training mode), or None
    metrics: dict = field(default_factory=dict)  # extra scalars for the trainer's log


class DecodeState:
    """Everything incremental decoding carries between steps: per-layer caches, which cached
    positions hold real tokens, how many positions are filled, and each row's next position."""

    def __init__(self, caches: list, batch: int, max_len: int, device=None):
        self.caches = caches
        self.key_valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.key_valid.shape[1]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (e.g. drop sequences that finished)."""
        for c in self.caches:
            c.select(rows)
        self.key_valid, self.next_pos = self.key_valid[rows], self.next_pos[rows]

    def nbytes(self) -> int:
        return sum(c.nbytes(self.length) for c in self.caches)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        linear = make_linear(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = attention.build_attention(config, layer_idx, linear)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = build_ffn(config, layer_idx, linear)

    def forward(self, h, rope, attn_mask=None, cache=None, start=0):
        u = h + self.self_attn(self.input_layernorm(h), rope, attn_mask, cache, start)  # (B, T, d)
        return u + self.mlp(self.post_attention_layernorm(u))  # (B, T, d)


class Backbone(nn.Module):
    """Embedding, the stack of decoder layers, and the final norm (HF's ``model.`` prefix)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """The baseline language model. ``forward(input_ids, targets)`` → ModelOutput.

    Initialisation draws from its own generator seeded by ``seed``: the same config and seed give
    the same weights, whatever else has used torch's global RNG."""

    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        rope_dim = self.model.layers[0].self_attn.rope_dim
        self.rotary = attention.build_rotary(config, rope_dim)  # plain RoPE, or YaRN when config.rope_scaling is set
        self.reset_parameters(torch.Generator().manual_seed(seed))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """N(0, σ) everywhere; the two projections that write into the residual stream
        (``o_proj``, ``down_proj``) get σ/√(2L) so the stream's variance does not grow with depth."""
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, residual_std, generator=generator)
            else:
                nn.init.normal_(p, 0.0, std, generator=generator)

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.model.embed_tokens.weight.numel()
            if not self.config.tie_word_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    # ------------------------------------------------------------------------------------
    def new_decode_state(self, batch: int, max_len: int, dtype=None, device=None) -> DecodeState:
        p = self.lm_head.weight
        dtype, device = dtype or p.dtype, device or p.device
        caches = [layer.self_attn.new_cache(batch, max_len, dtype, device) for layer in self.model.layers]
        return DecodeState(caches, batch, max_len, device)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        state: DecodeState | None = None,
        last_only: bool = False,
    ) -> ModelOutput:
        """input_ids (B, T) int64. targets (B, T), -100 = ignore. attention_mask (B, T): 1 for real
        tokens (left padding only). state: continue a DecodeState (its caches are updated).
        last_only: compute logits for the last position only (generation)."""
        B, T = input_ids.shape
        if input_ids.dtype != torch.long:
            raise TypeError(f"input_ids must be int64 token ids, got {input_ids.dtype}")
        start = state.length if state is not None else 0
        if state is None and T > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {T} tokens exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        # 1. positions and the attention mask
        if attention_mask is None and state is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
            attn_mask = None  # plain causal attention: the fast path
        else:
            valid = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                     else attention_mask.to(torch.bool))
            if state is not None:
                if start + T > state.max_len:
                    raise ValueError(f"decode state holds {state.max_len} positions; {start + T} needed")
                state.key_valid[:, start:start + T] = valid
                key_valid = state.key_valid[:, :start + T]  # (B, Tk)
                base = state.next_pos
            else:
                key_valid, base = valid, torch.zeros(B, dtype=torch.long, device=input_ids.device)
            positions = (base[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
            attn_mask = _padded_causal_mask(key_valid, start, T)  # (B, 1, T, Tk)
        rope = self.rotary(positions)
        # 2. the decoder stack
        h = self.model.embed_tokens(input_ids)  # (B, T, d)
        caches = state.caches if state is not None else [None] * len(self.model.layers)
        for layer, cache in zip(self.model.layers, caches):
            h = layer(h, rope, attn_mask, cache, start)
        if state is not None:
            state.length = start + T
            state.next_pos = state.next_pos + valid.long().sum(1)
        # 3. output head and loss
        h = self.model.norm(h[:, -1:] if last_only else h)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            if last_only:
                raise ValueError("targets need logits at every position; do not pass last_only=True")
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        metrics, aux = {}, None
        if self.config.is_moe:  # DeepSeekMoE: add the balance losses (training only) and log load metrics
            from ..moe import collect_moe
            aux, metrics = collect_moe(layer.mlp for layer in self.model.layers)
            if loss is not None:
                metrics["ce_loss"] = float(loss.detach())
                if aux is not None:
                    loss = loss + aux
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux, metrics=metrics)


def _padded_causal_mask(key_valid: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """(B, 1, T, start+T) bool: query i (absolute start+i) sees key j if j ≤ start+i and key j is a
    real token. A query always sees itself, so rows of pure padding never softmax over nothing."""
    Tk = key_valid.shape[1]
    q_abs = torch.arange(start, start + T, device=key_valid.device)[:, None]  # (T, 1)
    k_idx = torch.arange(Tk, device=key_valid.device)[None, :]  # (1, Tk)
    mask = (k_idx <= q_abs) & key_valid[:, None, :]  # (B, T, Tk)
    mask |= k_idx == q_abs
    return mask[:, None]
