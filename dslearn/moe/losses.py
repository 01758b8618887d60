"""Auxiliary balance losses: V2's three (§2.2.3) and V3's sequence-wise one (§2.1.2).

A router trained only on the language-model loss tends to *collapse*: a few experts get slightly
better early, receive more tokens, get better still, and the rest starve. The cure in V2 is to add
small losses that are minimised when load is uniform. Each is Σ f·P: f counts where tokens *went*
(a hard, non-differentiable frequency, scaled so that perfect balance gives f = 1) and P is the mean
affinity (soft, differentiable), so the gradient pushes affinity away from over-used experts.

For T tokens, N_r routed experts, K_r chosen per token, D devices (groups E_1..E_D), M devices per token:

    expert level         L_ExpBal  = α1 Σ_i f_i P_i,     f_i = N_r/(K_r T) Σ_t 1(t selects i),  P_i = (1/T) Σ_t s_{i,t}
    device level         L_DevBal  = α2 Σ_d f'_d P'_d,   f'_d = mean_{i∈E_d} f_i,              P'_d = Σ_{i∈E_d} P_i
    communication        L_CommBal = α3 Σ_d f''_d P''_d, f''_d = D/(M T) Σ_t 1(t sent to d),   P''_d = Σ_{i∈E_d} P_i

V2 used α1 = 0.003, α2 = 0.05, α3 = 0.02. With softmax affinities (Σ_i P_i = 1) and perfect
balance (every f = 1) each of the three sums equals exactly 1; collapse onto one expert pushes the
expert-level sum towards N_r/K_r.

V3 drops the batch-wide expert loss for its bias trick (balance.py) and keeps only a tiny
*sequence-wise* loss so that no single sequence is badly skewed:

    L_Bal = α Σ_i f_i P_i,  f_i = N_r/(K_r T) Σ_t 1(s_{i,t} ∈ TopK),  s'_{i,t} = s_{i,t} / Σ_j s_{j,t},
    P_i = (1/T) Σ_t s'_{i,t},   T = the tokens of ONE sequence;  α = 1e-4; averaged over sequences.

Paper symbol → code: s_{i,t} → ``scores`` (N, E) or (B, T, E); TopK → ``topk_idx``; f_i → ``f``;
P_i → ``P``; D → ``n_group``; M → ``topk_group``. The functions return Σ f·P *without* α; the
layer multiplies by the config's α.
"""

from __future__ import annotations

import torch


def selection_frequency(topk_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """f_i = N_r/(K_r T) · (times expert i was selected), for topk_idx (T, K). 1 everywhere = balanced."""
    T, K = topk_idx.shape
    counts = torch.bincount(topk_idx.flatten(), minlength=n_experts).float()  # (E,)
    return counts * n_experts / (K * T)


def expert_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor) -> torch.Tensor:
    """Σ_i f_i P_i over scores (T, E), topk_idx (T, K)."""
    f = selection_frequency(topk_idx, scores.shape[1])  # (E,) no gradient
    P = scores.mean(dim=0)  # (E,)
    return (f * P).sum()


def device_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, n_group: int) -> torch.Tensor:
    """Σ_d f'_d P'_d with f'_d the mean f over the device's experts and P'_d the sum of their P."""
    E = scores.shape[1]
    f_dev = selection_frequency(topk_idx, E).view(n_group, E // n_group).mean(dim=1)  # (D,)
    P_dev = scores.mean(dim=0).view(n_group, E // n_group).sum(dim=1)  # (D,)
    return (f_dev * P_dev).sum()


def device_frequency(topk_idx: torch.Tensor, n_experts: int, n_group: int, topk_group: int) -> torch.Tensor:
    """f''_d = D/(M T) · (tokens that send at least one assignment to device d)."""
    T = topk_idx.shape[0]
    device = topk_idx // (n_experts // n_group)  # (T, K) the device of each chosen expert
    sent = torch.zeros(T, n_group, device=topk_idx.device).scatter_(1, device, 1.0)  # (T, D) 0/1
    return sent.sum(dim=0) * n_group / (topk_group * T)  # (D,)


def comm_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """Σ_d f''_d P''_d: balances how many tokens each device *receives*, not expert by expert."""
    E = scores.shape[1]
    f = device_frequency(topk_idx, E, n_group, topk_group)  # (D,)
    P = scores.mean(dim=0).view(n_group, E // n_group).sum(dim=1)  # (D,)
    return (f * P).sum()


def sequence_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor) -> torch.Tensor:
    """V3's Σ_i f_i P_i per sequence, averaged over sequences: scores (B, T, E), topk_idx (B, T, K)."""
    B, T, E = scores.shape
    K = topk_idx.shape[-1]
    counts = torch.zeros(B, E, device=scores.device).scatter_add_(
        1, topk_idx.reshape(B, T * K), torch.ones(B, T * K, device=scores.device))  # (B, E)
    f = counts * E / (K * T)  # (B, E)
    P = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)  # (B, E) mean of s'
    return (f * P).sum(dim=1).mean()
