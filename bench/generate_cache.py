"""Cached vs uncached generation: tokens/s side by side, in one run, on the same model.

    python bench/generate_cache.py [--preset tiny] [--new-tokens 200] [--reps 3]

Both paths produce the same tokens (checked here too); the cache turns each step's cost from a
pass over the whole sequence into a pass over one position per layer. Rounds alternate between
the two paths so machine noise hits both alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dslearn.config import get_preset
from dslearn.generate import generate
from dslearn.model import CausalLM


def timed(model, prompts, new_tokens, use_cache):
    t0 = time.perf_counter()
    out = generate(model, prompts, new_tokens, temperature=1.0, top_k=50,
                   generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    model = CausalLM(get_preset(args.preset)).eval()
    print(f"preset {args.preset}: {model.num_parameters():,} parameters, torch threads {torch.get_num_threads()}, "
          f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens per row\n")
    print(f"{'batch':>5} {'cached tok/s':>13} {'uncached tok/s':>15} {'speed-up':>9}  same tokens")
    for bs in args.batch_sizes:
        prompts = [[(7 * i + j) % 256 for j in range(args.prompt_len)] for i in range(bs)]
        times = {True: [], False: []}
        outs = {}
        for _ in range(args.reps):
            for use_cache in (True, False):
                t, outs[use_cache] = timed(model, prompts, args.new_tokens, use_cache)
                times[use_cache].append(t)
        same = [a.tokens for a in outs[True]] == [b.tokens for b in outs[False]]
        n = bs * args.new_tokens
        cached, uncached = n / statistics.median(times[True]), n / statistics.median(times[False])
        print(f"{bs:>5} {cached:>13,.0f} {uncached:>15,.0f} {cached / uncached:>8.1f}×  {same}")


if __name__ == "__main__":
    main()
