"""The DeepSeek-LLM baseline model and its building blocks."""

from .layers import RMSNorm, RotaryEmbedding, SwiGLU, apply_rotary
from .transformer import CausalLM, DecoderLayer, DecodeState, ModelOutput, build_ffn, make_linear

__all__ = [
    "CausalLM", "DecodeState", "DecoderLayer", "ModelOutput", "RMSNorm", "RotaryEmbedding",
    "SwiGLU", "apply_rotary", "build_ffn", "make_linear",
]
