"""Every implementation choice of the model, made in one place from the config.

A ``ModelConfig`` field names each choice; this module is the one function that reads those fields and
turns them into the classes and functions the assembler plugs in:

    config field          values                      implementation (table)
    ------------          ------                      ----------------------
    attention_type        "mha" | "mla"               ATTENTION_CLASSES (attention/__init__.py)
    mla_impl              "naive" | "absorbed"        MultiHeadLatentAttention's path (attention/mla.py)
    rope_scaling          None | {"type": "yarn", …}  RotaryEmbedding | YarnRotaryEmbedding (attention/yarn.py)
    n_routed_experts,     dense | MoE per layer       SwiGLU | DeepSeekMoE (moe/layer.py)
      first_k_dense_replace
    moe_impl              "grouped" | "loop"          DISPATCH (moe/dispatch.py), via moe/experts.expert_dispatch
    linear_impl           "torch" | "fp8"             LINEARS below: nn.Linear | FP8Linear (routed experts too)
    fp8_backend           "auto" | "torch" | …        FP8Linear(backend=...), fp8_expert_linear(backend=...)

Two pieces depend on the *process* running the model, not on the model, so the caller passes them:
``weight_grads`` (a WeightGradStore: Linear layers and expert GEMMs split B from W, for zero-bubble
pipeline schedules) and ``routed_experts`` (a factory of expert-parallel experts whose dispatch and combine
are all-to-alls). Both go in at construction; nothing is patched into a built model.

To add an implementation: add its value to the config's name tuple (config.py), its entry to the table next
to the code, and nothing else — ``choose_parts`` picks it up. ``tests/test_parts.py`` checks that every
value the config accepts has an implementation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..attention import ATTENTION_CLASSES, build_rotary
from ..config import ConfigError, ModelConfig
from ..fp8.linear import FP8Linear
from ..layers import SwiGLU
from ..layers.weightgrad import SplitLinear, WeightGradStore
from ..moe import DeepSeekMoE, RoutedExperts

LINEARS = {"torch": nn.Linear, "fp8": FP8Linear}  # ModelConfig.linear_impl → the Linear class


@dataclass(frozen=True)
class Parts:
    """What the assembler builds a model from. Each field is a factory; ``choose_parts`` fills them."""

    linear: Callable[..., nn.Module]  # (in_features, out_features, bias=...) → a Linear layer
    attention: Callable[[ModelConfig, int], nn.Module]  # (config, layer_idx) → attention module
    rotary: Callable[[ModelConfig, int], nn.Module]  # (config, rope_dim) → RoPE / YaRN tables
    routed_experts: Callable[[ModelConfig], nn.Module]  # config → the routed experts of one MoE layer

    def ffn(self, config: ModelConfig, layer_idx: int) -> nn.Module:
        """Dense SwiGLU, or DeepSeekMoE for layers past ``first_k_dense_replace`` in MoE configs."""
        if config.is_moe_layer(layer_idx):
            return DeepSeekMoE(config, layer_idx, linear=self.linear, experts=self.routed_experts)
        return SwiGLU(config.hidden_size, config.intermediate_size, linear=self.linear)


def choose_parts(config: ModelConfig, *, weight_grads: WeightGradStore | None = None,
                 routed_experts: Callable[[ModelConfig], nn.Module] | None = None) -> Parts:
    """Resolve every implementation choice of ``config`` (the table in this module's docstring)."""
    for field, table in (("linear_impl", LINEARS), ("attention_type", ATTENTION_CLASSES)):
        value = getattr(config, field)
        if value not in table:
            raise ConfigError(f"{field}={value!r} has no implementation (choose one of {sorted(table)})")
    linear = LINEARS[config.linear_impl]
    if linear is FP8Linear:
        linear = functools.partial(FP8Linear, backend=config.fp8_backend, store=weight_grads)
    elif weight_grads is not None:
        linear = functools.partial(SplitLinear, store=weight_grads)
    attention_cls = ATTENTION_CLASSES[config.attention_type]
    return Parts(
        linear=linear,
        attention=lambda cfg, i: attention_cls(cfg, i, linear=linear),
        rotary=build_rotary,
        routed_experts=routed_experts or functools.partial(RoutedExperts.from_config, store=weight_grads),
    )
