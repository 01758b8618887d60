"""The ground floor: building blocks that every part of the model uses and that import nothing of dslearn.

    basic.py       RMSNorm, SwiGLU, RoPE tables and rotation, the one cross-entropy
    grouped.py     the grouped (expert-batched) matrix product of MoE layers
    weightgrad.py  the B/W backward split (DualPipe's WeightGradStore): SplitLinear, expert_matmul

attention/, moe/ and fp8/ build on these; model/ assembles them (docs/architecture.md).
"""

from .basic import IGNORE_INDEX, RMSNorm, RotaryEmbedding, SwiGLU, apply_rotary, cross_entropy
from .grouped import HAS_GROUPED_MM, expert_linear, grouped_matmul
from .weightgrad import SplitLinear, WeightGradStore, expert_matmul

__all__ = [
    "HAS_GROUPED_MM", "IGNORE_INDEX", "RMSNorm", "RotaryEmbedding", "SplitLinear", "SwiGLU", "WeightGradStore",
    "apply_rotary", "cross_entropy", "expert_linear", "expert_matmul", "grouped_matmul",
]
