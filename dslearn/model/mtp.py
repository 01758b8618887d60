"""Multi-token prediction (DeepSeek-V3 §2.2): D extra modules, each predicting one token further ahead.

The main model's hidden state at position i predicts token t_{i+1}. MTP depth k (k = 1..D) predicts t_{i+1+k},
*sequentially*, keeping the complete causal chain: it combines what depth k−1 knew at position i with the
embedding of the token k steps ahead, runs one more transformer block, and predicts through the main model's
own output head:

    h'_i^k  = M_k [ RMSNorm(h_i^{k−1}) ; RMSNorm(Emb(t_{i+k})) ]        M_k ∈ R^{d×2d}         (V3 eq. 21)
    h_{1:T−k}^k = TRM_k(h'_{1:T−k}^k)                                      one block, causal        (eq. 22)
    P_{i+k+1}^k = OutHead(h_i^k)                                           shared head              (eq. 23)
    L_MTP^k = CE(P^k, t_{2+k : T+1})         L_MTP = (λ / D) · Σ_k L_MTP^k                     (eq. 24–25)

h^0 is the main model's last hidden state *before* its final norm (each depth normalises it itself: ``hnorm``).
Emb and the output projection are the main model's (one tensor each, not copies); each depth keeps its own
final RMSNorm (``shared_head.norm``), as DeepSeek's released checkpoints do. TRM_k is the same block type as
the main model's (MLA and DeepSeekMoE when the config says so), built by the same ``Parts``.

With our batches (x = t_{1:T} as input ids, y = t_{2:T+1} as targets) depth k reads Emb(x[:, k:]), predicts
y[:, k:], and runs over the first T−k positions. Only training forwards with targets compute it: at inference
the MTP modules are simply not run (V3 §2.2: "we can directly discard the MTP modules"), or they draft tokens
for self-speculative decoding (``dslearn.speculative``): then each depth decodes incrementally with a cache of
its own (``new_decode_state``), one chunk of positions at a time (``draft``), and predicts through ``logits``.

λ follows V3's schedule: ``mtp_loss_weight`` (0.3) for the first ``mtp_weight_switch_step`` optimizer steps,
then ``mtp_loss_weight_final`` (0.1). The module counts optimizer steps itself (``after_optimizer_step``), and
the training loop checkpoints that counter, so a resumed run continues the schedule exactly.

    paper (V3 §2.2)            code (names as DeepSeek's release stores layer L+k−1)
    ---------------            -----------------------------------------------------
    D                          num_nextn_predict_layers
    M_k                        mtp[k−1].eh_proj          (Linear 2d → d, input [hnorm(h); enorm(emb)])
    RMSNorm(h), RMSNorm(Emb)   mtp[k−1].hnorm, mtp[k−1].enorm
    TRM_k                      mtp[k−1].block            (a DecoderLayer, layer index L+k−1)
    OutHead                    mtp[k−1].shared_head.norm, then the main model's lm_head
    λ                          mtp_loss_weight, mtp_loss_weight_final, mtp_weight_switch_step
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..layers import RMSNorm, cross_entropy
from .block import DecoderLayer
from .parts import Parts
from .state import DecodeState, StaticDecodeState


class SharedHead(nn.Module):
    """The output head of one MTP depth: its own RMSNorm; the projection is the main model's ``lm_head``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPDepth(nn.Module):
    """One MTP module (depth k): ``hnorm``, ``enorm``, ``eh_proj``, one decoder ``block``, ``shared_head.norm``."""

    def __init__(self, config: ModelConfig, layer_idx: int, parts: Parts):
        super().__init__()
        d = config.hidden_size
        self.hnorm = RMSNorm(d, config.rms_norm_eps)
        self.enorm = RMSNorm(d, config.rms_norm_eps)
        self.eh_proj = parts.linear(2 * d, d, bias=False)
        self.block = DecoderLayer(config, layer_idx, parts)
        self.shared_head = SharedHead(config)

    def forward(self, h_prev: torch.Tensor, emb: torch.Tensor, rope, attn_mask=None, cache=None, start=0):
        """h_prev (B, T', d) depth k−1's states, emb (B, T', d) the embeddings of the tokens k ahead → (B, T', d)."""
        h = self.eh_proj(torch.cat([self.hnorm(h_prev), self.enorm(emb)], dim=-1))  # h'^k (B, T', d)
        return self.block(h, rope, attn_mask, cache, start)  # h^k


