"""Chapter 02 experiment: bits per byte vs KV-cache size, MHA / GQA / MQA / MLA at one token budget.

Every run trains the "tiny" baseline (d_model 128, 4 layers, 4 heads of 32, SwiGLU 352, byte tokens)
on the embedded standard-library corpus with the same batches, steps, schedule and seed; only the
attention changes. After training, each run reports validation bits per byte and the KV cache its
decode state really holds at 256 tokens of context.

It also runs the *layer-wise adaptive cache* experiment (the article's claim; NOT in the V3 report):
the trained MLA model is evaluated with layers 2–3 keeping only the last w tokens, for several w, and
one more MLA model is trained with that pruning from the start.

    python experiments/attention/train_variants.py            # ≈ 6–9 min on 2 shared cores
    python experiments/attention/train_variants.py --steps 60 --out /tmp/quick   # smoke run

Writes ``train_variants.json`` and ``train_variants.csv`` next to this file (or into --out).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import platform
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SEQ = 256
ADAPTIVE_FIRST_LAYER = 2
ADAPTIVE_WINDOWS = [16, 32, 64, 128]


def specs() -> list[dict]:
    """(name, ModelConfig overrides on the tiny preset, adaptive window trained with)."""
    dense = dict(attention_type="mha")
    mla = dict(attention_type="mla", qk_nope_head_dim=32, v_head_dim=32, rope_interleave=True)
    return [
        dict(name="MHA", cfg=dict(dense, num_key_value_heads=4)),
        dict(name="MHA (seed 1)", cfg=dict(dense, num_key_value_heads=4), seed=1),
        dict(name="GQA-2", cfg=dict(dense, num_key_value_heads=2)),
        dict(name="MQA", cfg=dict(dense, num_key_value_heads=1)),
        dict(name="MLA d_c=64", cfg=dict(mla, kv_lora_rank=64, qk_rope_head_dim=16), adaptive_eval=True),
        dict(name="MLA d_c=32", cfg=dict(mla, kv_lora_rank=32, qk_rope_head_dim=16)),
        dict(name=f"MLA d_c=64, trained w={ADAPTIVE_WINDOWS[1]} on layers {ADAPTIVE_FIRST_LAYER}-3",
             cfg=dict(mla, kv_lora_rank=64, qk_rope_head_dim=16), train_window=ADAPTIVE_WINDOWS[1]),
    ]


def measured_cache(model, ids: torch.Tensor) -> int:
    """Bytes a real decode state holds after prefilling ids (B, T)."""
    state = model.new_decode_state(ids.shape[0], ids.shape[1])
    with torch.no_grad():
        model(ids, state=state, last_only=True)
    return state.nbytes()


def run_one(spec: dict, steps: int, batch: int, eval_windows: int) -> dict:
    torch.set_num_threads(1)  # two 1-thread workers beat one 2-thread run on shared cores
    from dslearn.attention.adaptive_cache import apply_adaptive_cache
    from dslearn.attention.cache_accounting import elements_per_token_per_layer
    from dslearn.config import ModelConfig
    from dslearn.data import TokenStream, load_corpus
    from dslearn.model import CausalLM
    from dslearn.train import TrainConfig, Trainer

    corpus = load_corpus()
    cfg = ModelConfig.from_preset("tiny", **spec["cfg"])
    seed = spec.get("seed", 0)
    model = CausalLM(cfg, seed=seed)
    if spec.get("train_window"):
        apply_adaptive_cache(model, ADAPTIVE_FIRST_LAYER, spec["train_window"])
    tc = TrainConfig(steps=steps, batch_size=batch, seq_len=SEQ, lr=2e-3, warmup_steps=20, seed=seed,
                     eval_every=max(steps // 4, 1), eval_windows=eval_windows, progress=False)
    trainer = Trainer(model, tc, TokenStream(corpus.train, "train"), TokenStream(corpus.val, "val"))
    t0 = time.perf_counter()
    res = trainer.fit()
    probe = TokenStream(corpus.val).eval_batches(1, SEQ, 1).__next__()[0]  # (1, 256) real text
    out = dict(name=spec["name"], config=cfg.to_dict(), seed=seed, steps=steps, batch=batch, seq_len=SEQ,
               tokens=steps * batch * SEQ, params_non_embedding=model.num_parameters(non_embedding=True),
               val_bpb=res.final_val_bpb, val_curve=res.val, tokens_per_s=res.tokens_per_s,
               wall_s=time.perf_counter() - t0, train_window=spec.get("train_window"),
               elements_per_token_per_layer=elements_per_token_per_layer(cfg),
               cache_bytes_fp32_at_256=measured_cache(model, probe))
    if spec.get("adaptive_eval"):  # the experiment: prune the trained model's deeper layers at inference
        rows = []
        for w in ADAPTIVE_WINDOWS:
            apply_adaptive_cache(model, ADAPTIVE_FIRST_LAYER, w)
            rows.append(dict(window=w, first_layer=ADAPTIVE_FIRST_LAYER, val_bpb=trainer.evaluate()["val_bpb"],
                             cache_bytes_fp32_at_256=measured_cache(model, probe)))
        apply_adaptive_cache(model, 0, None)
        out["adaptive_eval"] = rows
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-windows", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    todo = specs()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.starmap(run_one, [(s, args.steps, args.batch, args.eval_windows) for s in todo])
    from dslearn.data import load_corpus

    corpus = load_corpus()
    summary = dict(python=platform.python_version(), torch=torch.__version__, corpus_sha256=corpus.sha256,
                   wall_s=time.perf_counter() - t0, workers=args.workers, runs=results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_variants.json").write_text(json.dumps(summary, indent=1))
    fields = ["name", "val_bpb", "elements_per_token_per_layer", "cache_bytes_fp32_at_256", "params_non_embedding",
              "tokens", "tokens_per_s", "wall_s"]
    with open(args.out / "train_variants.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    for r in results:
        print(f"{r['name']:>40}: {r['val_bpb']:.4f} bpb, cache {r['cache_bytes_fp32_at_256']:>8,} B @256 (fp32), "
              f"{r['tokens_per_s']:.0f} tok/s, {r['wall_s']:.0f} s")
        for a in r.get("adaptive_eval", []):
            print(f"{'':>40}  w={a['window']:>3}: {a['val_bpb']:.4f} bpb, cache {a['cache_bytes_fp32_at_256']:,} B")
    print(f"wall time {summary['wall_s']:.0f} s; wrote {args.out / 'train_variants.json'}")


if __name__ == "__main__":
    main()
