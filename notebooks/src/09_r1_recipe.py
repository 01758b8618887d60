# %% [markdown]
# # 09 · The R1 recipe in miniature
#
# Chapter 08 ran R1-Zero: GRPO straight from a base model. DeepSeek-R1 itself is a pipeline — cold-start SFT, reasoning
# RL with a language-consistency reward, rejection sampling and SFT from the base, then RL for all scenarios with rule
# rewards *and* a learned reward model — and DeepSeek-LLM aligned its chat model with SFT then DPO. This notebook builds
# each stage at a size that runs here, checks it against `dslearn.rl`, and reads the full runs shipped in
# `experiments/r1/`.
#
# **In this notebook you will**
# 1. draw R1's pipeline and fill it with this miniature's own numbers;
# 2. meet chapter 09's world: a chat template with reserved tokens, graded additions in two "languages", an annotator;
# 3. build preference pairs by a documented rule, train a Bradley–Terry reward model and measure it on held-out pairs;
# 4. write DPO's loss from scratch and prove it equals `dslearn.rl.dpo_loss` (held equal to TRL's by the tests);
# 5. run GRPO with rule rewards + the reward model, and probe for reward hacking;
# 6. compare distillation into a smaller student with RL on that student at equal compute;
# 7. put every stage in one evaluation table, and the article next to the report.
#
# **Paper sections:** DeepSeek-R1 (arXiv 2501.12948) §2.3 (cold start, reasoning RL, rejection sampling, RL for all
# scenarios), §2.4 and §4.1 (distillation vs RL); DeepSeek-LLM (arXiv 2401.02954) §5 (SFT, DPO); DPO (Rafailov et al.,
# arXiv 2305.18290).
#
# **Symbols** used across the course (and the letters whose meaning changes between chapters) are listed in the [glossary](../docs/glossary.md).

# %%
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from safetensors.torch import load_model

from dslearn.model import CausalLM
from dslearn.rl import template, world
from dslearn.rl.preference import (
    PreferenceConfig,
    PreferencePair,
    annotated_candidates,
    bradley_terry_loss,
    dpo,
    dpo_loss,
    preference_pairs,
    train_reward_model,
)
from dslearn.rl.recipe import base_config

R1 = Path("..") / "experiments" / "r1"
RESULTS = R1 / "results"


