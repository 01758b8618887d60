"""Chapter 01's experiments: many small training runs, two at a time, cached; and M checked against torch.

``run_sweep`` trains every ``RunSpec`` (``dslearn.scaling.sweep``: a model shape, a compute budget C, a batch
size and a learning rate) to exactly its token budget D = C / M, with the LR schedule ending with the run,
and records the final validation bits per byte. Finished runs are appended to a JSON-lines file, one line
per run, keyed by the spec; re-running a sweep skips what is already there, so an interrupted sweep
resumes where it stopped. ``experiments/scaling/run_sweeps.py`` is its command line.

On a 2-core machine two single-thread workers beat one two-thread run (small matmuls parallelise badly),
so ``run_sweep`` uses a pool of ``workers`` processes with one torch thread each.

``measured_flops_per_token`` builds a model and counts the FLOPs of one real training step with torch's
``FlopCounterMode``: the check that ``dslearn.scaling.flops_per_token`` (M, pure arithmetic) is right.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..data import TokenStream, load_corpus
from ..model import CausalLM
from ..scaling.accounting import non_embedding_params, parameter_counts
from ..scaling.data_quality import degrade
from ..scaling.sweep import RunSpec, load_results
from ..train import DivergenceError, TrainConfig, Trainer


def run_one(spec: RunSpec, threads: int = 1) -> dict:
    """Train one spec to its token budget; return its row for the results file."""
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


def measured_flops_per_token(cfg: ModelConfig, seq_len: int | None = None, max_params: float = 5e7) -> dict:
    """FLOPs of one real training step (forward + backward) per token, counted by torch's own
    ``FlopCounterMode`` on a freshly built CausalLM, with attention on its plain-matmul path so the
    score and weighted-sum products are counted too. Returns {"total", "head", "non_embedding"}:
    the output head costs 6·n_vocab·d; what remains is what M predicts. Small configs only."""
    if parameter_counts(cfg)["total"] > max_params:
        raise ValueError(f"measuring FLOPs builds the model; this config has more than {max_params:.0e} parameters")
    l_seq = seq_len or cfg.max_position_embeddings
    model = CausalLM(cfg)
    x = torch.zeros(1, l_seq, dtype=torch.long)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, x).loss.backward()
    total = counter.get_total_flops() / l_seq
    head = 6 * cfg.vocab_size * cfg.hidden_size
    return {"total": total, "head": head, "non_embedding": total - head}
