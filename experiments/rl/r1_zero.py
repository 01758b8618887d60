"""R1-Zero in miniature: pretrain a base model on imperfect worked solutions, then GRPO from it.

    python experiments/rl/r1_zero.py                 # base model (if missing) + all RL runs
    python experiments/rl/r1_zero.py --skip-base     # RL runs only, from the shipped base
    python experiments/rl/r1_zero.py --skip-base --runs reinforce_seed0   # rerun some runs, keep the others

Writes next to this file:
    base/model.safetensors, base/config.json   the pretrained base (dslearn.rl.base_model recipe)
    base_eval.json                              the base's held-out pass@1 / pass@8 / greedy accuracy
    runs.jsonl                                  every train/eval record of every RL run, tagged by run name
    summary.json                                final held-out accuracy per run, wall times, tokens/s

RL runs (same samples: 40 steps × 16 prompts × G=8): GRPO (μ = 2 updates per batch of samples, ε = 0.2) with
seeds 0, 1, 2; REINFORCE with GRPO's group-standardised advantages, on-policy (μ = 1: no ratio, no clipping);
GRPO with a KL penalty (β = 0.04). Two single-thread worker processes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import time
from pathlib import Path

import torch
from safetensors.torch import save_model

from dslearn.rl.base_model import BASE_STEPS, N_EVAL, SLIP_RATE, base_config, load_base

HERE = Path(__file__).resolve().parent
# REINFORCE is on-policy: one update per batch of samples (μ = 1). A second update on the same samples would be
# off-policy with no importance ratio — GRPO's ratio and clipping are what make μ = 2 legitimate.
RUNS = {
    "grpo_seed0": dict(seed=0), "grpo_seed1": dict(seed=1), "grpo_seed2": dict(seed=2),
    "reinforce_seed0": dict(seed=0, algorithm="reinforce", inner_steps=1), "grpo_kl_seed0": dict(seed=0, beta=0.04),
}
RL = dict(steps=40, prompts_per_step=16, group_size=8, lr=1.5e-4, eval_every=5, progress=False)


def pretrain_base() -> dict:
    from dslearn.data import TokenStream
    from dslearn.model import CausalLM
    from dslearn.rl.base_model import PROMPT_TEMPLATE, base_corpus, carry_problems, worked_solution
    from dslearn.rl.rollout import pass_at_k
    from dslearn.train import TrainConfig, Trainer

    torch.set_num_threads(1)  # one thread: the run is bit-for-bit reproducible on this CPU
    held = carry_problems("held_out")
    rng = random.Random(1)
    val_text = "\n\n".join(PROMPT_TEMPLATE.format(question=p.question) + worked_solution(p, rng.random() < SLIP_RATE)
                           for p in held) + "\n\n"
    model = CausalLM(base_config(), seed=0)
    t0 = time.perf_counter()
    result = Trainer(model, TrainConfig(steps=BASE_STEPS, batch_size=32, seq_len=128, lr=3e-3, warmup_steps=50,
                                        schedule="cosine", eval_every=300, eval_windows=64, progress=True),
                     TokenStream(base_corpus(60000, slip_rate=SLIP_RATE, seed=0)), TokenStream(val_text.encode())).fit()
    (HERE / "base").mkdir(exist_ok=True)
    save_model(model, str(HERE / "base" / "model.safetensors"))
    (HERE / "base" / "config.json").write_text(model.config.to_json())
    ev = pass_at_k(model, held[:N_EVAL], 8, seed=0)
    info = {**ev, "pretrain_s": time.perf_counter() - t0, "val_bpb": result.final_val_bpb,
            "steps": BASE_STEPS, "slip_rate": SLIP_RATE}
    (HERE / "base_eval.json").write_text(json.dumps(info, indent=1))
    return info


def rl_run(item) -> tuple[str, list[dict], float]:
    from dslearn.rl.base_model import carry_problems
    from dslearn.rl.trainer import GRPOConfig, GRPOTrainer

    name, overrides = item
    torch.set_num_threads(1)
    trainer = GRPOTrainer(load_base(HERE / "base"), GRPOConfig(**{**RL, **overrides}), carry_problems("train"),
                          carry_problems("held_out")[:N_EVAL])
    t0 = time.perf_counter()
    records = trainer.fit()
    return name, records, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-base", action="store_true")
    p.add_argument("--runs", nargs="+", choices=sorted(RUNS), help="rerun only these; the others' results are kept")
    args = p.parse_args()
    names = args.runs or list(RUNS)
    t0 = time.perf_counter()
    if not args.skip_base or not (HERE / "base" / "model.safetensors").exists():
        print("base:", pretrain_base())
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(rl_run, [(n, RUNS[n]) for n in names])
    old = json.loads((HERE / "summary.json").read_text()) if args.runs else {"runs": {}}
    summary = {"base": json.loads((HERE / "base_eval.json").read_text()), "rl": RL,
               "runs": {n: {**old["runs"][n], "overrides": RUNS[n]}
                        for n in RUNS if n in old["runs"] and n not in names}}
    kept = [line for line in (HERE / "runs.jsonl").read_text().splitlines()
            if json.loads(line)["run"] not in names] if args.runs else []
    with open(HERE / "runs.jsonl", "w") as f:
        f.writelines(line + "\n" for line in kept)
        for name, records, wall in results:
            for r in records:
                f.write(json.dumps({"run": name, **r}) + "\n")
            evals = [r for r in records if r["kind"] == "eval"]
            train = [r for r in records if r["kind"] == "train"]
            summary["runs"][name] = {
                "heldout_greedy_start": evals[0]["heldout_greedy"], "heldout_greedy_end": evals[-1]["heldout_greedy"],
                "heldout_pass@1_start": evals[0]["heldout_pass@1"], "heldout_pass@1_end": evals[-1]["heldout_pass@1"],
                "wall_s": wall, "rollout_tokens_per_s": sum(r["rollout_tokens_per_s"] for r in train) / len(train),
                "response_len_start": train[0]["response_len"], "response_len_end": train[-1]["response_len"],
                "overrides": RUNS[name]}
    summary["runs"] = {n: summary["runs"][n] for n in RUNS if n in summary["runs"]}  # the table's order
    if args.runs:  # the full invocation's wall time stays; this one's is recorded beside it
        summary["total_wall_s"] = old["total_wall_s"]
        summary["reruns"] = {**old.get("reruns", {}), " ".join(names): time.perf_counter() - t0}
    else:
        summary["total_wall_s"] = time.perf_counter() - t0
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
