"""The R1 recipe in miniature (chapter 09): base pretraining, cold-start SFT, reasoning RL with and without the
language-consistency reward, rejection sampling, and SFT from the base vs the RL checkpoint.

    python experiments/r1/r1_recipe.py base      # pretrain the base (resumes from runs/base if interrupted)
    python experiments/r1/r1_recipe.py cold      # cold-start SFT from the base
    python experiments/r1/r1_recipe.py rl        # reasoning RL from the cold-start model: λ=0 and λ>0, seeds 0-2
    python experiments/r1/r1_recipe.py rs        # rejection sampling from the RL checkpoint, SFT from the base
    python experiments/r1/r1_recipe.py all

Writes next to this file: base/, cold_start/, rl_*/ and rs_sft/ (model.safetensors + config.json, each < 5 MB),
results/*.json (every record and the evaluation tables) and runs/ (checkpoints, metrics logs; not shipped).
Every process uses one thread; the RL seeds run in two worker processes.
"""

from __future__ import annotations

import argparse
import copy
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("base", "cold", "rl", "rs", "all"))
    args = p.parse_args()
    torch.set_num_threads(1)
    stages = {"base": stage_base}
    for name in (stages if args.stage == "all" else [args.stage]):
        t0 = time.perf_counter()
        info = stages[name]()
        print(name, f"{time.perf_counter() - t0:.0f}s", json.dumps(info.get("eval", {}), indent=None)[:2000])


if __name__ == "__main__":
    main()
