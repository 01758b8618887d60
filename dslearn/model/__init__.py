"""The assembler: one decoder-only model built from the config's choices (parts.py) — see docs/architecture.md."""

from .parts import LINEARS, Parts, choose_parts
from .transformer import CausalLM, DecoderLayer, DecodeState, Inputs, ModelOutput, with_config

__all__ = [
    "LINEARS", "CausalLM", "DecodeState", "DecoderLayer", "Inputs", "ModelOutput", "Parts", "choose_parts",
    "with_config",
]
