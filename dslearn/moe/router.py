"""The gate: which routed experts each token visits, and with what weight (V2 §2.2, V3 §2.1.2).

Every routed expert i owns a centroid e_i (a row of ``gate.weight``). A token's *affinity* to it is

    V2:  s_{i,t} = Softmax_i(u_tᵀ e_i)                 (scoring_func="softmax")
    V3:  s_{i,t} = Sigmoid(u_tᵀ e_i)                   (scoring_func="sigmoid")

and the token goes to K_r experts. How the K_r are picked is ``topk_method``:

- ``greedy``: the K_r largest s_{i,t}.
- ``group_limited_greedy`` (V2 *device-limited routing*): the N_r experts sit on D devices
  (``n_group``) of N_r/D each. Score each device by its best expert, max_{i∈E_d} s_{i,t}, keep the
  top M devices (``topk_group``), then take the top K_r among their experts only. A token then
  talks to at most M devices, which bounds the all-to-all traffic.
- ``noaux_tc`` (V3 *aux-loss-free, node-limited routing*): each expert carries a bias b_i
  (``gate.e_score_correction_bias``) that is used for *selection only*:

      group score    = sum of the top-2 values of s_{i,t} + b_i inside the group
      selected set   = TopK_r(s_{i,t} + b_i) among the top-M groups
      g'_{i,t}       = s_{i,t} if i is selected else 0          (the un-biased affinity)
      g_{i,t}        = g'_{i,t} / Σ_j g'_{j,t}                   (norm_topk_prob=True)

  The bias steers *which* experts are chosen (balance.py nudges it after every step), never *how
  much* their output counts, so it needs no gradient and distorts nothing the loss sees.

Finally every weight is multiplied by ``routed_scaling_factor`` (V3: 2.5). Without
``norm_topk_prob`` (V2) the weights are the raw affinities g_{i,t} = s_{i,t}.

Paper symbol → code (names and layouts match Hugging Face's ``DeepseekV3TopkRouter``):

    e_i (N_r × d)                      Gate.weight              (E, d)
    b_i                                Gate.e_score_correction_bias (E,) buffer, fp32, no gradient
    u_tᵀ e_i                           Routing.logits           (N, E) fp32
    s_{i,t}                            Routing.scores           (N, E) fp32, with gradient
    TopK indices, g_{i,t}              Routing.topk_idx (N, K) long, Routing.topk_weight (N, K) fp32
    N_r, K_r, D (devices/nodes), M     n_routed_experts, num_experts_per_tok, n_group, topk_group

The gate runs in fp32 whatever the model's dtype: top-K is a discrete choice, and bf16 rounding
would flip near-ties between experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SCORING_FUNCS, TOPK_METHODS, ConfigError, ModelConfig


@dataclass
class Routing:
    logits: torch.Tensor  # (N, E) u_tᵀ e_i, fp32
    scores: torch.Tensor  # (N, E) affinities s_{i,t}, fp32, differentiable
    topk_idx: torch.Tensor  # (N, K) long, the selected experts (best first)
    topk_weight: torch.Tensor  # (N, K) fp32 gate values g_{i,t} × routed_scaling_factor, differentiable


def affinities(logits: torch.Tensor, scoring_func: str) -> torch.Tensor:
    """s_{i,t}: softmax over experts (V2) or an independent sigmoid per expert (V3)."""
    if scoring_func == "softmax":
        return logits.softmax(dim=-1)
    if scoring_func == "sigmoid":
        return logits.sigmoid()
    raise ConfigError(f"scoring_func must be one of {SCORING_FUNCS}, got {scoring_func!r}")


def group_mask(choice: torch.Tensor, n_group: int, topk_group: int, group_score: str) -> torch.Tensor:
    """(N, E) bool: True for experts inside each token's ``topk_group`` best groups.

    group_score="max" (V2: a device counts as good as its best expert) or "top2sum" (V3: the sum
    of the two best biased scores in the node)."""
    N, E = choice.shape
    grouped = choice.view(N, n_group, E // n_group)  # (N, G, E/G)
    if group_score == "max":
        score = grouped.amax(dim=-1)  # (N, G)
    elif group_score == "top2sum":
        score = grouped.topk(min(2, E // n_group), dim=-1).values.sum(dim=-1)  # (N, G)
    else:
        raise ValueError(f"group_score must be 'max' or 'top2sum', got {group_score!r}")
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(1, score.topk(topk_group, dim=-1).indices, True)  # (N, G)
    return keep[:, :, None].expand(N, n_group, E // n_group).reshape(N, E)


def route(logits: torch.Tensor, *, top_k: int, scoring_func: str = "softmax", topk_method: str = "greedy",
          n_group: int = 1, topk_group: int = 1, bias: torch.Tensor | None = None,
          norm_topk_prob: bool = False, routed_scaling_factor: float = 1.0) -> Routing:
    """Affinities, selection and gate weights for logits (N, E). Pure function: the tests and the
    notebooks call it directly on hand-made logits."""
    N, E = logits.shape
    if top_k > E:
        raise ConfigError(f"num_experts_per_tok={top_k} exceeds n_routed_experts={E}")
    if E % n_group:
        raise ConfigError(f"n_group={n_group} must divide n_routed_experts={E}")
    if topk_group > n_group:
        raise ConfigError(f"topk_group={topk_group} exceeds n_group={n_group}")
    if topk_method not in TOPK_METHODS:
        raise ConfigError(f"topk_method must be one of {TOPK_METHODS}, got {topk_method!r}")
    logits = logits.float()
    # 1. affinities s_{i,t}
    scores = affinities(logits, scoring_func)  # (N, E)
    # 2. selection: a discrete choice, outside autograd
    with torch.no_grad():
        choice = scores.detach()
        if topk_method == "noaux_tc" and bias is not None:
            choice = choice + bias.float()  # s_{i,t} + b_i, for choosing only
        if topk_method != "greedy" and topk_group < n_group:
            kind = "top2sum" if topk_method == "noaux_tc" else "max"
            choice = choice.masked_fill(~group_mask(choice, n_group, topk_group, kind), float("-inf"))
        topk_idx = choice.topk(top_k, dim=-1).indices  # (N, K), best first
    # 3. weights from the un-biased affinities
    weight = scores.gather(1, topk_idx)  # (N, K)
    if norm_topk_prob:
        weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
    return Routing(logits, scores, topk_idx, weight * routed_scaling_factor)


class Gate(nn.Module):
    """The router of one MoE layer: expert centroids ``weight`` (E, d) and V3's selection bias
    ``e_score_correction_bias`` (E,), a buffer (saved with the model, never given a gradient)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        E = config.n_routed_experts
        self.weight = nn.Parameter(torch.zeros(E, config.hidden_size))  # (E, d): e_i
        self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=torch.float32))  # b_i

    def forward(self, x: torch.Tensor) -> Routing:
        """x (N, d) → Routing."""
        c = self.config
        logits = F.linear(x.float(), self.weight.float())  # (N, E)
        return route(logits, top_k=c.num_experts_per_tok, scoring_func=c.scoring_func,
                     topk_method=c.topk_method, n_group=c.n_group, topk_group=c.topk_group,
                     bias=self.e_score_correction_bias, norm_topk_prob=c.norm_topk_prob,
                     routed_scaling_factor=c.routed_scaling_factor)
