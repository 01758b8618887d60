"""The DeepSeekMoE feed-forward layer: gate → (drop) → routed experts + shared experts, plus balance.

    h'_t = u_t + Σ_{i≤N_s} FFN_i^(s)(u_t) + Σ_{i≤N_r} g_{i,t} FFN_i^(r)(u_t)     (V2 §2.2.1, V3 §2.1.2)

The residual u_t is added by the decoder layer; this module returns the two sums. Which paper's
routing it runs is set by the config (router.py): V2 = softmax + ``group_limited_greedy`` + the
three auxiliary losses (α1..α3) + ``capacity_factor`` token dropping; V3 = sigmoid + ``noaux_tc`` +
``norm_topk_prob`` + ``routed_scaling_factor`` + the bias update (γ) + the sequence-wise loss (α).

After each forward the layer leaves behind, for ``CausalLM`` to collect (``collect_auxiliary``, the
protocol every module that owns an auxiliary loss follows — docs/architecture.md):

    aux_loss   the weighted sum of the enabled balance losses (a tensor with gradient), or None
               — computed only in training mode, so validation losses stay pure cross-entropy
    stats      load metrics of this batch (balance.load_metrics: load, MaxVio, dropped, entropy, …)

The routed experts are a module given at construction (``experts``): by default ``RoutedExperts`` with the
dispatch the config asks for (``moe_impl``, ``linear_impl``); the pipeline runtime passes expert-parallel
ones (parallel/expert_parallel.py) whose dispatch and combine are all-to-alls. Everything else — gate,
dropping, shared experts, balance — is this one class in every setting.

Names match Hugging Face ``DeepseekV3MoE``: ``gate.weight``, ``gate.e_score_correction_bias``,
``experts.gate_up_proj``, ``experts.down_proj``, ``shared_experts.{gate,up,down}_proj.weight``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..layers import SwiGLU
from . import losses
from .balance import capacity_keep_mask, exempt_tokens, load_metrics, update_bias
from .experts import RoutedExperts
from .router import Gate


def balance_loss(c: ModelConfig, r, B: int, T: int) -> torch.Tensor | None:
    """The weighted sum of the balance losses the config enables, for routing ``r`` of B·T tokens (or None)."""
    terms = []
    if c.aux_loss_alpha:
        terms.append(c.aux_loss_alpha * losses.expert_balance_loss(r.scores, r.topk_idx))
    if c.device_aux_loss_alpha:
        terms.append(c.device_aux_loss_alpha * losses.device_balance_loss(r.scores, r.topk_idx, c.n_group))
    if c.comm_aux_loss_alpha:
        terms.append(c.comm_aux_loss_alpha * losses.comm_balance_loss(r.scores, r.topk_idx, c.n_group,
                                                                      c.topk_group))
    if c.seq_aux_loss_alpha:
        E, K = r.scores.shape[1], r.topk_idx.shape[1]
        terms.append(c.seq_aux_loss_alpha * losses.sequence_balance_loss(
            r.scores.view(B, T, E), r.topk_idx.view(B, T, K)))
    return sum(terms) if terms else None


class DeepSeekMoE(nn.Module):
    STEP_COUNTERS = ("bias_updates",)  # plain ints the training loop checkpoints (train/loop.py)

    def __init__(self, config: ModelConfig, layer_idx: int = 0, linear=nn.Linear, experts=None):
        """``linear``: the shared experts' Linear class; ``experts``: a factory ``experts(config) -> module`` for
        the routed experts (default ``RoutedExperts.from_config``)."""
        super().__init__()
        c = self.config = config
        self.layer_idx = layer_idx
        self.gate = Gate(config)
        self.experts = (experts or RoutedExperts.from_config)(config)
        self.shared_experts = (SwiGLU(c.hidden_size, c.n_shared_experts * c.moe_intermediate_size, linear=linear)
                               if c.n_shared_experts else None)
        self.bias_updates = 0  # optimizer steps that updated the bias so far
        self.register_buffer("step_load", torch.zeros(c.n_routed_experts), persistent=False)  # (E,) this step
        self.aux_loss: torch.Tensor | None = None
        self.stats: dict = {}
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        std = self.config.initializer_range
        for p in self.parameters():
            nn.init.normal_(p, 0.0, std, generator=generator)

    # ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) → shared + routed outputs (B, T, d)."""
        c = self.config
        B, T, d = x.shape
        flat = x.reshape(B * T, d)  # (N, d), N = B·T tokens
        # 1. gate: affinities s, chosen experts, weights g
        r = self.gate(flat)  # scores (N, E), topk_idx/topk_weight (N, K)
        # 2. V2 token dropping (training only): a device-level capacity
        keep = None
        if self.training and c.capacity_factor is not None:
            exempt = exempt_tokens(B, T, c.drop_exempt_fraction, x.device) if c.drop_exempt_fraction else None
            keep = capacity_keep_mask(r.topk_idx, r.topk_weight, c.n_routed_experts, c.n_group,
                                      c.capacity_factor, exempt)  # (N, K)
        # 3. routed experts (grouped dispatch or the reference loop) + shared experts
        out = self.experts(flat, r.topk_idx, r.topk_weight, keep).view(B, T, d)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)  # (B, T, d)
        # 4. balance: auxiliary losses (training only), load for the bias update, metrics
        self.aux_loss = balance_loss(c, r, B, T) if self.training else None
        if self.training:
            self.step_load += torch.bincount(r.topk_idx.flatten(), minlength=c.n_routed_experts).float()
        self.stats = load_metrics(r.topk_idx, r.scores, c.n_routed_experts, c.n_group, keep)
        return out

    @staticmethod
    def collect_auxiliary(layers) -> tuple[torch.Tensor | None, dict]:
        """The auxiliary-loss protocol (model/transformer.py): every DeepSeekMoE of a forward, in order →
        (their summed balance losses or None, their metrics). See ``collect_moe``."""
        return collect_moe(layers)

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """V3's aux-loss-free update, called by the trainer after every optimizer step."""
        if self.step_load.sum() == 0:  # no training forward since the last step
            return
        until = self.config.bias_update_until
        gamma = self.config.bias_update_speed  # γ, then 0 after bias_update_until steps (V3's schedule)
        if self.config.topk_method == "noaux_tc" and gamma > 0 and (until is None or self.bias_updates < until):
            update_bias(self.gate.e_score_correction_bias, self.step_load, gamma)
            self.bias_updates += 1
        self.step_load.zero_()


