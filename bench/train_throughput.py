"""Training throughput of the course presets: fp32 vs bf16 autocast, tokens/s side by side.

    python bench/train_throughput.py [--presets tiny small] [--steps 10] [--reps 3]

Each measurement runs the trainer's own step (forward, backward, clipping, AdamW) on real corpus
batches after two warm-up steps. Rounds alternate fp32 and bf16 so machine noise hits both alike;
the median round is reported.

MFU (``dslearn/train/mfu.py``, what every ``Trainer`` run logs): model FLOPs per token × tokens/s over the
matmul peak measured in this same process — fp32 rows against the fp32 peak, bf16 rows against the bf16 peak.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dslearn.config import get_preset
from dslearn.data import TokenStream, load_corpus
from dslearn.model import CausalLM
from dslearn.train import TrainConfig, Trainer
from dslearn.train.mfu import matmul_peak, mfu, model_flops_per_token


def tokens_per_s(preset: str, bf16: bool, steps: int, batch_size: int, train: TokenStream) -> float:
    cfg = get_preset(preset)
    trainer = Trainer(CausalLM(cfg), TrainConfig(steps=steps + 2, batch_size=batch_size, bf16=bf16,
                                                 warmup_steps=0, progress=False), train)
    for _ in range(2):  # warm-up: allocator, autocast caches
        trainer.loop.run_step(trainer.step_function)  # the step fit() runs (it moves the counter on)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.loop.run_step(trainer.step_function)
    return steps * batch_size * cfg.max_position_embeddings / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    train = TokenStream(load_corpus().train)
    peak = {False: matmul_peak("fp32"), True: matmul_peak("bf16")}  # once per process, as the Trainer measures it
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} sequences; "
          f"matmul peak {peak[False] / 1e9:.1f} GFLOP/s fp32, {peak[True] / 1e9:.1f} bf16\n")
    print(f"{'preset':>8} {'params':>10} {'seq':>5} {'fp32 tok/s':>11} {'bf16 tok/s':>11} {'bf16/fp32':>10} "
          f"{'fp32 MFU':>9} {'bf16 MFU':>9}")
    for preset in args.presets:
        runs = {False: [], True: []}
        for _ in range(args.reps):
            for bf16 in (False, True):
                runs[bf16].append(tokens_per_s(preset, bf16, args.steps, args.batch_size, train))
        fp32, bf16 = statistics.median(runs[False]), statistics.median(runs[True])
        cfg = get_preset(preset)
        n = CausalLM(cfg).num_parameters()
        flops = model_flops_per_token(cfg, cfg.max_position_embeddings)
        print(f"{preset:>8} {n:>10,} {cfg.max_position_embeddings:>5} {fp32:>11,.0f} {bf16:>11,.0f} "
              f"{bf16 / fp32:>9.2f}× {mfu(flops, fp32, peak[False]):>9.1%} {mfu(flops, bf16, peak[True]):>9.1%}")


if __name__ == "__main__":
    main()
