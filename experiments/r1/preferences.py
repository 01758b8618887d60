"""Chapter 09's preference stages: pairs by the helpfulness rule, a Bradley–Terry reward model, DPO, and GRPO with
the reward model (R1's "RL for all scenarios") — with a reward-hacking probe. From r1a's cold-start checkpoint.

    python experiments/r1/preferences.py pairs rm dpo rl table      # or: all
    python experiments/r1/preferences.py policy --base runs/r1a_base --policy runs/pref_policy   # cold start
    python experiments/r1/preferences.py all --policy cold_start --smoke   # tiny settings, a check of the script

Reads ``<policy>/model.safetensors`` next to this file (written by r1_recipe.py). Writes results/pref_*.json:
pairs (counts by kind), rm (held-out accuracy per seed, by kind), dpo (records, held-out evaluation per seed),
rl (all-scenario GRPO and the RM-only probe: train and eval records) and the comparison table. Checkpoints and
metrics logs go under runs/pref_* (not shipped). Every process uses one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_model

HERE = Path(__file__).resolve().parent
RESULTS, RUNS = HERE / "results", HERE / "runs"
SEEDS = (0, 1, 2)
SEEDS_NOW = SEEDS  # --seeds: the DPO seeds of this invocation
FULL = dict(
    pair_problems=40,  # training problems per (difficulty, language) for pairs: 240 prompts
    sampled_k=4,  # policy samples per prompt, labelled by the checker, beside the annotator's four
    rm=dict(steps=150, batch_size=16, lr=3e-4, eval_every=50),
    dpo=dict(steps=100, batch_size=16, lr=1e-4, beta=0.1, eval_every=50),
    rl=dict(steps=20, prompts_per_step=8, group_size=8, max_new_tokens=160, lr=1.5e-4, eval_every=10,
            eval_samples=4),
    w_rm=1.0,
    heldout_per_level=10, eval_k=4,
)
SMOKE = dict(pair_problems=2, sampled_k=2, rm=dict(steps=4, batch_size=4, lr=3e-4, eval_every=2),
             dpo=dict(steps=4, batch_size=4, lr=1e-4, beta=0.1, eval_every=2),
             rl=dict(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=40, lr=1.5e-4, eval_every=2,
                     eval_samples=1),
             w_rm=1.0, heldout_per_level=1, eval_k=1)


def load(name: str):
    from dslearn.model import CausalLM
    from dslearn.rl.recipe import base_config

    model = CausalLM(base_config())
    load_model(model, str(HERE / name / "model.safetensors"))
    return model.eval()


def write(name: str, info: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"pref_{name}.json").write_text(json.dumps(info, indent=1))


def read(name: str) -> dict:
    return json.loads((RESULTS / f"pref_{name}.json").read_text())


def heldout(S):
    from dslearn.rl.recipe import default_problems

    return default_problems("held_out", S["heldout_per_level"], seed=1)


def evaluate(model, S, seed=0) -> dict:
    from dslearn.rl.evaluate import evaluate as ev

    out = ev(model, heldout(S), S["eval_k"], temperature=1.0, seed=seed)
    out.pop("by_difficulty")
    return out


# --- stages ------------------------------------------------------------------------------------------
def stage_policy(S, policy: str, base: str = "base") -> dict:
    """The starting policy when r1_recipe.py's cold_start/ is not there yet: the same cold-start SFT (600 annotated
    solutions, 200 steps × 16, lr 5e-4) of ``base``, saved to ``policy``."""
    from safetensors.torch import save_model

    from dslearn.rl.recipe import cold_start_data, cold_start_sft, sft_config

    t0 = time.perf_counter()
    steps = 200 if S is FULL or S.get("full") else 4
    model, records = cold_start_sft(load(base), cold_start_data(600, seed=0),
                                    sft_config(steps=steps, batch_size=16, seq_len=160, lr=5e-4))
    (HERE / policy).mkdir(parents=True, exist_ok=True)
    save_model(model, str(HERE / policy / "model.safetensors"))
    info = {"base": base, "steps": steps, "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"],
            "eval": evaluate(model, S), "wall_s": time.perf_counter() - t0}
    write("policy", info)
    return info


def stage_pairs(S, policy: str) -> dict:
    from dslearn.rl.preference import annotated_candidates, preference_pairs, sampled_candidates, split_pairs
    from dslearn.rl.recipe import default_problems

    t0 = time.perf_counter()
    problems = default_problems("train", S["pair_problems"], seed=7)
    cands = [c for p in problems for c in annotated_candidates(p, seed=0)]
    cands += sampled_candidates(load(policy), problems, S["sampled_k"], seed=0)
    correct = {(c.prompt, c.response): c.correct for c in cands}
    pairs = preference_pairs(cands, max_per_prompt=6, seed=0)
    train, held = split_pairs(pairs, held_out=0.2, seed=0)

    def kind(p):
        return "right>wrong" if not correct[(p.prompt, p.rejected)] else "concise>verbose"
    rows = [{"prompt": list(p.prompt), "chosen": list(p.chosen), "rejected": list(p.rejected), "kind": kind(p),
             "split": "train" if i < len(train) else "held_out"} for i, p in enumerate(train + held)]
    info = {"settings": {k: S[k] for k in ("pair_problems", "sampled_k")}, "policy": policy,
            "candidates": len(cands), "sampled_right": sum(c.correct for c in cands[4 * len(problems):]),
            "pairs": len(pairs), "train": len(train), "held_out": len(held),
            "kinds": {k: sum(r["kind"] == k for r in rows) for k in ("right>wrong", "concise>verbose")},
            "wall_s": time.perf_counter() - t0, "rows": rows}
    write("pairs", info)
    return {k: v for k, v in info.items() if k != "rows"}


def load_pairs():
    from dslearn.rl.preference import PreferencePair

    rows = read("pairs")["rows"]
    mk = [(PreferencePair(tuple(r["prompt"]), tuple(r["chosen"]), tuple(r["rejected"])), r) for r in rows]
    return ([p for p, r in mk if r["split"] == "train"], [p for p, r in mk if r["split"] == "held_out"],
            {p: r["kind"] for p, r in mk})


def stage_rm(S, policy: str) -> dict:
    from dslearn.rl.preference import PreferenceConfig, reward_accuracy, train_reward_model

    train, held, kinds = load_pairs()
    out = {"settings": S["rm"], "policy": policy, "seeds": {}}
    for seed in SEEDS:
        t0 = time.perf_counter()
        rm, records = train_reward_model(load(policy), train, PreferenceConfig(**S["rm"], seed=seed),
                                         run_dir=RUNS / f"pref_rm_seed{seed}", eval_pairs=held)
        by_kind = {k: reward_accuracy(rm, [p for p in held if kinds[p] == k]) for k in sorted(set(kinds.values()))
                   if any(kinds[p] == k for p in held)}
        out["seeds"][seed] = {"heldout_accuracy": reward_accuracy(rm, held), "by_kind": by_kind,
                              "train_accuracy": reward_accuracy(rm, train), "records": records,
                              "wall_s": time.perf_counter() - t0}
        if seed == 0:
            torch.save(rm.state_dict(), RUNS / "pref_rm_seed0.pt")
    accs = [s["heldout_accuracy"] for s in out["seeds"].values()]
    out["heldout_accuracy_mean"] = sum(accs) / len(accs)
    write("rm", out)
    return {k: v for k, v in out.items() if k != "seeds"} | {"per_seed": accs}


def load_rm(policy: str):
    from dslearn.rl.preference import RewardModel

    rm = RewardModel(load(policy))
    rm.load_state_dict(torch.load(RUNS / "pref_rm_seed0.pt"))
    return rm.eval()


def rm_score_of_samples(rm, model, S, seed=0) -> float:
    """Mean RM score of the model's samples on the held-out problems (the learned judge's view)."""
    from dslearn.rl.evaluate import sample_responses

    probs = heldout(S)
    samples = sample_responses(model, probs, S["eval_k"], 1.0, seed, 160)
    prompts = [p.prompt_ids for p, rs in zip(probs, samples) for _ in rs]
    return rm.score(prompts, [r for rs in samples for r in rs]).mean().item()


def stage_dpo(S, policy: str) -> dict:
    from dslearn.rl.preference import PreferenceConfig, dpo

    train, held, _ = load_pairs()
    rm = load_rm(policy)
    out = {"settings": S["dpo"], "policy": policy, "seeds": {}}
    for seed in SEEDS_NOW:
        t0 = time.perf_counter()
        run_dir = RUNS / f"pref_dpo_seed{seed}"
        model, _ = dpo(load(policy), train, PreferenceConfig(**S["dpo"], seed=seed), run_dir=run_dir, eval_pairs=held)
        # the run's whole log (a finished run resumed here trains no step and returns no record)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        out["seeds"][seed] = {"records": records, "eval": evaluate(model, S, seed=seed),
                              "rm_score": rm_score_of_samples(rm, model, S, seed), "wall_s": time.perf_counter() - t0}
    if (RESULTS / "pref_dpo.json").exists():  # other seeds' results, from other invocations (--seeds)
        kept = {int(k): v for k, v in read("dpo")["seeds"].items() if int(k) not in SEEDS_NOW}
        out["seeds"] = dict(sorted({**kept, **out["seeds"]}.items()))
    write("dpo", out)
    return {s: v["eval"]["pass@1"] for s, v in out["seeds"].items()}


def stage_rl(S, policy: str) -> dict:
    from dslearn.rl.preference import all_scenario_rl
    from dslearn.rl.recipe import default_problems, r1_task, rl_config

    rm = load_rm(policy)
    train = default_problems("train", 100, seed=3)
    held = heldout(S)
    out = {"settings": {**S["rl"], "w_rm": S["w_rm"]}, "policy": policy, "runs": {}}
    variants = {"rm+rule": dict(w_rm=S["w_rm"], w_rule=1.0), "rm_only": dict(w_rm=S["w_rm"], w_rule=0.0)}
    for name, w in variants.items():
        for seed in SEEDS[:2]:
            t0 = time.perf_counter()
            model, records = all_scenario_rl(load(policy), rm, train, held, rl_config(**S["rl"], seed=seed),
                                             r1_task(), **w, run_dir=RUNS / f"pref_rl_{name}_seed{seed}")
            out["runs"][f"{name}_seed{seed}"] = {
                "weights": w, "records": records, "eval": evaluate(model, S, seed=seed),
                "rm_score": rm_score_of_samples(rm, model, S, seed), "wall_s": time.perf_counter() - t0}
    write("rl", out)
    return {k: (v["eval"]["pass@1"], v["rm_score"]) for k, v in out["runs"].items()}


def stage_table(S, policy: str) -> dict:
    """Policy, DPO and RM + GRPO side by side on the held-out problems (the same RM judges all)."""
    rm = load_rm(policy)
    base = load(policy)
    keys = ("pass@1", f"maj@{S['eval_k']}", "response_len", "self_check_rate", "checks_per_response")
    rows = {"policy": {**{k: evaluate(base, S, seed=0)[k] for k in keys}, "rm_score": rm_score_of_samples(rm, base, S)}}
    dpo, rl = read("dpo"), read("rl")
    for name, runs in [("dpo", {f"seed{s}": v for s, v in dpo["seeds"].items()}),
                       ("rm+rule", {k: v for k, v in rl["runs"].items() if k.startswith("rm+rule")}),
                       ("rm_only", {k: v for k, v in rl["runs"].items() if k.startswith("rm_only")})]:
        vals = list(runs.values())
        rows[name] = {k: sum(v["eval"][k] for v in vals) / len(vals) for k in keys}
        rows[name]["rm_score"] = sum(v["rm_score"] for v in vals) / len(vals)
        rows[name]["seeds"] = len(vals)
    write("table", {"policy": policy, "rows": rows})
    return rows


def stage_examples(S, policy: str) -> dict:
    """The seed-0 RM's scores of the annotator's candidates on a few held-out problems (the notebook's explorer)."""
    from dslearn.rl.preference import annotated_candidates, carry_columns
    from dslearn.rl.world import reward_parts

    rm = load_rm(policy)
    probs = [p for p in heldout(S) if carry_columns(p)][:6]
    rows = []
    for p in probs:
        cands = annotated_candidates(p)
        scores = rm.score([c.prompt for c in cands], [c.response for c in cands]).tolist()
        for name, c, r in zip(("concise", "checked", "slipped", "slipped+"), cands, scores):
            parts = reward_parts(p, list(c.response))
            rows.append({"question": p.question, "kind": name, "response": list(c.response), "rm": r,
                         "accuracy": parts.accuracy, "format": parts.format, "consistency": parts.consistency,
                         "checks": parts.checks, "length": parts.length})
    write("examples", {"policy": policy, "rows": rows})
    return {"rows": len(rows)}


STAGES = {"policy": stage_policy, "pairs": stage_pairs, "rm": stage_rm, "dpo": stage_dpo, "rl": stage_rl,
          "table": stage_table, "examples": stage_examples}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="+", choices=[*STAGES, "all"])
    p.add_argument("--policy", default="cold_start", help="checkpoint directory next to this file")
    p.add_argument("--seeds", type=int, nargs="+", help="DPO: only these seeds")
    p.add_argument("--base", default="base", help="the base for the policy stage")
    p.add_argument("--smoke", action="store_true", help="tiny settings: checks the script, results are not shipped")
    args = p.parse_args()
    torch.set_num_threads(1)
    global RESULTS, RUNS, SEEDS_NOW
    SEEDS_NOW = tuple(args.seeds) if args.seeds else SEEDS
    if args.smoke:
        RESULTS, RUNS = RUNS / "smoke" / "results", RUNS / "smoke"
    RUNS.mkdir(parents=True, exist_ok=True)
    S = SMOKE if args.smoke else FULL
    for name in (list(STAGES)[1:] if "all" in args.stages else args.stages):
        t0 = time.perf_counter()
        extra = {"base": args.base} if name == "policy" else {}
        print(name, json.dumps(STAGES[name](S, args.policy, **extra), default=str)[:2000],
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