def collect_moe(layers) -> tuple[torch.Tensor | None, dict]:
    """Sum the aux losses of every MoE layer in ``layers`` and flatten their stats into scalars for the
    trainer's log: ``moe/maxvio`` (mean over layers), ``moe/l{i}/maxvio``, ``moe/l{i}/expert{j}`` and
    ``moe/l{i}/group{g}`` (shares of assignments per expert and per device/node group), ``moe/dropped_frac``,
    ``moe/entropy``, ``moe/aux_loss``, …"""
    aux, metrics, per_layer = None, {}, []
    for m in layers:
        if not isinstance(m, DeepSeekMoE) or not m.stats:
            continue
        if m.aux_loss is not None:
            aux = m.aux_loss if aux is None else aux + m.aux_loss
        s, i = m.stats, m.layer_idx
        per_layer.append(s)
        for key in ("maxvio", "group_maxvio", "dropped_frac", "entropy", "load_entropy"):
            metrics[f"moe/l{i}/{key}"] = s[key]
        total = float(s["load"].sum()) or 1.0
        for j, n in enumerate(s["load"].tolist()):
            metrics[f"moe/l{i}/expert{j}"] = n / total
        for g, n in enumerate(s["load"].view(m.config.n_group, -1).sum(1).tolist()):  # per device (V2) / node (V3)
            metrics[f"moe/l{i}/group{g}"] = n / total
    if per_layer:
        n = len(per_layer)
        for key in ("maxvio", "group_maxvio", "dropped_frac", "entropy", "load_entropy"):
            metrics[f"moe/{key}"] = sum(s[key] for s in per_layer) / n
        metrics["moe/dropped"] = sum(s["dropped"] for s in per_layer)
        if aux is not None:
            metrics["moe/aux_loss"] = float(aux.detach())
    return aux, metrics
