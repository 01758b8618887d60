"""Decode speed and KV-cache size of MHA, GQA, MQA, MLA-naive and MLA-absorbed at contexts 256…4096.

All variants share d_model, layers, heads, head dim and feed-forward (``attention_variants``): MLA uses
V2's ratios d_c = 4·d_h, d_h^R = d_h/2, so with 32 heads it caches 72 numbers per token per layer where
MHA caches 1,024. Every variant is timed in the same run, so the ratios compare like with like.

    python bench/attention_decode.py                      # full run, writes experiments/attention/bench_decode.*
    python bench/attention_decode.py --contexts 256 1024  # quicker

Goal (issue 4): absorbed MLA decodes ≥ 3× faster than naive MLA at 2048 tokens of context, with ≥ 10× less
cache than MHA of the same heads. The script checks both and exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import torch

from dslearn.attention.cache_accounting import attention_variants, cache_bytes
from dslearn.config import ModelConfig
from dslearn.model import CausalLM
from dslearn.studies.decode import measure_decode

OUT = Path(__file__).resolve().parents[1] / "experiments" / "attention"


def bench_config(max_context: int, steps: int) -> ModelConfig:
    return ModelConfig(vocab_size=256, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                       num_attention_heads=32, head_dim=16, max_position_embeddings=max_context + steps + 8)


def run(contexts: list[int], steps: int, batch: int, gqa_groups: int = 4) -> dict:
    base = bench_config(contexts[-1], steps)
    variants = attention_variants(base, gqa_groups=gqa_groups)
    runs = [("MHA", "MHA", None), ("GQA", "GQA", None), ("MQA", "MQA", None),
            ("MLA-naive", "MLA", "naive"), ("MLA-absorbed", "MLA", "absorbed")]
    points, params = [], {}
    for name, key, path in runs:
        cfg = variants[key]
        model = CausalLM(cfg, seed=0)
        params[name] = model.num_parameters(non_embedding=True)
        for p in measure_decode(model, name, contexts, steps=steps, batch=batch, path=path):
            assert p.cache_bytes == cache_bytes(cfg, p.context, torch.float32, batch)  # measured == accounted
            points.append(p.to_dict())
            print(f"{name:>13} ctx {p.context:5d}: {p.tokens_per_s:8.1f} tok/s  cache {p.cache_bytes / 2**20:7.2f} MiB",
                  flush=True)
    by = {(p["variant"], p["context"]): p for p in points}
    ratios = []
    for c in contexts:
        ratios.append({
            "context": c,
            "absorbed_over_naive_speed": by["MLA-absorbed", c]["tokens_per_s"] / by["MLA-naive", c]["tokens_per_s"],
            "absorbed_over_mha_speed": by["MLA-absorbed", c]["tokens_per_s"] / by["MHA", c]["tokens_per_s"],
            "mha_over_mla_cache": by["MHA", c]["cache_bytes"] / by["MLA-absorbed", c]["cache_bytes"],
            "gqa_over_mla_cache": by["GQA", c]["cache_bytes"] / by["MLA-absorbed", c]["cache_bytes"],
        })
    return {"config": base.to_dict(), "gqa_groups": gqa_groups, "batch": batch, "steps": steps,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "non_embedding_params": params, "points": points, "ratios": ratios}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--steps", type=int, default=64, help="timed decode steps per context (median step time)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on shared cores)")
    ap.add_argument("--out", type=Path, default=OUT, help="directory for bench_decode.json / .csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run(sorted(args.contexts), args.steps, args.batch)
    result["wall_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_decode.json").write_text(json.dumps(result, indent=1))
    with open(args.out / "bench_decode.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result["points"][0]))
        w.writeheader()
        w.writerows(result["points"])
    print(f"\n{'context':>8} {'absorbed/naive speed':>21} {'absorbed/MHA speed':>19} {'MHA/MLA cache':>14}")
    for r in result["ratios"]:
        print(f"{r['context']:8d} {r['absorbed_over_naive_speed']:21.2f} {r['absorbed_over_mha_speed']:19.2f} "
              f"{r['mha_over_mla_cache']:14.2f}")
    print(f"wall time {result['wall_s']:.0f} s; wrote {args.out / 'bench_decode.json'}")
    at = {r["context"]: r for r in result["ratios"]}
    if 2048 in at:
        ok = at[2048]["absorbed_over_naive_speed"] >= 3 and at[2048]["mha_over_mla_cache"] >= 10
        print("goal (≥3× faster than naive at 2048, ≥10× less cache than MHA):", "met" if ok else "MISSED")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
