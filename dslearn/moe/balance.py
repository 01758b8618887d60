"""Keeping experts evenly loaded without a loss (V3 §2.1.2), V2's token dropping, and load metrics.

**Aux-loss-free balancing (V3).** Auxiliary losses (losses.py) balance load but fight the language
loss: a larger α gives better balance and worse perplexity. V3 instead adds a bias b_i to each
expert's score *for selection only* (router.py) and, after every optimizer step, moves it against
the load that expert just saw:

    load_i = tokens routed to expert i over the step (all micro-batches)
    b_i ← b_i − γ   if load_i > mean load    (overloaded: chosen less next time)
    b_i ← b_i + γ   if load_i < mean load    (underloaded: chosen more)

γ = ``bias_update_speed`` (V3: 0.001, then 0 for the last 500B tokens: ``bias_update_until``). The
update runs under ``torch.no_grad`` on a buffer, only when the layer is in training mode; the
trainer calls ``after_optimizer_step()`` on every module that defines one.

**Token dropping (V2 §2.2.4).** With expert parallelism each device can take a bounded number of
tokens. V2 sets a *device-level* capacity, capacity_factor × (the mean assignments per device,
N·K_r/D), and drops the lowest-affinity overflow assignments of each device; tokens of about 10% of
the training sequences are exempt (never dropped). A dropped assignment contributes nothing: the
token still has its residual connection and the shared experts. V3 drops nothing.

**Metrics.** ``load_metrics`` returns what the trainer logs so plots show balance over training:

    tokens per expert, per group         load (E,), group_load (G,)
    MaxVio = max_i load_i / mean_i load_i − 1       (V3 §4.5.2; 0 = perfectly balanced)
    dropped assignments (count and share)
    routing entropy: mean per-token entropy of s'_{i,t} = s_{i,t}/Σ_j s_{j,t} (nats), and the
    entropy of the load distribution divided by log N_r (1 = uniform load)
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def update_bias(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """In place: b_i ← b_i − γ·sign(load_i − mean load). Returns the step taken (E,)."""
    load = load.float()
    step = -gamma * torch.sign(load - load.mean())  # (E,)
    bias.add_(step.to(bias.dtype))
    return step


def max_violation(load: torch.Tensor) -> float:
    """MaxVio = max load / mean load − 1 (0 when balanced; N_r/K_r − 1 at full collapse)."""
    load = load.float()
    mean = load.mean()
    return float(load.max() / mean - 1) if mean > 0 else 0.0


def routing_entropy(scores: torch.Tensor) -> float:
    """Mean over tokens of the entropy (nats) of the normalised affinities s'_{i,t}."""
    p = scores.detach().float()
    p = p / p.sum(dim=-1, keepdim=True)
    return float(-(p * p.clamp_min(1e-30).log()).sum(dim=-1).mean())


def load_entropy(load: torch.Tensor) -> float:
    """Entropy of the load distribution over experts divided by log N_r: 1 = uniform, 0 = one expert."""
    p = load.float() / load.sum().clamp_min(1)
    return float(-(p * p.clamp_min(1e-30).log()).sum() / math.log(len(load))) if len(load) > 1 else 1.0


@torch.no_grad()
def capacity_keep_mask(topk_idx: torch.Tensor, topk_weight: torch.Tensor, n_experts: int, n_group: int,
                       capacity_factor: float, exempt: torch.Tensor | None = None) -> torch.Tensor:
    """V2's device-level token dropping → keep (N, K) bool.

    Each device d takes at most C = ceil(capacity_factor · N·K/D) assignments; beyond that the
    lowest-affinity ones are dropped. ``exempt`` (N,) bool marks tokens that are never dropped
    (they are served first and still count against the capacity)."""
    N, K = topk_idx.shape
    capacity = math.ceil(capacity_factor * N * K / n_group)
    device = (topk_idx // (n_experts // n_group)).flatten()  # (N·K,)
    priority = topk_weight.detach().float().flatten()  # affinity decides who stays
    if exempt is not None:
        priority = torch.where(exempt[:, None].expand(N, K).flatten(), torch.inf, priority)
    order = priority.argsort(descending=True, stable=True)  # best first …
    order = order[device[order].argsort(stable=True)]  # … within each device
    counts = torch.bincount(device, minlength=n_group)  # (D,)
    starts = counts.cumsum(0) - counts  # (D,) first position of each device's block
    rank = torch.empty_like(order)
    rank[order] = torch.arange(N * K, device=order.device) - starts[device[order]]  # place within device
    keep = rank < capacity
    if exempt is not None:
        keep |= exempt[:, None].expand(N, K).flatten()
    return keep.view(N, K)


def exempt_tokens(batch: int, seq_len: int, fraction: float, device=None) -> torch.Tensor:
    """(B·T,) bool: all tokens of the first round(fraction·B) sequences of the batch (batches are
    shuffled, so "the first rows" is a random share of sequences, without hidden randomness)."""
    n = round(fraction * batch)
    rows = torch.arange(batch, device=device) < n  # (B,)
    return rows[:, None].expand(batch, seq_len).flatten()


def load_metrics(topk_idx: torch.Tensor, scores: torch.Tensor, n_experts: int, n_group: int,
                 keep: torch.Tensor | None = None) -> dict:
    """Scalars (floats) and per-expert/per-group loads for one MoE layer on one batch."""
    load = torch.bincount(topk_idx.flatten(), minlength=n_experts).float()  # (E,) tokens per expert
    group_load = load.view(n_group, -1).sum(dim=1)  # (G,)
    dropped = 0 if keep is None else int((~keep).sum())
    return {
        "load": load, "group_load": group_load,
        "maxvio": max_violation(load), "group_maxvio": max_violation(group_load),
        "dropped": dropped, "dropped_frac": dropped / topk_idx.numel(),
        "entropy": routing_entropy(scores), "load_entropy": load_entropy(load),
    }


def moe_layers(model: nn.Module) -> list[nn.Module]:
    """Every DeepSeekMoE layer inside ``model``, in order."""
    return [m for m in model.modules() if hasattr(m, "after_optimizer_step") and hasattr(m, "gate")]