def result(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_policy():
    model = CausalLM(base_config())
    load_model(model, str(R1 / "cold_start" / "model.safetensors"))
    return model.eval()


policy_info, pairs_info, rm_info = result("pref_policy"), result("pref_pairs"), result("pref_rm")
dpo_info, rl_info, table_info, examples = result("pref_dpo"), result("pref_rl"), result("pref_table"), result("pref_examples")
distill_info = result("distill")
recipe_results = {n: result(n) for n in ("base", "cold_start", "rs_sft")}
print("shipped results:", sorted(p.stem for p in RESULTS.glob("*.json")))


# %% [markdown]
# ## 1. The pipeline, drawn with this miniature's numbers
#
# R1 §2.3 in one picture. Each box shows held-out pass@1 (k samples per problem, temperature 1: R1's definition) of the
# checkpoint that stage produced, read from the shipped results; a stage whose full run is not in `experiments/r1/results`
# says so instead of showing a number.

# %%
def pass1(info, *path):
    for key in path:
        if info is None:
            return None
        info = info.get(key) if isinstance(info, dict) else None
    return info


def mean_over(runs, prefix):
    vals = [v["eval"]["pass@1"] for k, v in (runs or {}).items() if k.startswith(prefix)]
    return sum(vals) / len(vals) if vals else None


rl_recipe = result("rl_cold_start")  # r1_recipe.py rl: reasoning RL from the cold start, λ > 0 runs
rl_vals = [r["eval_end"]["heldout_pass@1"] for n, r in (rl_recipe or {"runs": {}})["runs"].items() if "lam0_" not in n]
rl_recipe_p1 = sum(rl_vals) / len(rl_vals) if rl_vals else None
stages = [  # (label, pass@1 or None, row, column)
    ("base\n(pretrained)", pass1(recipe_results["base"], "eval", "pass@1"), 0, 0),
    ("cold-start SFT", pass1(policy_info, "eval", "pass@1"), 0, 1),
    ("reasoning RL\n(+ consistency)", rl_recipe_p1, 0, 2),
    ("rejection sampling\n+ SFT from base", pass1(recipe_results["rs_sft"], "eval", "pass@1"), 0, 3),
    ("RL, all scenarios\n(rules + RM)", mean_over(rl_info and rl_info["runs"], "rm+rule"), 1, 3),
    ("DPO on the pairs\n(DeepSeek-LLM)", mean_over(dpo_info and {f"s{k}": v for k, v in dpo_info["seeds"].items()}, "s"), 1, 1),
    ("distilled student", mean_over(distill_info and distill_info["runs"], "distill"), 1, 2),
]
fig, ax = plt.subplots(figsize=(13, 4.2))
boxes = {}
for label, value, row, col in stages:
    x, y = 0.3 + col * 3.2, 2.2 - row * 2.0
    ax.add_patch(FancyBboxPatch((x, y), 2.6, 1.2, boxstyle="round,pad=0.05", fc="#e8f0fe" if value is not None else "#eee",
                                ec="#335"))
    ax.text(x + 1.3, y + 0.78, label, ha="center", va="center", fontsize=9)
    ax.text(x + 1.3, y + 0.22, f"pass@1 {value:.0%}" if value is not None else "not in results/", ha="center",
            fontsize=9, weight="bold" if value is not None else "normal")
    boxes[label.split("\n")[0]] = (x, y)
for a, b in [("base", "cold-start SFT"), ("cold-start SFT", "reasoning RL"), ("reasoning RL", "rejection sampling"),
             ("rejection sampling", "RL, all scenarios"), ("cold-start SFT", "DPO on the pairs"),
             ("rejection sampling", "distilled student")]:
    (xa, ya), (xb, yb) = boxes[a], boxes[b]
    start = (xa + 2.65, ya + 0.6) if ya == yb else (xa + 1.3, ya - 0.05)
    end = (xb - 0.05, yb + 0.6) if ya == yb else (xb + 1.3, yb + 1.25)
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#335"))
n_pairs = pairs_info["pairs"] if pairs_info else 0
rm_acc = rm_info["heldout_accuracy_mean"] if rm_info else float("nan")
ax.text(0.3, -0.05, f"preference pairs by the helpfulness rule: {n_pairs}; Bradley–Terry RM held-out accuracy "
        f"{rm_acc:.0%} (mean of {len(rm_info['seeds']) if rm_info else 0} seeds)", fontsize=9)
ax.set(xlim=(0, 13.2), ylim=(-0.3, 3.6))
ax.axis("off")
ax.set_title("DeepSeek-R1's pipeline (§2.3), with this miniature's held-out pass@1", fontsize=11)
plt.show()
print("DPO and all-scenario RL start from the cold-start checkpoint (experiments/r1/cold_start); the distillation "
      f"teacher is experiments/r1/{distill_info['teacher']}")

# %% [markdown]
# ## 2. The world: a template with reserved tokens, graded additions, two languages
#
# `dslearn.rl.template` reserves single bytes that never occur in UTF-8 text (0xF8–0xFE) for the chat and reasoning
# tags, so no text can forge a `<think>`. `dslearn.rl.world` holds additions of 2–5 digits (difficulty = digits), a
# held-out split by the hash of the sum, and two "languages" with disjoint alphabets (`en` lower-case, `da` capitals) so
# that language mixing is measurable. Its annotator writes readable worked solutions — column by column, optional
# self-checks that catch a forgotten carry, then a summary:

# %%
# NBVAL_CHECK_OUTPUT
p = world.Problem(478, 365, "da")
think = world.annotate(p, checks={1, 2}, slips={2})
tokens = world.response(p, think)
print(template.display(p.prompt_ids + tokens))
r = world.reward_parts(p, tokens)
print(f"\ndifficulty {p.difficulty}, split {p.split}; accuracy {r.accuracy:.0f}, format {r.format:.0f}, "
      f"consistency {r.consistency:.2f}, self-checks {r.checks}, {r.length} tokens")
print("a forged tag in the text is just bytes:", template.parse(list(b"<think>x</think>")) is None)

# %% [markdown]
# The reward R1 uses checks the **final answer only**. A solution whose middle lines are wrong but whose answer is right
# gets full accuracy; one whose every line is right but whose summary is mistyped gets none:

# %%
# NBVAL_CHECK_OUTPUT
good = world.annotate(p)
lines = good.split("\n")
bad_middle = "\n".join([lines[0].replace("=", "=9", 1)] + lines[1:])            # a wrong step, the right answer
bad_summary = world.response(p, good)[:-3] + list(b"0") + world.response(p, good)[-2:]   # right steps, a wrong answer
print("wrong step, right answer :", world.reward_parts(p, template.encode_response(bad_middle, p.answer)).accuracy)
print("right steps, wrong answer:", world.reward_parts(p, bad_summary).accuracy)

# %% [markdown]
# ## 3. Preference pairs by a documented rule, and a Bradley–Terry reward model
#
# The "labellers" are a program, `dslearn.rl.preference.prefer` — the **helpfulness rule**: a correct response beats a
# wrong one; of two correct ones the shorter wins when it is shorter by at least `min_gap` tokens (concise over verbose);
# two wrong ones are not ranked. Candidates come from the annotator (four per problem: concise, checked, slipped,
# slipped + checks elsewhere) and from the cold-start policy's own samples, labelled by the checker:

# %%
# NBVAL_CHECK_OUTPUT
q = world.Problem(4821, 3967, "en")
cands = annotated_candidates(q)
for name, c in zip(("concise", "checked", "slipped", "slipped+"), cands):
    print(f"{name:>9}: correct {c.correct!s:>5}, {len(c.response):>3} tokens | "
          + template.display(c.response).replace("\n", " / ")[:90])
ranked = preference_pairs(cands, max_per_prompt=10)
names = {c.response: n for n, c in zip(("concise", "checked", "slipped", "slipped+"), cands)}
print("pairs (chosen ≻ rejected):", ", ".join(f"{names[x.chosen]} ≻ {names[x.rejected]}" for x in ranked))

# %%
print(f"shipped pairs (experiments/r1/preferences.py pairs): {pairs_info['candidates']} candidates "
      f"({pairs_info['sampled_right']} of the policy's samples right) → {pairs_info['pairs']} pairs; "
      f"{pairs_info['train']} train / {pairs_info['held_out']} held out, split by prompt; kinds {pairs_info['kinds']}")

# %% [markdown]
# **Bradley–Terry.** P(y_w ≻ y_l) = σ(r(x, y_w) − r(x, y_l)). The reward model is a dslearn `CausalLM` backbone
# (initialised from the policy, as InstructGPT and DeepSeek do) with a scalar head read at the last token, trained on
# −log σ(r_w − r_l) by `train_reward_model` — a step function on the same `TrainingLoop` as pretraining, SFT and GRPO:

# %%
rc, rr = torch.tensor([1.2, -0.3, 0.5]), torch.tensor([0.2, 0.4, 0.5])
mine = -F.logsigmoid(rc - rr).mean()
theirs, m = bradley_terry_loss(rc, rr)
torch.testing.assert_close(mine, theirs)
print(f"from scratch {mine.item():.6f} == dslearn {theirs.item():.6f}; pairs ordered right: {m['accuracy']:.0%}")


# %% [markdown]
# A reduced live run: 25 steps from the shipped cold-start policy on a slice of the shipped pairs.

# %%
def as_pairs(split):
    return [PreferencePair(tuple(r["prompt"]), tuple(r["chosen"]), tuple(r["rejected"]))
            for r in pairs_info["rows"] if r["split"] == split]


train_pairs, held_pairs = as_pairs("train"), as_pairs("held_out")
torch.manual_seed(0)
live_rm, live_rm_records = train_reward_model(load_policy(), train_pairs[:200], PreferenceConfig(
    steps=25, batch_size=8, lr=3e-4, eval_every=25), eval_pairs=held_pairs[:60])
ev = [r for r in live_rm_records if r["kind"] == "eval"]
print(f"live RM, held-out accuracy on 60 pairs: {ev[0]['heldout_accuracy']:.0%} -> {ev[-1]['heldout_accuracy']:.0%}")

# %%
# NBVAL_CHECK_OUTPUT
print("the live RM learned something (held-out accuracy > 0.5):", ev[-1]["heldout_accuracy"] > 0.5)

# %%
accs = {s: v["heldout_accuracy"] for s, v in rm_info["seeds"].items()}
print(f"shipped RMs ({rm_info['settings']['steps']} steps each): held-out accuracy per seed",
      {s: f"{a:.1%}" for s, a in accs.items()}, f"mean {rm_info['heldout_accuracy_mean']:.1%}")
for s, v in rm_info["seeds"].items():
    print(f"  seed {s}: by kind", {k: f"{a:.1%}" for k, a in v["by_kind"].items()}, f"| train {v['train_accuracy']:.1%}")

# %% [markdown]
# ## 4. DPO: the reward model folded into the policy
#
# DPO (DeepSeek-LLM's alignment) needs no reward model: with h = log π_θ(y|x) − log π_ref(y|x) summed over the
# response, the loss is −log σ(β (h_w − h_l)). With label smoothing ε (conservative DPO) a share ε of labels is assumed
# flipped. Written from scratch and compared with `dslearn.rl.dpo_loss`, which `tests/test_preference.py` holds equal to
# TRL 1.16's `DPOTrainer` loss (sigmoid, cDPO, robust, IPO; several β and ε; within 1e-6, gradients too):

# %%
g = torch.Generator().manual_seed(0)
pc, pr, rc_, rr_ = (-20 * torch.rand(6, generator=g) for _ in range(4))
for beta, eps in [(0.1, 0.0), (0.5, 0.1)]:
    d = beta * ((pc - rc_) - (pr - rr_))
    mine = (-(1 - eps) * F.logsigmoid(d) - eps * F.logsigmoid(-d)).mean()
    theirs, m = dpo_loss(pc, pr, rc_, rr_, beta, eps)
    torch.testing.assert_close(mine, theirs)
    print(f"β = {beta}, ε = {eps}: from scratch {mine.item():.6f} == dslearn {theirs.item():.6f}")

# %%
torch.manual_seed(0)
live_dpo, live_dpo_records = dpo(load_policy(), train_pairs[:120], PreferenceConfig(steps=10, batch_size=8, lr=1e-4,
                                                                                   beta=0.1, eval_every=10),
                                 eval_pairs=held_pairs[:60])
ev = [r for r in live_dpo_records if r["kind"] == "eval"]
print(f"live DPO, held-out implicit-reward accuracy: {ev[0]['heldout_accuracy']:.0%} (π = π_ref) -> "
      f"{ev[-1]['heldout_accuracy']:.0%} after 10 steps")

# %%
rows = []
for s, v in dpo_info["seeds"].items():
    last = [r for r in v["records"] if r["kind"] == "eval"][-1]
    rows.append(f"  seed {s}: held-out pair accuracy {last['heldout_accuracy']:.1%}, task pass@1 {v['eval']['pass@1']:.1%}, "
                f"response {v['eval']['response_len']:.1f} tokens, self-check rate {v['eval']['self_check_rate']:.0%}")
print(f"shipped DPO ({dpo_info['settings']['steps']} steps, β = {dpo_info['settings']['beta']}):")
print("\n".join(rows))

# %% [markdown]
# ## 5. RL for all scenarios — and a reward-hacking probe
#
# R1's last stage adds learned rewards for what rules cannot check. `all_scenario_rl` runs GRPO with reward
# w_rule · (accuracy + 0.1 · format) + w_rm · r(x, y). The probe sets w_rule = 0: the policy then sees only the learned
# reward, and the rule metrics show what that does. Our RM was trained on a rule that prefers *concise* correct
# answers — and the self-check lines that make answers right are exactly what makes them long.

# %%
fig, ax = plt.subplots(1, 4, figsize=(16, 3.3))
for i, (name, run) in enumerate(rl_info["runs"].items()):
    tr = [r for r in run["records"] if r["kind"] == "train"]
    style = dict(color=f"C{i}", label=name, alpha=0.8)
    ax[0].plot([r["step"] for r in tr], [r["rm_score"] for r in tr], **style)
    ax[1].plot([r["step"] for r in tr], [r["accuracy"] for r in tr], **style)
    ax[2].plot([r["step"] for r in tr], [r["response_len"] for r in tr], **style)
    ax[3].plot([r["step"] for r in tr], [r["checks_per_response"] for r in tr], **style)
for a, t in zip(ax, ["RM score of the samples", "rule-checked accuracy", "response length (tokens)",
                     "self-checks per response"]):
    a.set(xlabel="GRPO step", title=t)
    a.grid(alpha=0.3)
ax[0].legend(fontsize=7)
plt.tight_layout()
plt.show()
for name, run in rl_info["runs"].items():
    tr = [r for r in run["records"] if r["kind"] == "train"]
    k = 5
    first = {m: sum(r[m] for r in tr[:k]) / k for m in ("rm_score", "accuracy", "response_len", "checks_per_response")}
    last = {m: sum(r[m] for r in tr[-k:]) / k for m in first}
    print(f"{name:>15}: first/last {k} steps — RM {first['rm_score']:+.2f} -> {last['rm_score']:+.2f}, accuracy "
          f"{first['accuracy']:.0%} -> {last['accuracy']:.0%}, length {first['response_len']:.0f} -> "
          f"{last['response_len']:.0f}, checks {first['checks_per_response']:.2f} -> {last['checks_per_response']:.2f}; "
          f"held-out pass@1 {run['eval']['pass@1']:.1%}")

# %% [markdown]
# DPO on the same pairs (section 4) and this stage share one judge here, the seed-0 RM, in the table of section 7.
# Read the probe from these numbers: hacking shows as the RM score rising while rule-checked accuracy falls (or
# responses drifting to what the RM over-rewards: fewer checks, shorter). With the rule reward in the sum the accuracy
# term anchors the policy. R1 §2.3.4 scores helpfulness on the final *summary* only, "to minimise interference with the
# underlying reasoning process" — the reward model here reads the whole response, which is how it can reach the checks.
#
# ## 6. Distillation vs RL on a small student, at equal compute
#
# R1 distils its outputs into small dense models and finds this beats RL on the small model itself. Here the teacher is
# the recipe's final model (rejection-sampling SFT, `experiments/r1/rs_sft`), as in R1; the student a smaller dslearn model pretrained on the same base corpus. One arm SFTs the student
# on the teacher's verified samples, the other runs GRPO on the student until it has spent the same student FLOPs
# (`dslearn.rl.distill`: 6N per trained token, 2N per forward token; the teacher's sampling is reported, not charged):

# %%
d = distill_info
print(f"teacher {d['teacher']}: held-out pass@1 {d['teacher_eval']['pass@1']:.1%}; student {d['student_params']:,} "
      f"parameters, base pass@1 {d['student_base_eval']['pass@1']:.1%}")
ts = d["teacher_samples"]
print(f"teacher samples: {ts['sampled']} sampled, {ts['verified']} verified, {ts['kept']} kept "
      f"({ts['problems_covered']} problems); teacher FLOPs {ts['teacher_flops']:.3g} (not charged)")
print(f"{'run':>14} {'pass@1':>7} {'maj@4':>6} {'format':>7} {'consist.':>8} {'mixed':>6} {'checks':>7} {'length':>7} "
      f"{'student FLOPs':>14} {'steps':>6}")
for name, r in d["runs"].items():
    e = r["eval"]
    print(f"{name:>14} {e['pass@1']:>7.1%} {e['maj@4']:>6.1%} {e['format']:>7.1%} {e['consistency']:>8.2f} "
          f"{e['mixed']:>6.1%} {e['self_check_rate']:>7.1%} {e['response_len']:>7.1f} {r['flops']:>14.3g} {r['steps']:>6}")
curve = [c for n, r in d["runs"].items() if n.startswith("grpo") for c in r["curve"]]
print(f"GRPO groups with equal rewards (no gradient), mean over all steps and seeds: "
      f"{sum(c['zero_variance_share'] for c in curve) / len(curve):.0%}")
for arm in ("distill", "grpo"):
    v = [r["eval"]["pass@1"] for n, r in d["runs"].items() if n.startswith(arm)]
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    print(f"{arm:>8}: pass@1 {m:.1%} ± {sd:.1%} over {len(v)} seeds")

# %% [markdown]
# Read pass@1 first: it says whether either arm learned the arithmetic within this budget. Then format,
# consistency, mixing and self-checks: they say what each arm learned instead — the distilled student copies the
# teacher's readable, single-language, self-checking solutions; GRPO on a student that is never right gets its only
# signal from the format bonus (λ = 0 here, so nothing holds the language), and every group with equal rewards gives no
# gradient. R1's finding is about capability; at this size the miniature can only show the mechanism, not the gain.

# %% [markdown]
# ## 7. Every stage in one table
#
# Held-out problems of difficulty 2–4 in both languages (10 per level and language), k = 4 samples at temperature 1:
# pass@1 = the mean accuracy of the samples (R1's definition), maj@4 = majority vote of the 4, and the response
# statistics. Rows that are means over seeds say how many.

# %%
keys = ("pass@1", "maj@4", "response_len", "self_check_rate", "rm_score")
print(f"{'stage':>28} " + " ".join(f"{k:>15}" for k in keys) + "  seeds")
for name, row in table_info["rows"].items():
    print(f"{name:>28} " + " ".join(f"{row[k]:>15.3f}" for k in keys) + f"  {row.get('seeds', 1)}")
for arm in ("distill", "grpo"):
    rs = [r for n, r in distill_info["runs"].items() if n.startswith(arm)]
    vals = {k: sum(r["eval"][k] for r in rs) / len(rs) for k in keys if k != "rm_score"}
    print(f"{'student, ' + arm:>28} " + " ".join(f"{vals[k]:>15.3f}" if k in vals else f"{'—':>15}" for k in keys)
          + f"  {len(rs)}")
for name, info in recipe_results.items():
    if info is not None:
        e = info["eval"]
        print(f"{'recipe: ' + name:>28} " + " ".join(f"{e[k]:>15.3f}" if k in e else f"{'—':>15}" for k in keys))
for lam in ("0", "0.5"):  # r1_recipe.py rl: reasoning RL from the cold start, final held-out evaluation per seed
    ends = [r["eval_end"] for n, r in (rl_recipe or {"runs": {}})["runs"].items() if f"_lam{lam}_" in n]
    if ends:
        vals = {k: sum(e[f"heldout_{k}"] for e in ends) / len(ends) for k in keys if f"heldout_{k}" in ends[0]}
        print(f"{'recipe: reasoning RL λ=' + lam:>28} "
              + " ".join(f"{vals[k]:>15.3f}" if k in vals else f"{'—':>15}" for k in keys) + f"  {len(ends)}")

# %% [markdown]
# ### Explorer: reward weights → advantages → which sample wins
#
# The four annotated responses to a held-out problem, with the shipped seed-0 RM's scores. Move the weights of the rule
# reward, the consistency term λ and the reward model: the bars are the group advantages GRPO would give each response
# (`group_advantages`), so you can see when the RM's taste for brevity outvotes the accuracy check. (A static version
# is drawn below for readers without a kernel.)

# %%
import ipywidgets as widgets

from dslearn.rl import group_advantages

questions = sorted({r["question"] for r in examples["rows"]})


def show_weights(question=questions[0], w_rule=1.0, lam=0.0, w_rm=1.0):
    rows = [r for r in examples["rows"] if r["question"] == question]
    rule = torch.tensor([r["accuracy"] + 0.1 * r["format"] + lam * r["consistency"] for r in rows])
    rm = torch.tensor([r["rm"] for r in rows])
    reward = w_rule * rule + w_rm * rm
    adv = group_advantages(reward, len(rows)).advantages
    fig, ax = plt.subplots(1, 2, figsize=(11, 3))
    labels = [f"{r['kind']}\n{'right' if r['accuracy'] else 'wrong'}, {r['length']} tok" for r in rows]
    ax[0].bar(labels, rm.tolist(), color="C0")
    ax[0].set(title="RM score r(x, y)")
    ax[1].bar(labels, adv.tolist(), color=["C2" if a > 0 else "C3" for a in adv.tolist()])
    ax[1].set(title=f"advantage with w_rule = {w_rule}, λ = {lam}, w_rm = {w_rm}")
    for a in ax:
        a.tick_params(labelsize=7)
    plt.tight_layout()
    plt.show()
    print(question, "→ the winner:", rows[int(adv.argmax())]["kind"])


widgets.interact(show_weights, question=questions, w_rule=(0.0, 2.0, 0.1), lam=(0.0, 1.0, 0.1), w_rm=(0.0, 2.0, 0.1));

# %%
show_weights(questions[0], w_rule=0.0, w_rm=1.0)  # the static version: the RM alone

# %% [markdown]
# ## 8. Exercises
#
# 1. `dpo_loss(pc, pr, rc, rr, beta, eps)` — DPO with label smoothing, from sequence log-probabilities.
# 2. `bradley_terry(r_chosen, r_rejected)` — the reward model's loss.
# 3. `helpfulness_rule(a, b, min_gap)` — the documented preference rule on two `Candidate`s.
# 4. `grpo_flops(n_params, prompt_tokens, response_tokens, mu, beta)` — one GRPO step's student FLOPs.

# %%
from dslearn.exercises import check


def my_dpo_loss(pc, pr, rc, rr, beta, eps):
    raise NotImplementedError  # your code here

def my_bradley_terry(r_chosen, r_rejected):
    raise NotImplementedError  # your code here

def my_helpfulness_rule(a, b, min_gap):
    raise NotImplementedError  # your code here

def my_grpo_flops(n_params, prompt_tokens, response_tokens, mu, beta):
    raise NotImplementedError  # your code here

for name, fn in [("dpo_loss", my_dpo_loss), ("bradley_terry", my_bradley_terry),
                 ("helpfulness_rule", my_helpfulness_rule), ("grpo_flops", my_grpo_flops)]:
    print(check(name, fn))

# %% [markdown]
# <details><summary>Solutions</summary>
#
# ```python
# def my_dpo_loss(pc, pr, rc, rr, beta, eps):
#     d = beta * ((pc - rc) - (pr - rr))
#     return (-(1 - eps) * F.logsigmoid(d) - eps * F.logsigmoid(-d)).mean()
#
# def my_bradley_terry(r_chosen, r_rejected):
#     return -F.logsigmoid(r_chosen - r_rejected).mean()
#
# def my_helpfulness_rule(a, b, min_gap):
#     if a.correct != b.correct:
#         return a.correct
#     return a.correct and len(a.response) + min_gap <= len(b.response)
#
# def my_grpo_flops(n_params, prompt_tokens, response_tokens, mu, beta):
#     t = prompt_tokens + response_tokens
#     return 2 * n_params * t * (2 + (beta > 0)) + 6 * n_params * t * mu
# ```
# </details>
#
# ## 9. The article, next to the report
#
# - *"Accuracy reward … e.g. equation solvers for step-by-step proof checking."* R1's rule-based accuracy reward checks
#   the **final answer** (in a required format, e.g. a box) and, for code, runs test cases; it does not check steps.
#   Section 2 shows what that means: a wrong step with a right answer scores full marks. R1 also says it did not use
#   process reward models, citing reward hacking and the cost of annotating steps.
# - *"Cold-start … common sense Q&A, basic math, standard instruction tasks."* R1's cold start is thousands of long,
#   readable chain-of-thought samples for reasoning; the non-reasoning data (writing, factual QA, self-cognition, about
#   200k samples from DeepSeek-V3's pipeline) enters at the rejection-sampling stage, beside about 600k reasoning samples.
# - *"Using a combination of automatic verifiers and some human checks."* R1 filters by rules, and for data without a
#   rule uses DeepSeek-V3 as a generative judge; it also drops mixed-language, long-paragraph and code-block chains of
#   thought. The base model (not the RL checkpoint) is then fine-tuned on the result — as `rejection_sampling_sft` does.
# - *"Rewards may come from … preference models (trained from user preference pairs)."* Yes, and with a detail that
#   matters here: helpfulness is judged on the final summary only, harmlessness on the whole response. Section 5's
#   probe shows what a whole-response helpfulness RM can do to the reasoning.
# - *Distillation.* R1 reports that distilling into small models beats large-scale RL on them (and that RL on top of a
#   distilled model helps further). Section 6 is the miniature's version at equal student compute — read its seeds.
#
# ## Recap
#
# - R1 = cold start → reasoning RL (+ language consistency) → rejection sampling and SFT **from the base** → RL for all
#   scenarios (rules + learned rewards); DeepSeek-LLM = SFT → DPO. Every stage here is a function in `dslearn.rl`, each a
#   step function on the one `TrainingLoop`, with exact resume.
# - Preference pairs come from a documented rule; a Bradley–Terry RM learns it only as far as its held-out accuracy says;
#   `dpo_loss` equals TRL's.
# - A learned reward is a proxy: optimise it alone and watch the rule metrics.
#
# **Next:** chapter 10 assembles everything into one miniature V3/R1, pretrained and post-trained end to end.
