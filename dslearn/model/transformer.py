"""The assembler: one decoder-only transformer for every model of the course (DeepSeek-LLM §2.2, V2, V3).

    h_0 = Emb(tokens)
    for each layer l:   u = h + Attn(RMSNorm(h))          (MHA/GQA, or MLA: chapter 02)
                        h = u + FFN(RMSNorm(u))           (SwiGLU, or DeepSeekMoE: chapters 03–04)
    logits = W_out · RMSNorm(h_L)

Which attention, FFN, Linear, rotary tables and expert dispatch go in is decided by ``parts.choose_parts``
from the config — the one place every implementation choice is made. The forward pass is four named
pieces that the pipeline runtime (``parallel/stages.py``) reuses:

    prepare(B, T, …)       positions → RoPE tables, the attention mask, the cache offset   → Inputs
    backbone(h, inputs)    the decoder layers (writing the KV/latent caches when decoding)
    head(h)                final RMSNorm and the output projection                         → logits
    auxiliary()            every auxiliary loss of this forward, collected from the modules that own it

Auxiliary losses (MoE balance losses now; multi-token prediction next) are not special-cased here: a module
class that owns one defines ``collect_auxiliary(instances) -> (loss | None, metrics)`` as a staticmethod, and
``auxiliary()`` calls it once per such class with that class's modules in order. The training loss is the
cross-entropy (``layers.cross_entropy``, the one CE of the package) plus their sum.

Module names follow Hugging Face (``model.embed_tokens``, ``model.layers.{i}.self_attn.q_proj``,
``input_layernorm``, ``mlp.gate_proj``, ``model.norm``, ``lm_head``): ``dslearn.export`` writes a model that
``transformers`` loads as Llama (dense MHA) or DeepseekV3 (MLA/MoE), and the tests compare logits.

Padding and caching: a batch of prompts of different lengths is *left*-padded. ``attention_mask``
(B, T) marks real tokens; positions count real tokens only, so a padded row computes exactly
what it would alone. A ``DecodeState`` carries each layer's KV cache plus the mask of cached keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import ModelConfig
from ..layers import RMSNorm, cross_entropy
from .block import DecoderLayer
from .mtp import MultiTokenPrediction
from .parts import Parts, choose_parts
from .state import DecodeState, StaticDecodeState


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, V), or (B, 1, V) with last_only=True
    loss: torch.Tensor | None = None  # with targets: mean next-token cross-entropy in nats (fp32) + aux_loss
    metrics: dict = field(default_factory=dict)  # extra scalars for the trainer's log ("ce_loss", "moe/…")
    aux_loss: torch.Tensor | None = None  # the sum of this forward's auxiliary losses (training mode), or None
    hidden: torch.Tensor | None = None  # with return_hidden=True: (B, T, d) last hidden states BEFORE the final
    #                                     norm (h^0 of multi-token prediction), every position even with last_only


@dataclass
class Inputs:
    """What every decoder layer needs besides the hidden states (``CausalLM.prepare``)."""

    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin (B, T, rope_dim/2)
    attn_mask: torch.Tensor | None  # (B, 1, T, start+T) bool, or None for plain causal attention
    start: int = 0  # absolute position of the first query (the cache's filled length)
    valid: torch.Tensor | None = None  # (B, T) bool real tokens, when padding or a cache is involved


class Backbone(nn.Module):
    """Embedding, the stack of decoder layers, and the final norm (HF's ``model.`` prefix)."""

    def __init__(self, config: ModelConfig, parts: Parts):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, parts) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """The language model. ``forward(input_ids, targets)`` → ModelOutput.

    ``parts`` (default ``choose_parts(config)``) holds every implementation it is built from. Initialisation
    draws from its own generator seeded by ``seed``: the same config and seed give the same weights, whatever
    else has used torch's global RNG, and whatever ``parts`` when they keep the config's parameter shapes (all
    but the pipeline runtime's expert-parallel shards, which it loads from the whole model)."""

    def __init__(self, config: ModelConfig, seed: int = 0, parts: Parts | None = None):
        super().__init__()
        parts = parts or choose_parts(config)
        self.config = config
        self.model = Backbone(config, parts)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # full precision, as in V3
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # multi-token prediction (V3 §2.2): D more depths sharing embed_tokens and lm_head (mtp.py)
        self.mtp = MultiTokenPrediction(config, parts) if config.num_nextn_predict_layers else None
        rope_dim = self.model.layers[0].self_attn.rope_dim
        self.rotary = parts.rotary(config, rope_dim)  # plain RoPE, or YaRN when config.rope_scaling is set
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

    def num_parameters(self, non_embedding: bool = False, mtp: bool = True) -> int:
        """Parameters held (each shared tensor once); ``mtp=False`` leaves the MTP modules out, as V3's 671B does."""
        n = sum(p.numel() for p in self.parameters())
        if not mtp and self.mtp is not None:
            n -= sum(p.numel() for p in self.mtp.parameters())
        if non_embedding:
            n -= self.model.embed_tokens.weight.numel()
            if not self.config.tie_word_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    # ------------------------------------------------------------------------------------
    def new_decode_state(self, batch: int, max_len: int, dtype=None, device=None, static: bool = False) -> DecodeState:
        """Empty caches for ``batch`` rows of up to ``max_len`` positions; ``static=True`` gives a
        ``StaticDecodeState`` (fixed shapes, what ``model.static_decode`` compiles a step over)."""
        p = self.lm_head.weight
        dtype, device = dtype or p.dtype, device or p.device
        caches = [layer.self_attn.new_cache(batch, max_len, dtype, device, static=static)
                  for layer in self.model.layers]
        return (StaticDecodeState if static else DecodeState)(caches, batch, max_len, device)

    # ------------------------------------------------------------------------------------
    def prepare(self, B: int, T: int, device, attention_mask: torch.Tensor | None = None,
                state: DecodeState | None = None) -> Inputs:
        """1. Positions (RoPE tables), the attention mask and the cache offset for a (B, T) chunk."""
        start = state.offset if state is not None else 0  # an int, or a 0-d tensor for a StaticDecodeState
        if state is None and T > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {T} tokens exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        if attention_mask is None and state is None:
            positions = torch.arange(T, device=device).expand(B, T)
            return Inputs(self.rotary(positions), None)  # plain causal attention: the fast path
        valid = (torch.ones(B, T, dtype=torch.bool, device=device) if attention_mask is None
                 else attention_mask.to(torch.bool))
        if state is not None:
            key_valid = state.mark(valid)  # (B, Tk): the keys this chunk attends over
            base = state.next_pos
        else:
            key_valid, base = valid, torch.zeros(B, dtype=torch.long, device=device)
        positions = (base[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        return Inputs(self.rotary(positions), _padded_causal_mask(key_valid, start, T), start, valid)

    def backbone(self, h: torch.Tensor, inputs: Inputs, state: DecodeState | None = None) -> torch.Tensor:
        """2. The decoder layers on hidden states h (B, T, d); with ``state``, their caches are written."""
        caches = state.caches if state is not None else [None] * len(self.model.layers)
        for layer, cache in zip(self.model.layers, caches):
            h = layer(h, inputs.rope, inputs.attn_mask, cache, inputs.start)  # (B, T, d)
        if state is not None:
            state.advance(inputs.start, inputs.valid)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """3. Final RMSNorm and the output projection: (B, T, d) → logits (B, T, V)."""
        return self.lm_head(self.model.norm(h))

    def auxiliary(self) -> tuple[torch.Tensor | None, dict]:
        """4. The auxiliary losses of the last forward and their metrics, from every module class that
        defines ``collect_auxiliary`` (DeepSeekMoE's balance losses today), summed."""
        owners: dict[type, list[nn.Module]] = {}
        for m in self.modules():
            if m is not self and hasattr(type(m), "collect_auxiliary"):
                owners.setdefault(type(m), []).append(m)
        total, metrics = None, {}
        for cls, members in owners.items():
            loss, m = cls.collect_auxiliary(members)
            metrics.update(m)
            if loss is not None:
                total = loss if total is None else total + loss
        return total, metrics

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        state: DecodeState | None = None,
        last_only: bool = False,
        return_hidden: bool = False,
    ) -> ModelOutput:
        """input_ids (B, T) int64. targets (B, T), -100 = ignore. attention_mask (B, T): 1 for real
        tokens (left padding only). state: continue a DecodeState (its caches are updated).
        last_only: compute logits for the last position only (generation). return_hidden: also return
        the backbone's output before the final norm in ``ModelOutput.hidden`` (what MTP drafts from)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, seq_len) tensor of token ids, got {shape}; "
                             f"add a batch dimension with x[None]")
        B, T = input_ids.shape
        if input_ids.dtype != torch.long:
            raise TypeError(f"input_ids must be int64 token ids, got {input_ids.dtype}")
        # the range check reads the ids back to the host; a compiled decode step (model/static_decode.py) skips it:
        # traced, it would break the graph and specialise what follows on the ids' values (a recompile per token)
        if input_ids.numel() and not torch.compiler.is_compiling() and (
                int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"input_ids must be in [0, {self.config.vocab_size}) (vocab_size), got ids in "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        if targets is not None and last_only:
            raise ValueError("targets need logits at every position; do not pass last_only=True")
        inputs = self.prepare(B, T, input_ids.device, attention_mask, state)
        h = self.backbone(self.model.embed_tokens(input_ids), inputs, state)  # (B, T, d)
        logits = self.head(h[:, -1:] if last_only else h)  # (B, T, V)
        if self.mtp is not None:  # MTP trains only; at inference the modules are simply not run
            self.mtp.losses = []
            if self.training and targets is not None:
                if attention_mask is not None or state is not None:
                    raise ValueError("multi-token prediction trains on unpadded batches without a decode state; "
                                     "pass targets (with -100 where a token must not count) and no attention_mask")
                self.mtp.forward_losses(h, input_ids, targets, self.model.embed_tokens, self.lm_head, self.prepare)
        aux, metrics = self.auxiliary()
        loss = None
        if targets is not None:
            loss = cross_entropy(logits, targets)
            if metrics:
                metrics["ce_loss"] = float(loss.detach())
            if aux is not None:
                loss = loss + aux
        return ModelOutput(logits=logits, loss=loss, metrics=metrics, aux_loss=aux,
                           hidden=h if return_hidden else None)


def with_config(model: CausalLM, **changes) -> CausalLM:
    """A new model built from ``model.config.replace(**changes)`` holding a copy of ``model``'s weights — how an
    implementation is switched (e.g. ``mla_impl="absorbed"`` for decoding, ``moe_impl="loop"`` for a reference
    run): through the config, never by patching a built model. The changes must keep every parameter's shape."""
    p = next(model.parameters())
    twin = CausalLM(model.config.replace(**changes)).to(device=p.device, dtype=p.dtype)
    twin.load_state_dict(model.state_dict())
    return twin.train(model.training)


def _padded_causal_mask(key_valid: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """(B, 1, T, start+T) bool: query i (absolute start+i) sees key j if j ≤ start+i and key j is a
    real token. A query always sees itself, so rows of pure padding never softmax over nothing."""
    Tk = key_valid.shape[1]
    q_abs = start + torch.arange(T, device=key_valid.device)[:, None]  # (T, 1); start may be a 0-d tensor
    k_idx = torch.arange(Tk, device=key_valid.device)[None, :]  # (1, Tk)
    mask = (k_idx <= q_abs) & key_valid[:, None, :]  # (B, T, Tk)
    mask |= k_idx == q_abs
    return mask[:, None]
