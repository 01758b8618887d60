"""Chapters 03–04 experiment: load balancing and expert granularity at one token budget.

Small MoE language models (d_model 64, 3 layers: 1 dense + 2 DeepSeekMoE, byte tokens, seq 128)
train on the embedded standard-library corpus with the same batches, steps, schedule and seed; only
the MoE layer changes:

    none         softmax, greedy top-K, no balancing at all                 (a) routing collapse?
    v2_aux       softmax, device-limited (4 devices, M=2), α1/α2/α3 = 0.003/0.05/0.02,
                 device capacity factor 1.0 with 10% of sequences exempt    (b) V2's recipe
    v3_none      sigmoid, node-limited, bias frozen at 0, no loss           (control for c)
    v3_bias      sigmoid, node-limited, aux-loss-free bias γ, seq-wise α = 1e-4   (c) V3's recipe
    coarse_top2  like v3_bias but 8 coarse experts (width 4×) top-2, no shared expert  (d)

All fine-grained runs use N_r = 32 experts of width 32 with K_r = 7 plus one shared expert; the
coarse run uses 8 experts of width 128 with K = 2: activated expert parameters are equal
((7+1)·32 = 2·128 per token); total expert parameters differ by one expert (33·32 vs 8·128).
γ is 0.01 instead of V3's 0.001: a 600-step run must move the bias as far as V3's long run does.

    python experiments/moe/train_balance.py              # ≈ 5–7 min on 2 shared cores
    python experiments/moe/train_balance.py --steps 40 --out /tmp/quick   # smoke run

Writes ``train_balance.json`` (per run: validation bits per byte, MaxVio over training, final expert
loads, dropped share, tokens/s) and ``train_balance.csv`` (the summary table) next to this file.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SEQ, BATCH, LR = 128, 16, 3e-3
BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=SEQ, first_k_dense_replace=1, n_group=4, topk_group=2)
FINE = dict(n_routed_experts=32, num_experts_per_tok=7, moe_intermediate_size=32, n_shared_experts=1)
COARSE = dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128, n_shared_experts=0)
SOFTMAX = dict(scoring_func="softmax", norm_topk_prob=False)
SIGMOID = dict(scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True, routed_scaling_factor=2.5)
V3_BAL = dict(bias_update_speed=0.01, seq_aux_loss_alpha=1e-4)


def specs() -> list[dict]:
    return [
        dict(name="none", cfg=FINE | SOFTMAX | dict(topk_method="greedy")),
        dict(name="v2_aux", cfg=FINE | SOFTMAX | dict(topk_method="group_limited_greedy", aux_loss_alpha=0.003,
                                                      device_aux_loss_alpha=0.05, comm_aux_loss_alpha=0.02,
                                                      capacity_factor=1.0, drop_exempt_fraction=0.1)),
        dict(name="v3_none", cfg=FINE | SIGMOID),
        dict(name="v3_bias", cfg=FINE | SIGMOID | V3_BAL),
        dict(name="coarse_top2", cfg=COARSE | SIGMOID | V3_BAL),
    ]


def run_one(spec: dict, steps: int, eval_windows: int) -> dict:
    torch.set_num_threads(1)  # two 1-thread workers beat one 2-thread run on shared cores
    from dslearn.config import ModelConfig
    from dslearn.data import TokenStream, load_corpus
    from dslearn.model import CausalLM
    from dslearn.scaling.accounting import ffn_params
    from dslearn.train import TrainConfig, Trainer, read_metrics

    corpus = load_corpus()
    cfg = ModelConfig(**(BASE | spec["cfg"]))
    model = CausalLM(cfg, seed=0)
    tc = TrainConfig(steps=steps, batch_size=BATCH, seq_len=SEQ, lr=LR, warmup_steps=20, seed=0,
                     eval_every=max(steps // 4, 1), eval_windows=eval_windows, log_every=5, progress=False)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, tc, TokenStream(corpus.train, "train"), TokenStream(corpus.val, "val"),
                          run_dir=run_dir)
        t0 = time.perf_counter()
        res = trainer.fit()
        wall = time.perf_counter() - t0
        rows = read_metrics(run_dir, "train")
    moe_layers = [i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)]
    E = cfg.n_routed_experts
    tail = rows[-max(len(rows) // 5, 1):]  # the last 20% of logged steps
    final_load = {f"layer{i}": [sum(r[f"moe/l{i}/expert{j}"] for r in tail) / len(tail) for j in range(E)]
                  for i in moe_layers}
    return {
        "name": spec["name"], "config": spec["cfg"], "steps": steps, "wall_s": wall,
        "tokens_per_s": res.tokens_per_s, "final_val_bpb": res.final_val_bpb, "val": res.val,
        "step": [r["step"] for r in rows], "maxvio": [r["moe/maxvio"] for r in rows],
        "ce_loss": [r["ce_loss"] for r in rows], "dropped_frac": [r["moe/dropped_frac"] for r in rows],
        "final_maxvio": sum(r["moe/maxvio"] for r in tail) / len(tail),
        "final_load": final_load,
        "activated_expert_params_per_layer": ffn_params(cfg, moe_layers[0], activated=True),
        "total_expert_params_per_layer": ffn_params(cfg, moe_layers[0], activated=False),
        "corpus_sha256": corpus.sha256, "python": corpus.python_version,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="run only these names")
    p.add_argument("--out", default=str(HERE))
    a = p.parse_args()
    todo = [s for s in specs() if a.only is None or s["name"] in a.only]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(a.workers) as pool:
        results = pool.starmap(run_one, [(s, a.steps, a.eval_windows) for s in todo])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "wall_s": time.perf_counter() - t0,
            "seq_len": SEQ, "batch_size": BATCH, "lr": LR, "base_config": BASE}
    (out / "train_balance.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    with open(out / "train_balance.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "val_bpb", "final_maxvio", "max_dropped_frac", "activated_expert_params",
                    "total_expert_params", "tokens_per_s"])
        for r in results:
            w.writerow([r["name"], f"{r['final_val_bpb']:.4f}", f"{r['final_maxvio']:.3f}",
                        f"{max(r['dropped_frac']):.3f}", r["activated_expert_params_per_layer"],
                        r["total_expert_params_per_layer"], f"{r['tokens_per_s']:.0f}"])
    for r in results:
        print(f"{r['name']:<12} val_bpb {r['final_val_bpb']:.4f}  MaxVio(last 20%) {r['final_maxvio']:.3f}  "
              f"{r['tokens_per_s']:.0f} tok/s  {r['wall_s']:.0f}s")
    print(f"total wall {meta['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
