"""A sweep runner for miniature scaling studies: many small training runs, two at a time, cached.

Each run is a ``RunSpec``: a model shape, a compute budget C (FLOPs), a batch size and a learning rate.
The runner trains it to exactly its token budget D = C / M (M = non-embedding FLOPs/token of the shape,
``accounting.flops_per_token``), with the LR schedule ending with the run, and records the final
validation bits per byte. Finished runs are appended to a JSON-lines file, one line per run, keyed by
the spec; re-running a sweep skips what is already there, so an interrupted sweep resumes where it stopped.

On a 2-core machine two single-thread workers beat one two-thread run (small matmuls parallelise badly),
so ``run_sweep`` uses a pool of ``workers`` processes with one torch thread each.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import ModelConfig
from .accounting import flops_per_token, non_embedding_params

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
    from .laws import optimal_hyperparameters

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


def run_one(spec: RunSpec, threads: int = 1) -> dict:
    """Train one spec to its token budget; return its row for the results file."""
    from ..data import TokenStream, load_corpus
    from ..model import CausalLM
    from ..train import DivergenceError, TrainConfig, Trainer
    from .data_quality import degrade

    torch.set_num_threads(threads)
    corpus = load_corpus()
    train = corpus.train if spec.data == "clean" else degrade(corpus.train, seed=spec.seed)
    cfg = spec.config()
    model = CausalLM(cfg, seed=spec.seed)
    steps = spec.steps
    tcfg = TrainConfig(steps=steps, batch_size=spec.batch_size, seq_len=spec.seq_len, lr=spec.lr,
                       warmup_steps=max(1, steps // 20), schedule="cosine", min_lr_ratio=0.1, eval_every=0,
                       eval_windows=256, seed=spec.seed, progress=False)
    row = {**asdict(spec), "key": spec.key(), "M": spec.M, "tokens": steps * spec.batch_size * spec.seq_len,
           "steps": steps, "N_non_embedding": non_embedding_params(cfg), "d_model": cfg.hidden_size,
           "python": corpus.python_version, "corpus_sha256": corpus.sha256}
    t0 = time.perf_counter()
    try:
        result = Trainer(model, tcfg, TokenStream(train, "train"), TokenStream(corpus.val, "validation")).fit()
        row.update(val_loss=result.val[-1]["val_loss"], val_bpb=result.val[-1]["val_bpb"],
                   train_loss=sum(result.losses[-20:]) / len(result.losses[-20:]), diverged=False)
    except DivergenceError as e:
        row.update(val_loss=float("nan"), val_bpb=float("nan"), train_loss=float("nan"), diverged=True, error=str(e))
    row["wall_s"] = time.perf_counter() - t0
    return row


def load_results(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_sweep(specs: list[RunSpec], results_path: str | os.PathLike, workers: int = 2,
              progress: bool = True) -> list[dict]:
    """Run every spec not yet in results_path (JSON lines), ``workers`` at a time; return all rows for specs."""
    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = {row["key"]: row for row in load_results(results_path)}
    todo = [s for s in specs if s.key() not in done]
    todo.sort(key=lambda s: -s.budget)  # longest first: better packing on two workers
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="sweep", unit="run", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            rows = map(run_one, todo)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(workers)
            rows = pool.imap_unordered(run_one, todo)
        for row in rows:
            with open(results_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            done[row["key"]] = row
            bar.update(1)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
    return [done[s.key()] for s in specs]