class MultiTokenPrediction(nn.ModuleList):
    """The D MTP depths (``mtp.{k−1}.*``), the λ schedule, and the auxiliary-loss protocol of CausalLM.

    After a training forward with targets, ``losses`` holds L_MTP^k for each depth; ``collect_auxiliary`` returns
    (λ/D)·Σ_k L_MTP^k and the per-depth losses as metrics."""

    STEP_COUNTERS = ("optimizer_steps",)  # plain ints the training loop checkpoints (see train/loop.py)

    def __init__(self, config: ModelConfig, parts: Parts):
        L = config.num_hidden_layers
        super().__init__(MTPDepth(config, L + j, parts) for j in range(config.num_nextn_predict_layers))
        self.config = config
        self.optimizer_steps = 0
        self.losses: list[torch.Tensor] = []

    @property
    def weight(self) -> float:
        """λ now: mtp_loss_weight until mtp_weight_switch_step optimizer steps, then mtp_loss_weight_final."""
        c = self.config
        switch = c.mtp_weight_switch_step
        return c.mtp_loss_weight if switch is None or self.optimizer_steps < switch else c.mtp_loss_weight_final

    def forward_losses(self, h0: torch.Tensor, input_ids: torch.Tensor, targets: torch.Tensor, embed: nn.Module,
                       head: nn.Module, prepare) -> None:
        """Run every depth on the main model's states h0 (B, T, d) and store L_MTP^k in ``losses``.
        ``embed``/``head`` are the main model's embedding and output projection; ``prepare(B, T', device)``
        gives the RoPE tables for T' positions."""
        B, T, _ = h0.shape
        self.losses = []
        h = h0
        for k, depth in enumerate(self, start=1):
            n = T - k  # positions that still have a token k ahead
            if n < 1:
                break
            inputs = prepare(B, n, h0.device)
            h = depth(h[:, :n], embed(input_ids[:, k:]), inputs.rope, inputs.attn_mask)  # h^k (B, n, d)
            logits = head(depth.shared_head.norm(h))  # (B, n, V): predicts t_{i+1+k}
            self.losses.append(cross_entropy(logits, targets[:, k:]))

    @staticmethod
    def collect_auxiliary(instances) -> tuple[torch.Tensor | None, dict]:
        """The auxiliary-loss protocol (model/transformer.py): (λ/D)·Σ_k L_MTP^k, and its metrics."""
        total, metrics = None, {}
        for m in instances:
            if not m.losses:
                continue
            for k, loss in enumerate(m.losses, start=1):
                metrics[f"mtp/loss{k}"] = float(loss.detach())
            weighted = m.weight / len(m) * sum(m.losses)
            metrics["mtp/lambda"] = m.weight
            metrics["mtp/loss"] = float(weighted.detach())
            total = weighted if total is None else total + weighted
        return total, metrics

    def after_optimizer_step(self) -> None:
        self.optimizer_steps += 1

    # --- decoding: the depths as drafters (dslearn/speculative.py) -------------------------------------------
    def new_decode_state(self, batch: int, max_len: int, dtype=None, device=None,
                         static: bool = False) -> list[DecodeState]:
        """One DecodeState per depth, holding that depth's block cache. Depth k's position i is the step that
        reads (h_i^{k−1}, Emb(t_{i+k})) and predicts t_{i+k+1}; its cache and positions are its own.
        ``static=True``: StaticDecodeStates (fixed shapes, what ``model.static_decode`` compiles a draft over)."""
        p = self[0].eh_proj.weight
        dtype, device = dtype or p.dtype, device or p.device
        kind = StaticDecodeState if static else DecodeState
        return [kind([depth.block.self_attn.new_cache(batch, max_len, dtype, device, static=static)], batch, max_len,
                     device) for depth in self]

    def draft(self, k: int, h_prev: torch.Tensor, emb: torch.Tensor, state: DecodeState, prepare) -> torch.Tensor:
        """Run depth k (1-based) on the next chunk of its positions, continuing ``state`` (its own DecodeState,
        whose cache it writes). h_prev (B, T', d): h^{k−1} at those positions (h^0 = the main model's states
        before the final norm); emb (B, T', d): Emb(t_{i+k}) for each. Returns h^k (B, T', d), exactly what
        ``forward_losses`` computes at those positions (RoPE positions and causal mask from ``prepare``)."""
        B, T, _ = h_prev.shape
        inputs = prepare(B, T, h_prev.device, state=state)
        h = self[k - 1](h_prev, emb, inputs.rope, inputs.attn_mask, state.caches[0], inputs.start)  # h^k (B, T', d)
        state.advance(inputs.start, inputs.valid)
        return h

    def logits(self, k: int, h: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """Depth k's prediction from its states h^k (…, d): its own final norm, then the shared ``head``."""
        return head(self[k - 1].shared_head.norm(h))
