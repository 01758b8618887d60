"""One pre-norm decoder block: u = h + Attn(RMSNorm(h)); h' = u + FFN(RMSNorm(u)) (DeepSeek-LLM §2.2).

The attention and the FFN (dense SwiGLU or DeepSeekMoE) come from ``Parts`` (parts.py). The main model stacks
L of these; each multi-token-prediction depth (mtp.py) holds one more of the same type.
"""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..layers import RMSNorm
from .parts import Parts


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, parts: Parts):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = parts.attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = parts.ffn(config, layer_idx)

    def forward(self, h, rope, attn_mask=None, cache=None, start=0):
        u = h + self.self_attn(self.input_layernorm(h), rope, attn_mask, cache, start)  # (B, T, d)
        return u + self.mlp(self.post_attention_layernorm(u))  # (B, T, d)
