"""A CausalLM cut into pipeline stages: consecutive decoder layers, built from the model's own pieces.

``split_model(model, S)`` cuts the decoder layers into S groups, as evenly as possible. A stage runs the same
named pieces as ``CausalLM.forward`` (model/transformer.py): the first stage embeds the tokens, every stage
runs its layers with ``model.prepare``'s RoPE tables, and the last applies ``model.head`` and the one
cross-entropy (``layers.cross_entropy``). Nothing of the forward pass is re-implemented here.

The one thing a stage adds is how auxiliary losses reach the gradients: the loss is computed on the last
stage, but an MoE layer's balance loss arises on whichever stage holds the layer. ``AddAuxLoss`` (the device
DeepSeek's modeling code uses) makes y = x whose backward also gives the aux loss the gradient 1, so the loss
joins the backward pass where it arises, scaled like the training loss (``aux_scale``).

Multi-token prediction (V3 §2.2) runs on the last stage, after the head: its depths read the last layer's states,
the embeddings of the tokens ahead and the shared output head. The embedding belongs to the first stage, so the
last stage needs it on the same rank — V3 §3.2's placement, which DualPipe gives (rank 0 holds the first and the
last stage); the runtime refuses MTP under a schedule that puts them on different ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import cross_entropy
from ..model import CausalLM
from ..model.mtp import MultiTokenPrediction


class AddAuxLoss(torch.autograd.Function):
    """y = x, but the backward also gives ``aux`` the gradient 1: an MoE layer's balance loss joins the
    training loss without being passed down the pipeline."""

    @staticmethod
    def forward(ctx, x, aux):
        ctx.aux_dtype = aux.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, gy):
        return gy, torch.ones((), dtype=ctx.aux_dtype, device=gy.device)


class PipelineStage(nn.Module):
    """Consecutive layers of a CausalLM; the first stage embeds, the last applies the head and the loss."""

    def __init__(self, model: CausalLM, index: int, num_stages: int, layers: range):
        super().__init__()
        self.index, self.num_stages = index, num_stages
        self.is_first, self.is_last = index == 0, index == num_stages - 1
        self.model = [model]  # a list: the whole model is not a submodule of the stage (no parameter sharing)
        self.embed_tokens = model.model.embed_tokens if self.is_first else None
        self.layers = nn.ModuleList(model.model.layers[i] for i in layers)
        self.norm = model.model.norm if self.is_last else None
        self.lm_head = model.lm_head if self.is_last else None
        # MTP on the last stage; the embedding it shares is the first stage's (same rank: see the module's doc)
        self.mtp = model.mtp if self.is_last else None
        self.aux_scale = 1.0  # the runtime sets 1/(micro-batches · replicas), the loss's own scale
        self.aux_added = 0.0  # the scaled auxiliary losses (balance, MTP) the last forward added
        self.ce_loss = None  # the last stage's cross-entropy of the last forward (its loss minus MTP's part)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: token ids (B, T) at the first stage, else hidden states (B, T, d). The last stage returns
        the mean cross-entropy when given targets, else logits; with MTP it adds (λ/D)·Σ L_MTP^k and the MTP
        blocks' balance losses, for which it needs the micro-batch's ``input_ids``."""
        model = self.model[0]
        if self.is_first:
            x = self.embed_tokens(x)  # (B, T, d)
        B, T = x.shape[:2]
        inputs = model.prepare(B, T, x.device)  # RoPE tables; plain causal attention
        self.aux_added = 0.0
        for layer in self.layers:
            x = layer(x, inputs.rope, inputs.attn_mask, None, inputs.start)  # (B, T, d)
            aux = getattr(layer.mlp, "aux_loss", None)  # an MoE layer's balance loss (training only)
            if aux is not None:
                x = AddAuxLoss.apply(x, aux * self.aux_scale)
                self.aux_added += aux.item() * self.aux_scale
        if not self.is_last:
            return x
        logits = model.head(x)  # (B, T, V)
        if targets is None:
            return logits
        loss = cross_entropy(logits, targets)
        self.ce_loss = loss.item()
        if self.mtp is not None and self.training:
            if input_ids is None:
                raise ValueError("the last stage of a model with MTP needs the micro-batch's input_ids")
            self.mtp.forward_losses(x, input_ids, targets, model.model.embed_tokens, model.lm_head, model.prepare)
            mtp, _ = MultiTokenPrediction.collect_auxiliary([self.mtp])
            balance = [a for d in self.mtp if (a := getattr(d.block.mlp, "aux_loss", None)) is not None]
            aux = mtp + sum(balance) if balance else mtp
            loss = loss + aux  # the runtime scales the returned loss like aux_scale: 1/(micro-batches · replicas)
            self.aux_added += aux.item() * self.aux_scale
        return loss


def split_model(model: CausalLM, num_stages: int) -> list[PipelineStage]:
    """Cut the decoder layers into ``num_stages`` consecutive groups, as evenly as possible."""
    L = len(model.model.layers)
    if not 1 <= num_stages <= L:
        raise ValueError(f"cannot cut {L} decoder layers into {num_stages} stages (need 1 <= stages <= layers)")
    bounds = [round(i * L / num_stages) for i in range(num_stages + 1)]
    return [PipelineStage(model, s, num_stages, range(bounds[s], bounds[s + 1])) for s in range(num_stages)]


def stage_param_names(model: CausalLM, stage: PipelineStage) -> dict[str, nn.Parameter]:
    ids = {id(p) for p in stage.parameters()}
    return {n: p for n, p in model.named_parameters() if id(p) in ids}
