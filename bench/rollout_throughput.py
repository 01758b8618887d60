"""GRPO rollout throughput: tokens/s of ``dslearn.rl.rollout.sample`` at chapter 08's group sizes (16 prompts ×
G = 8, 64 new tokens, temperature 1, stop at </answer>) on chapter 08's base model, eager cached decoding vs the
compiled static decode step — side by side in one run, same seeds.

    python bench/rollout_throughput.py                # → experiments/decode/rollout_throughput.json
    python bench/rollout_throughput.py --rounds 1

Tokens/s counts the generated tokens (rows stop at </answer>, so a batch's length varies with the sample).
Rounds alternate between the paths; the median round is reported. Before timing, the compiled path compiles
the step graph of every batch shape a rollout can meet (128 rows, then each halving as rows finish, down to 1)
at the cache length the prompts need; that cost is timed separately — a GRPO run pays it once per process.
Same tokens: the count of rows whose sampled response is identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_model

from dslearn.config import ModelConfig
from dslearn.generate import CACHE_BUCKET
from dslearn.model import CausalLM
from dslearn.model.static_decode import decode_step
from dslearn.rl.base_model import carry_problems
from dslearn.rl.rollout import prompt_ids, sample

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "rl" / "base"


def base_model() -> CausalLM:
    model = CausalLM(ModelConfig.from_dict(json.loads((BASE / "config.json").read_text())))
    load_model(model, str(BASE / "model.safetensors"))
    return model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "decode" / "rollout_throughput.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s); the cores may be shared with other processes (only ratios within this run "
          f"mean much). {args.prompts} prompts × G={args.group_size}, ≤{args.max_new_tokens} new tokens\n")
    model = base_model()
    problems = carry_problems("train")[:args.prompts]

    def rollout(decode, seed):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        out = sample(model, problems, args.group_size, args.max_new_tokens, 1.0, g, decode=decode)
        return time.perf_counter() - t0, out

    t0 = time.perf_counter()
    longest = max(len(prompt_ids(p)) for p in problems)
    max_len = -(-(longest + args.max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET  # as generate() sizes it
    step, rows = decode_step(model), args.prompts * args.group_size
    while rows >= 1:  # every batch shape a rollout can shrink to
        step(torch.zeros(rows, 1, dtype=torch.long), model.new_decode_state(rows, max_len, static=True))
        rows //= 2
    compile_s = time.perf_counter() - t0
    times, tps, same = {"eager": [], "compiled": []}, {"eager": [], "compiled": []}, []
    for r in range(args.rounds):
        outs = {}
        for decode in ("eager", "compiled"):
            dt, outs[decode] = rollout(decode, r)
            times[decode].append(dt)
            tps[decode].append(sum(len(o) for o in outs[decode]) / dt)
        same.append(sum(a == b for a, b in zip(outs["eager"], outs["compiled"])))
    med = {k: statistics.median(v) for k, v in tps.items()}
    result = {"prompts": args.prompts, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
              "threads": args.threads, "torch": torch.__version__, "compile_all_shapes_s": compile_s,
              "tokens_per_s": med, "rollout_s": {k: statistics.median(v) for k, v in times.items()},
              "compiled_over_eager": med["compiled"] / med["eager"],
              "identical_rows": same, "rows": args.prompts * args.group_size}
    print(f"eager    {med['eager']:8.0f} tok/s  ({result['rollout_s']['eager']:.2f} s per rollout)")
    print(f"compiled {med['compiled']:8.0f} tok/s  ({result['rollout_s']['compiled']:.2f} s per rollout; "
          f"compiling every batch shape first took {compile_s:.0f} s)")
    print(f"compiled / eager: {result['compiled_over_eager']:.2f}×; identical rows per round: {same} of "
          f"{result['rows']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
