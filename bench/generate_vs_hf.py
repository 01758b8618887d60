"""Greedy generation, tokens/s side by side in one run on the same weights: dslearn's compiled static decode
step, dslearn's eager cached path (the reference), and transformers' ``generate`` on the model loaded as
``LlamaForCausalLM`` — plus two limits measured in the same run:

- *matmul loop*: only the model's matrix products (every Linear of one decode step, ``F.linear`` on a
  (batch, d_in) input, nothing else) — what any implementation that multiplies by each weight once per step pays;
- *compute bound*: the same FLOPs per token at the rate of one large square matmul (the core's GEMM peak).

    python bench/generate_vs_hf.py                          # small preset, batch 1 and 16, 200 new tokens
    python bench/generate_vs_hf.py --preset tiny --batch-sizes 1

Every path must produce the same tokens (printed; float32, so a near-tie between two logits could in
principle flip one — the tests hold the paths together in float64). Rounds alternate between the paths so
load from other processes hits all alike; the median round is reported. Compilation happens before timing
(its wall time is printed). Goal (issue 18): compiled ≥ 3× eager and ≥ 2× transformers at batch 1, small preset.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dslearn.config import get_preset
from dslearn.export import hf_config
from dslearn.generate import generate
from dslearn.model import CausalLM

OUT = Path(__file__).resolve().parents[1] / "experiments" / "decode"


def hf_model(model):
    """The same weights as transformers' LlamaForCausalLM (the conversion tests/test_model.py checks)."""
    import transformers

    cfg = transformers.LlamaConfig.from_dict(hf_config(model.config))
    theirs = transformers.LlamaForCausalLM(cfg).eval()
    missing, unexpected = theirs.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    return theirs


def linear_weights(model) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]


def flops_per_token(model, context: int) -> int:
    """Forward FLOPs of one decode step per row: 2 per Linear weight, plus the attention scores and weighted sum
    over ``context`` keys (4·n_h·d_h per key and layer)."""
    c = model.config
    attention = 4 * c.num_hidden_layers * context * c.num_attention_heads * c.head_dim
    return 2 * sum(w.numel() for w in linear_weights(model)) + attention


@torch.no_grad()
def matmul_loop_seconds(model, batch: int, reps: int = 30) -> float:
    """Median seconds of one step's matrix products alone: F.linear with every weight once."""
    ws = linear_weights(model)
    xs = {w.shape[1]: torch.randn(batch, w.shape[1]) for w in ws}
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for w in ws:
            F.linear(xs[w.shape[1]], w)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def gemm_peak_flops(n: int = 512, reps: int = 10) -> float:
    """FLOP/s of an n×n×n fp32 matmul (median of reps): the core's compute-bound rate."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def run(preset: str, batch_sizes: list[int], prompt_len: int, new_tokens: int, reps: int) -> dict:
    model = CausalLM(get_preset(preset), seed=0).eval()
    theirs = hf_model(model)
    peak = gemm_peak_flops()
    rows = []
    for bs in batch_sizes:
        prompts = [[(7 * i + 3 * j + 1) % 256 for j in range(prompt_len)] for i in range(bs)]
        ids = torch.tensor(prompts)

        def ours(decode, prompts=prompts):
            return [g.tokens for g in generate(model, prompts, new_tokens, temperature=0.0, decode=decode)]

        def hf(ids=ids):
            with torch.no_grad():
                out = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
            return out[:, prompt_len:].tolist()

        paths = {"compiled": lambda: ours("compiled"), "eager": lambda: ours("eager"), "transformers": hf}
        t0 = time.perf_counter()
        ours("compiled")  # compile (prefill stays eager; the step graph for this batch and cache length)
        compile_s = time.perf_counter() - t0
        times = {k: [] for k in paths}
        tokens = {}
        for _ in range(reps):
            for k, f in paths.items():
                t0 = time.perf_counter()
                tokens[k] = f()
                times[k].append(time.perf_counter() - t0)
        tps = {k: bs * new_tokens / statistics.median(v) for k, v in times.items()}
        mm = matmul_loop_seconds(model, bs)
        fpt = flops_per_token(model, prompt_len + new_tokens // 2)
        row = {"batch": bs, "tokens_per_s": tps, "compile_s": compile_s,
               "same_tokens": {k: tokens[k] == tokens["eager"] for k in paths},
               "matmul_loop_tokens_per_s": bs / mm, "flops_per_token": fpt,
               "compute_bound_tokens_per_s": peak / fpt,
               "compiled_over_eager": tps["compiled"] / tps["eager"],
               "compiled_over_transformers": tps["compiled"] / tps["transformers"],
               "eager_over_transformers": tps["eager"] / tps["transformers"]}
        rows.append(row)
        print(f"batch {bs:>3}: compiled {tps['compiled']:8.0f} tok/s | eager {tps['eager']:7.0f} | transformers "
              f"{tps['transformers']:7.0f} | matmul loop {bs / mm:8.0f} | compute bound {peak / fpt:9.0f} "
              f"| same tokens {row['same_tokens']} | compile {compile_s:.0f} s", flush=True)
    return {"preset": preset, "parameters": model.num_parameters(), "prompt_len": prompt_len,
            "new_tokens": new_tokens, "reps": reps, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "gemm_peak_gflops": peak / 1e9, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on shared cores)")
    ap.add_argument("--out", type=Path, default=OUT / "generate_vs_hf.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.preset} preset, {args.threads} thread(s); the cores may be shared with other processes, so "
          "only the ratios within one run mean much\n")
    result = run(args.preset, args.batch_sizes, args.prompt_len, args.new_tokens, args.reps)
    print(f"\n{'batch':>5} {'compiled/eager':>15} {'compiled/HF':>12} {'eager/HF':>9} {'compiled/matmul loop':>21} "
          f"{'compiled/compute bound':>23}")
    for r in result["rows"]:
        t = r["tokens_per_s"]["compiled"]
        print(f"{r['batch']:>5} {r['compiled_over_eager']:>14.2f}× {r['compiled_over_transformers']:>11.2f}× "
              f"{r['eager_over_transformers']:>8.2f}× {t / r['matmul_loop_tokens_per_s']:>20.2f}× "
              f"{t / r['compute_bound_tokens_per_s']:>22.3f}×")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    first = result["rows"][0]
    if first["batch"] == 1 and args.preset == "small":
        ok = first["compiled_over_eager"] >= 3 and first["compiled_over_transformers"] >= 2
        print("goal (batch 1: ≥3× eager, ≥2× transformers):", "met" if ok else "MISSED")
    return 0 if all(all(r["same_tokens"].values()) for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
