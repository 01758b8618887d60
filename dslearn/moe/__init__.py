"""DeepSeekMoE, from V2 to V3 (chapters 03–04).

    router.py     the gate: softmax/sigmoid affinities, greedy / device-limited / node-limited top-K,
                  V3's selection bias
    dispatch.py   running the routed experts: the per-expert loop (reference) and the sorted
                  grouped-matmul fast path
    experts.py    fine-grained routed experts + shared experts, Hugging Face layouts and rename table
    losses.py     V2's expert/device/communication balance losses, V3's sequence-wise loss
    balance.py    V3's aux-loss-free bias update, V2's token dropping, load metrics (MaxVio, …)
    layer.py      DeepSeekMoE, the layer the assembler (model/parts.py) puts into MoE configs
"""

from .balance import (
    capacity_keep_mask,
    load_metrics,
    max_violation,
    moe_layers,
    routing_entropy,
    update_bias,
)
from .dispatch import grouped_dispatch, loop_dispatch
from .experts import RoutedExperts, combinations, fine_grained, fuse_expert_weights, split_expert_weights
from .layer import DeepSeekMoE, collect_moe
from .losses import comm_balance_loss, device_balance_loss, expert_balance_loss, sequence_balance_loss
from .router import Gate, Routing, route

__all__ = [
    "DeepSeekMoE", "Gate", "Routing", "RoutedExperts", "capacity_keep_mask", "collect_moe", "combinations",
    "comm_balance_loss", "device_balance_loss", "expert_balance_loss", "fine_grained", "fuse_expert_weights",
    "grouped_dispatch", "load_metrics", "loop_dispatch", "max_violation", "moe_layers", "route",
    "routing_entropy", "sequence_balance_loss", "split_expert_weights", "update_bias",
]
