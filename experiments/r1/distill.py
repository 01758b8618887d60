"""Distillation vs RL on a small student at equal student compute (R1 §4.1, in miniature).

    python experiments/r1/distill.py --teacher runs/pref_policy      # teacher checkpoint next to this file

1. student base: a smaller dslearn model (2 layers, d = 64) pretrained on ``world.base_corpus`` (shared by both arms)
2. distill: the teacher samples k = 4 per training problem; verified samples (right, well-formed, one language) → SFT
3. RL: GRPO (R1's rule reward, λ = 0) on the student base, as many steps as the distill arm's FLOPs buy
Both arms with seeds 0, 1, 2; held-out evaluation (``evaluate.evaluate``) at the end. FLOPs: ``dslearn.rl.distill``
(the teacher's sampling is reported, not charged). Writes results/distill.json. One thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_model

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
STUDENT = dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=192)
PRETRAIN = dict(n_docs=20_000, steps=400, batch_size=16, lr=3e-3)
SFT = dict(steps=300, batch_size=16, lr=1e-3)
RL = dict(prompts_per_step=8, group_size=8, max_new_tokens=160, lr=3e-4, eval_every=1000, eval_samples=1)
SAMPLING = dict(n_per_level=50, k=4)  # 300 training problems × 4 teacher samples
EVAL = dict(n_per_level=10, k=4)


def main() -> None:
    from dslearn.config import ModelConfig
    from dslearn.model import CausalLM
    from dslearn.rl.distill import distill, grpo_step_flops, sft_step_flops, teacher_flops, verified_samples
    from dslearn.rl.evaluate import evaluate
    from dslearn.rl.recipe import base_config, default_problems, pretrain_base, r1_task, rl_config
    from dslearn.rl.trainer import GRPOTrainer
    from dslearn.train import TrainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="rs_sft")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    S = dict(pre=dict(PRETRAIN), sft=dict(SFT), samp=dict(SAMPLING), ev=dict(EVAL))
    if args.smoke:
        S = dict(pre=dict(n_docs=200, steps=3, batch_size=4, lr=3e-3), sft=dict(steps=3, batch_size=4, lr=1e-3),
                 samp=dict(n_per_level=1, k=2), ev=dict(n_per_level=1, k=1))
    held = default_problems("held_out", S["ev"]["n_per_level"], seed=1)
    train = default_problems("train", S["samp"]["n_per_level"], seed=5)
    out = {"settings": {"student": STUDENT, **S, "rl": RL}, "teacher": args.teacher}
    t0 = time.perf_counter()

    # 1. the student base
    student_base = CausalLM(ModelConfig(**STUDENT), seed=0)
    pre = S["pre"]
    pretrain_base(student_base, n_docs=pre["n_docs"], seed=0, cfg=TrainConfig(
        steps=pre["steps"], batch_size=pre["batch_size"], seq_len=STUDENT["max_position_embeddings"], lr=pre["lr"],
        warmup_steps=20, schedule="cosine", eval_every=0, progress=False))
    N = student_base.num_parameters()
    out["student_params"] = N
    out["student_base_eval"] = evaluate(student_base, held, S["ev"]["k"], seed=0)
    out["pretrain_s"] = time.perf_counter() - t0

    # 2. the teacher's verified samples
    teacher = CausalLM(base_config())
    load_model(teacher, str(HERE / args.teacher / "model.safetensors"))
    out["teacher_eval"] = evaluate(teacher, held, S["ev"]["k"], seed=0)
    pairs, stats = verified_samples(teacher, train, S["samp"]["k"], seed=0, per_problem=2)
    out["teacher_samples"] = {**stats, "teacher_flops": teacher_flops(teacher, stats)}
    if not pairs:
        raise SystemExit("the teacher produced no verified sample; choose a stronger --teacher")

    runs = {}
    seq_len = max(len(a) + len(b) for a, b in pairs)
    sft_cfg = dict(batch_size=S["sft"]["batch_size"], seq_len=seq_len, lr=S["sft"]["lr"], warmup_steps=10,
                   schedule="cosine", weight_decay=0.0, eval_every=0, progress=False)
    budget = S["sft"]["steps"] * sft_step_flops(N, TrainConfig(**sft_cfg), seq_len)
    out["budget_flops"] = budget
    for seed in SEEDS:
        # 3a. distillation
        t1 = time.perf_counter()
        student = CausalLM(ModelConfig(**STUDENT))
        student.load_state_dict(student_base.state_dict())
        student, rec = distill(student, pairs, TrainConfig(steps=S["sft"]["steps"], seed=seed, **sft_cfg))
        runs[f"distill_seed{seed}"] = {"eval": evaluate(student, held, S["ev"]["k"], seed=seed),
                                       "flops": rec[-1]["flops"] if rec[-1]["kind"] == "train" else
                                       [r for r in rec if r["kind"] == "train"][-1]["flops"],
                                       "steps": S["sft"]["steps"], "wall_s": time.perf_counter() - t1}
        # 3b. GRPO on the student base, until it has spent the same FLOPs
        t1 = time.perf_counter()
        student = CausalLM(ModelConfig(**STUDENT))
        student.load_state_dict(student_base.state_dict())
        cfg = rl_config(**RL, steps=10_000, seed=seed)
        pool = default_problems("train", 100, seed=3)
        trainer = GRPOTrainer(student, cfg, pool, held[:2], task=r1_task())
        spent, steps, curve = 0.0, 0, []
        prompt_len = sum(len(p.prompt_ids) for p in pool) / len(pool)  # the step's prompts are drawn from the pool
        while spent < budget and (not args.smoke or steps < 2):
            r = trainer.train_step()
            n = cfg.prompts_per_step * cfg.group_size
            spent += grpo_step_flops(N, int(prompt_len * n), int(r["response_len"] * n), cfg.inner_steps, cfg.beta)
            steps += 1
            curve.append({"step": steps, "flops": spent, "accuracy": r["accuracy"], "response_len": r["response_len"],
                          "zero_variance_share": r["zero_variance_share"]})
        runs[f"grpo_seed{seed}"] = {"eval": evaluate(student, held, S["ev"]["k"], seed=seed), "flops": spent,
                                    "steps": steps, "curve": curve, "wall_s": time.perf_counter() - t1}
        print(seed, {k: (v["eval"]["pass@1"], v["flops"]) for k, v in runs.items()}, flush=True)
    out["runs"] = runs
    out["total_wall_s"] = time.perf_counter() - t0
    dest = HERE / "runs" / "smoke" if args.smoke else HERE / "results"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "distill.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
