"""Designing a miniature scaling sweep: run specs, IsoFLOP grids, the laws' hyperparameters, the results file.

Each run is a ``RunSpec``: a model shape, a compute budget C (FLOPs), a batch size and a learning rate.
Its token budget is D = C / M (M = non-embedding FLOPs/token of the shape, ``accounting.flops_per_token``),
so its step count follows from the spec alone. ``isoflop_grid`` lays out IsoFLOP profiles (model sizes
spaced evenly in log M around a centre, at each budget), ``with_law_hyperparameters`` sets batch size and
LR from DeepSeek-LLM's laws, and ``load_results`` reads a sweep's results file (JSON lines, one row per
run, keyed by ``RunSpec.key()``).

Training the specs is an experiment, not part of the idea: ``dslearn.studies.scaling.run_sweep`` trains
each spec to its budget and appends its row to the results file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..config import ModelConfig
from .accounting import flops_per_token
from .laws import optimal_hyperparameters

MIN_STEPS = 300  # fewer optimizer steps than this and a run's loss says little about its shape


@dataclass(frozen=True)
class RunSpec:
    budget: float  # C, FLOPs
    hidden_size: int  # d_model
    num_hidden_layers: int = 2
    head_dim: int = 8
    seq_len: int = 128
    batch_size: int = 8  # sequences per step
    lr: float = 3e-3
    data: str = "clean"  # "clean" or "degraded" (see data_quality.py)
    seed: int = 0

    def config(self) -> ModelConfig:
        d = self.hidden_size
        if d % self.head_dim:
            raise ValueError(f"hidden_size={d} must be a multiple of head_dim={self.head_dim}")
        ffn = max(16, round(8 * d / 3 / 16) * 16)  # the standard 8/3·d SwiGLU width, a multiple of 16
        return ModelConfig(vocab_size=256, hidden_size=d, intermediate_size=ffn,
                           num_hidden_layers=self.num_hidden_layers, num_attention_heads=d // self.head_dim,
                           max_position_embeddings=self.seq_len)

    @property
    def M(self) -> int:
        return flops_per_token(self.config(), self.seq_len)

    @property
    def tokens(self) -> int:
        return int(self.budget / self.M)

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch_size * self.seq_len))

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def width_for(M_target: float, n_layer: int, seq_len: int, multiple: int = 16) -> int:
    """The d_model (a multiple of ``multiple``) whose closed-form M = 72·L·d² + 12·L·d·l is nearest M_target."""
    if M_target <= 0:
        raise ValueError(f"M_target must be positive, got {M_target}")
    d = (-12 * n_layer * seq_len + math.sqrt((12 * n_layer * seq_len) ** 2 + 4 * 72 * n_layer * M_target)) / (
        2 * 72 * n_layer)
    return max(multiple, round(d / multiple) * multiple)


def with_law_hyperparameters(spec: RunSpec, lr_scale: float = 1.0, batch_scale: float = 1.0) -> RunSpec:
    """Batch size and LR from DeepSeek-LLM's laws at the spec's budget (optionally scaled, for grids).

    The batch is capped so that the run still gets ``MIN_STEPS`` optimizer steps; below 4 sequences it
    is not lowered further (and the run reports its step count)."""
    hp = optimal_hyperparameters(spec.budget, spec.seq_len)
    batch = round(hp["batch_sequences"] * batch_scale)
    cap = spec.tokens // (MIN_STEPS * spec.seq_len)
    return replace(spec, batch_size=max(4, min(batch, cap)), lr=hp["lr"] * lr_scale)


def isoflop_grid(budgets, M_center, n_sizes: int = 5, spread: float = 4.0, **spec_kwargs) -> list[RunSpec]:
    """For each budget C, ``n_sizes`` distinct widths whose M sit as close as possible to targets spaced
    evenly in log M from M_center(C)/spread to M_center(C)·spread (widths are multiples of head_dim)."""
    if n_sizes < 3:
        raise ValueError(f"an IsoFLOP profile needs at least 3 sizes, got {n_sizes}")
    base = RunSpec(budget=1.0, hidden_size=8, **spec_kwargs)
    step = base.head_dim
    candidates = {d: replace(base, hidden_size=d).M for d in range(step, 64 * step + 1, step)}
    specs = []
    for C in budgets:
        if not C > 0:
            raise ValueError(f"budgets must be positive FLOP counts, got {C}")
        targets = [math.log(M_center(C) * spread ** (k / (n_sizes - 1) * 2 - 1)) for k in range(n_sizes)]
        widths: list[int] = []
        for t in targets:  # nearest unused width in log M
            d = min((d for d in candidates if d not in widths), key=lambda d: abs(math.log(candidates[d]) - t))
            widths.append(d)
        specs += [replace(base, budget=C, hidden_size=d) for d in sorted(widths)]
    return specs


def load_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a results file (JSON lines); [] when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
