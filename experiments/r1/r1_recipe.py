"""The R1 recipe in miniature (chapter 09): base pretraining, cold-start SFT, reasoning RL with and without the
language-consistency reward, rejection sampling, and SFT from the base vs the RL checkpoint.

    python experiments/r1/r1_recipe.py base      # pretrain the base (resumes from runs/base if interrupted)
    python experiments/r1/r1_recipe.py cold      # cold-start SFT from the base
    python experiments/r1/r1_recipe.py rl        # reasoning RL from the cold-start model: λ=0 and λ>0, seeds 0-2
    python experiments/r1/r1_recipe.py zero      # reasoning RL straight from the base (R1-Zero): λ=0 and λ>0, seed 0
    python experiments/r1/r1_recipe.py rs        # rejection sampling from the RL checkpoint, SFT from the base
    python experiments/r1/r1_recipe.py all

Writes next to this file: base/, cold_start/, rl_*/ and rs_sft/ (model.safetensors + config.json, each < 5 MB),
results/*.json (every record and the evaluation tables) and runs/ (checkpoints, metrics logs; not shipped).
Every process uses one thread; the RL seeds run in two worker processes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BASE = dict(n_docs=40_000, steps=1200, batch_size=16, lr=3e-3, warmup_steps=50)
EVAL = dict(n_per_level=10, k=4)  # held-out problems per (difficulty, language) and samples per problem
LAMBDA = 0.5  # consistency weight of the "with consistency reward" runs
SEEDS = (0, 1, 2)
COLD = dict(n=600, steps=200, lr=5e-4)
RL = dict(steps=30, prompts_per_step=8, group_size=8, lr=1.5e-4, eval_every=10, eval_samples=4)
RS = dict(n_per_level=50, n=4, keep=2, n_plain=100, steps=200)  # 300 training problems × 4 samples


def save(model, name: str, info: dict) -> None:
    (HERE / name).mkdir(exist_ok=True)
    save_model(model, str(HERE / name / "model.safetensors"))
    (HERE / name / "config.json").write_text(model.config.to_json())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(info, indent=1))


def load(name: str):
    from dslearn.model import CausalLM
    from dslearn.rl.recipe import base_config

    model = CausalLM(base_config())
    load_model(model, str(HERE / name / "model.safetensors"))
    return model


def heldout():
    from dslearn.rl.recipe import default_problems

    return default_problems("held_out", EVAL["n_per_level"], seed=1)


def score(model, seed: int = 0) -> dict:
    from dslearn.rl.evaluate import evaluate

    return evaluate(model, heldout(), EVAL["k"], temperature=1.0, seed=seed)


def stage_base() -> dict:
    from dslearn.model import CausalLM
    from dslearn.rl.recipe import base_config, pretrain_base
    from dslearn.train import TrainConfig

    t0 = time.perf_counter()
    cfg = TrainConfig(steps=BASE["steps"], batch_size=BASE["batch_size"], seq_len=base_config().max_position_embeddings,
                      lr=BASE["lr"], warmup_steps=BASE["warmup_steps"], schedule="cosine", eval_every=400,
                      eval_windows=32, checkpoint_every=100, progress=True)
    model, records = pretrain_base(CausalLM(base_config(), seed=0), n_docs=BASE["n_docs"], cfg=cfg, seed=0,
                                   run_dir=HERE / "runs" / "base")
    train_s = time.perf_counter() - t0
    ev = score(model)
    info = {"settings": BASE, "train_wall_s": train_s, "eval_wall_s": time.perf_counter() - t0 - train_s,
            "val": [r for r in records if r["kind"] == "val"], "eval": ev}
    save(model, "base", info)
    return info


def stage_cold() -> dict:
    from dslearn.rl.recipe import cold_start_data, cold_start_sft, sft_config

    t0 = time.perf_counter()
    pairs = cold_start_data(COLD["n"], seed=0)
    model, records = cold_start_sft(load("base"), pairs, sft_config(steps=COLD["steps"], batch_size=16, seq_len=160,
                                                                     lr=COLD["lr"], checkpoint_every=50),
                                    run_dir=HERE / "runs" / "cold_start")
    train_s = time.perf_counter() - t0
    ev = score(model)
    info = {"settings": COLD, "train_wall_s": train_s, "eval_wall_s": time.perf_counter() - t0 - train_s,
            "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"], "eval": ev}
    save(model, "cold_start", info)
    return info


def rl_name(start: str, lam: float, seed: int) -> str:
    return f"rl_{start}_lam{lam:g}_seed{seed}"


def rl_worker(item) -> tuple[str, list[dict], float]:
    from dslearn.rl.recipe import default_problems, reasoning_rl, rl_config

    start, lam, seed = item
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    name = rl_name(start, lam, seed)
    model, records = reasoning_rl(load(start), rl_config(seed=seed, **RL), lam=lam,
                                  train_problems=default_problems("train", 300), eval_problems=heldout(),
                                  run_dir=HERE / "runs" / name, checkpoint_every=10)
    if seed == 0:
        (HERE / name).mkdir(exist_ok=True)
        save_model(model, str(HERE / name / "model.safetensors"))
        (HERE / name / "config.json").write_text(model.config.to_json())
    return name, records, time.perf_counter() - t0


SERIES = ("reward", "accuracy", "format", "consistency", "mixed", "self_check_rate", "checks_per_response",
          "response_len", "zero_variance_share", "accuracy_d2", "accuracy_d3", "accuracy_d4")


def stage_rl(starts=("cold_start",), seeds=SEEDS) -> dict:
    items = [(start, lam, seed) for start in starts for lam in (0.0, LAMBDA) for seed in seeds]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(rl_worker, items, chunksize=1)
    RESULTS.mkdir(exist_ok=True)
    summary = {"settings": {**RL, "lambda": LAMBDA, "seeds": seeds, "eval": EVAL}, "runs": {}}
    with open(RESULTS / f"rl_runs_{'_'.join(starts)}.jsonl", "w") as f:
        for name, records, wall in results:
            for r in records:
                f.write(json.dumps({"run": name, **r}) + "\n")
            evals = [r for r in records if r["kind"] == "eval"]
            train = [r for r in records if r["kind"] == "train"]
            summary["runs"][name] = {"wall_s": wall, "eval_start": evals[0], "eval_end": evals[-1],
                                     "series": {k: [r.get(k) for r in train] for k in SERIES}}
    summary["pool_wall_s"] = time.perf_counter() - t0
    (RESULTS / f"rl_{'_'.join(starts)}.json").write_text(json.dumps(summary, indent=1))
    return {"eval": {n: {k: v for k, v in r["eval_end"].items() if k != "heldout_by_difficulty"}
                     for n, r in summary["runs"].items()}}


def stage_zero() -> dict:
    """Reasoning RL straight from the base (R1-Zero), with and without the consistency reward (seed 0 only)."""
    return stage_rl(("base",), seeds=(0,))


def stage_rs() -> dict:
    from dslearn.rl.recipe import default_problems, rejection_sample, rejection_sampling_sft, sft_config

    t0 = time.perf_counter()
    source = rl_name("cold_start", LAMBDA, 0)
    pairs, stats = rejection_sample(load(source), default_problems("train", RS["n_per_level"], seed=7), RS["n"],
                                    seed=0, keep_per_problem=RS["keep"])
    sample_s = time.perf_counter() - t0
    model, records = rejection_sampling_sft(load("base"), pairs, n_plain=RS["n_plain"],
                                            cfg=sft_config(steps=RS["steps"], batch_size=16, seq_len=160,
                                                           lr=COLD["lr"], checkpoint_every=50),
                                            run_dir=HERE / "runs" / "rs_sft")
    train_s = time.perf_counter() - t0 - sample_s
    info = {"settings": RS, "source": source, "rejection_stats": stats, "sample_wall_s": sample_s,
            "train_wall_s": train_s, "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"],
            "eval": score(model), "eval_source": score(load(source)), "eval_cold_start": score(load("cold_start"))}
    save(model, "rs_sft", info)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("base", "cold", "rl", "zero", "rs", "all"))
    args = p.parse_args()
    torch.set_num_threads(1)
    stages = {"base": stage_base, "cold": stage_cold, "rl": stage_rl, "rs": stage_rs, "zero": stage_zero}
    for name in (["base", "cold", "rl", "rs"] if args.stage == "all" else [args.stage]):
        t0 = time.perf_counter()
        info = stages[name]()
        print(name, f"{time.perf_counter() - t0:.0f}s", json.dumps(info.get("eval", {}), indent=None)[:3000])


if __name__ == "__main__":
    main()
