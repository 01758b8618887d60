"""GRPO's objective (DeepSeekMath §4.1, DeepSeek-R1 §2.2.1) and the variants worth knowing.

For each prompt, sample G responses o_1..o_G from the old policy and score them with rewards r_i.
GRPO needs no value network: the group is its own baseline.

    advantage        A_i = (r_i − mean(r)) / std(r)          (every token of o_i gets A_i)
    ratio            ρ_{i,t} = π_θ(o_{i,t} | …) / π_old(o_{i,t} | …)
    clipped term     min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A)
    KL (k3)          D = π_ref/π_θ − log(π_ref/π_θ) − 1     per token, ≥ 0, unbiased for KL(π_θ‖π_ref)
    per-token loss   ℓ_{i,t} = −min(ρA, clip(ρ)A) + β·D

How the per-token losses become one number is where the variants differ:

    loss_type   aggregation                                        note
    "grpo"      mean over o_i's tokens, then mean over responses   the paper; favours short right answers and
                                                                   long wrong ones (1/|o_i| per response)
    "bnpo"      sum over all tokens / number of tokens             token-level (DAPO's choice)
    "dapo"      sum over all tokens / tokens in the whole batch    = bnpo on one process and one micro-batch
    "dr_grpo"   sum over all tokens / (responses · max length)     Dr. GRPO: no length bias; pair with scale_std=False

Dr. GRPO also drops the division by std(r) (``group_advantages(..., scale_std=False)``), DAPO clips
asymmetrically (ε_high > ε_low, "clip-higher"). A group whose rewards are all equal has A = 0 and gives
no gradient: ``group_advantages`` counts such groups. ``reinforce_loss`` is the plain REINFORCE with
the group mean as baseline, for comparison (no ratio, no clipping, no KL).

Everything here is computed in fp32; the log-ratio inside the KL is clamped to ±20 before ``exp``.

    paper                 code
    r_i, A_i              rewards, group_advantages(rewards)
    π_θ, π_old, π_ref     logp, old_logp, ref_logp (per-token log-probabilities of the sampled tokens)
    ε, β                  eps_low / eps_high, beta
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")


@dataclass
class GroupStats:
    advantages: torch.Tensor  # (n_groups·G,)
    zero_variance_groups: int  # groups whose rewards were all equal (no learning signal)
    n_groups: int


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4) -> GroupStats:
    """A_i = (r_i − mean of its group) / (std of its group + eps); rewards (n_groups·G,) in group order."""
    rewards = rewards.float()
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
                         f"got shape {tuple(rewards.shape)}")
    r = rewards.view(-1, group_size)  # (n_groups, G)
    centred = r - r.mean(1, keepdim=True)
    std = r.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
    adv = centred / (std + eps) if scale_std else centred
    zero = int((r.max(1).values == r.min(1).values).sum())
    return GroupStats(adv.flatten(), zero, r.shape[0])


def per_token_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator π_ref/π_θ − log(π_ref/π_θ) − 1, per token (fp32, log-ratio clamped to ±20)."""
    d = (ref_logp.float() - logp.float()).clamp(-20, 20)
    return torch.exp(d) - d - 1


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int | None,
               num_items_in_batch: float | None) -> torch.Tensor:
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dapo":
        n = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=torch.float32)
        return masked.sum() / n.clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        return masked.sum() / (per_token.shape[0] * max_completion_length)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None = None, beta: float = 0.0, eps_low: float = 0.2,
              eps_high: float | None = None, loss_type: str = "grpo", max_completion_length: int | None = None,
              num_items_in_batch: float | None = None, kl_bias_correction: bool = False) -> tuple[torch.Tensor, dict]:
    """The clipped GRPO loss (to minimise) and its diagnostics.

    logp, old_logp, ref_logp, mask: (B, T) per sampled token; advantages: (B,) or (B, T).
    kl_bias_correction: multiply the k3 term by ρ (DeepSeek-V3.2's unbiased KL gradient; TRL's default
    since it was added). False is DeepSeekMath's and R1's plain k3."""
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must have one shape (B, T)")
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp (the reference policy's log-probabilities)")
    eps_high = eps_low if eps_high is None else eps_high
    mask = mask.float()
    adv = advantages.float()
    adv = adv[:, None] if adv.dim() == 1 else adv  # (B, 1) or (B, T)
    ratio = torch.exp(logp.float() - old_logp.float())  # ρ
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)  # (B, T)
    kl = per_token_kl(logp, ref_logp) if beta != 0.0 else torch.zeros_like(per_token)
    per_token = per_token + beta * (kl * ratio if kl_bias_correction else kl)
    loss = _aggregate(per_token, mask, loss_type, max_completion_length, num_items_in_batch)
    n = mask.sum().clamp(min=1.0)
    with torch.no_grad():
        is_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        metrics = {"kl": float((kl * mask).sum() / n), "clip_fraction": float((is_clipped.float() * mask).sum() / n),
                   "ratio_mean": float((ratio * mask).sum() / n)}
    return loss, metrics


def reinforce_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the group baseline: −A_i · log π_θ(o_i), averaged per response then over responses."""
    mask = mask.float()
    adv = advantages.float()
    adv = adv[:, None] if adv.dim() == 1 else adv
    return ((-adv * logp.float() * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
