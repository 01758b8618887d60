# %% [markdown]
# # 08 · GRPO and R1-Zero in miniature
#
# DeepSeek-R1-Zero was trained with reinforcement learning straight from a base model, with no supervised
# reasoning data: the model writes `<think>…</think><answer>…</answer>`, a program checks the answer, and GRPO
# pushes up whatever got rewarded. This notebook rebuilds every piece at a size that runs here.
#
# **In this notebook you will**
# 1. generate verifiable tasks and see why the base model matters (pass@1 vs pass@k);
# 2. write rule-based rewards and watch them refuse the known gaming tricks; run model-written code in a sandbox;
# 3. build GRPO's objective — group advantages, the clipped ratio, the k3 KL — and prove it equals `dslearn.rl`;
# 4. run GRPO live from our base model, then read the shipped runs: three seeds, on-policy REINFORCE, and a KL
#    penalty;
# 5. put the reports' claims next to what this miniature shows.
#
# **Paper sections:** DeepSeekMath (arXiv 2402.03300) §4.1 (GRPO); DeepSeek-R1 (arXiv 2501.12948) §2.2 (R1-Zero:
# algorithm, rewards, template) and §2.3 (the R1 pipeline, next chapter).
#
# Symbols used across chapters (G, A_i, ρ, ε, β, …) are listed in the course's [symbol glossary](../docs/glossary.md).

# %%
import json
import math

import matplotlib.pyplot as plt
import torch

from dslearn.diagrams.grpo import grpo_loop
from dslearn.paths import experiments_dir
from dslearn.rl import (
    accuracy_reward,
    arithmetic,
    code,
    countdown,
    format_reward,
    group_advantages,
    grpo_loss,
    run_code,
    sandbox_mode,
)
from dslearn.rl.base_model import base_corpus, carry_problems
from dslearn.rl.sandbox import why_not_isolated

RESULTS = experiments_dir("rl")  # the shipped runs
summary = json.loads((RESULTS / "summary.json").read_text())

# %% [markdown]
# ### The loop in one picture
#
# One GRPO step (DeepSeekMath §4.1, R1 §2.2): sample a group of outputs per prompt, score each with a rule, compare
# each score with its group's, and push the policy towards the better-than-average outputs — clipped, and optionally
# held near a frozen reference. Every box is a section below. (`dslearn.diagrams.grpo` draws it.)

# %%
grpo_loop()
plt.show()

# %% [markdown]
# ## 1. Verifiable tasks
#
# Three families, generated from seeds with difficulty knobs. A problem is *held out* when the hash of its prompt
# falls in the first 10 of 100 buckets, so training and evaluation never share a prompt.

# %%
# NBVAL_CHECK_OUTPUT
for p in arithmetic(2, digits=3, terms=3, seed=0) + countdown(2, n_numbers=4, seed=0) + code(2, seed=0):
    print(f"[{p.family:>10}, {p.split:>8}] {p.question}\n{'':>22} reference: {p.answer.splitlines()[-1].strip()}")

# %% [markdown]
# ### The base model
#
# GRPO learns only from groups whose rewards differ: if all G samples are wrong (or all right), every advantage is 0.
# So the base model must solve *some* problems — pass@1 low, pass@G high. Ours (`dslearn.rl.base_model`) is a tiny
# dslearn model pretrained on two-digit additions that need a carry, with worked solutions in which a share **forget
# the carry** — imperfect data, like a web corpus full of half-right reasoning. Three samples, each labelled by checking its sum:

# %%
import re

for sample in base_corpus(3, slip_rate=0.7, seed=4).decode().strip().split("\n\n"):
    a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", sample).groups())
    written = int(re.search(r"<answer>(\d+)</answer>", sample).group(1))
    print(sample)
    print("   ↳ right" if written == a + b else f"   ↳ carry slip: the tens forgot the carry ({a} + {b} = {a + b})")
base = summary["base"]
print(f"\npretraining: {base['steps']} steps, slip rate {base['slip_rate']}, {base['pretrain_s']:.0f} s")

# %%
# NBVAL_CHECK_OUTPUT
from dslearn.rl.base_model import N_EVAL, load_base
from dslearn.rl.rollout import pass_at_k

held_out = carry_problems("held_out")[:N_EVAL]
base_model = load_base()
ev = pass_at_k(base_model, held_out, 8, seed=0)
print(f"base model: {base_model.num_parameters():,} parameters")
print(f"base model on {N_EVAL} held-out problems: pass@1 {ev['pass@1']:.0%}, pass@8 {ev['pass@8']:.0%}, "
      f"greedy {ev['greedy']:.0%}")
print("pass@1 in the 10–50% band:", 0.10 <= ev["pass@1"] <= 0.50, "| pass@8 above 50%:", ev["pass@8"] > 0.5)

# %% [markdown]
# Greedy decoding picks the base model's *more likely* habit — here, forgetting the carry — while sampling finds the
# right answer often enough that most groups of 8 contain it. That is exactly the situation GRPO can exploit.
#
# ## 2. Rewards, and how they get gamed
#
# R1-Zero uses two rule-based rewards: **accuracy** (the answer inside `<answer>` is checked by a program) and
# **format** (reasoning in `<think>`, answer in `<answer>`). Public reproductions found policies that repeat tags,
# leave answers empty, write a second answer after the first, or stuff long text in to collect the format bonus. Our
# checker gives all of those nothing; arithmetic answers are evaluated by an AST whitelist, never `eval`:
#
# **Article vs report.** The overview article says R1's accuracy reward verifies answers "using mathematical equation
# solvers for step-by-step proof checking". The R1 report (§2.2.2) checks the **final answer** only — for math, the
# answer in a specified format (a box), for code, the compiler and test cases — and never grades the reasoning steps;
# like ours, a response with wrong working and a right answer gets full accuracy reward. (The article also passes over
# how the loss is normalised; see §3 for R1's per-output form against DeepSeekMath's per-token form.)

# %%
# NBVAL_CHECK_OUTPUT
p = carry_problems("train")[0]
right = int(p.answer)
attempts = {
    "honest, right": f"<think>work</think><answer>{right}</answer>",
    "honest, wrong": f"<think>work</think><answer>{right - 10}</answer>",
    "no thinking": f"<answer>{right}</answer>",
    "two answers": f"<think>x</think><answer>{right - 10}</answer><answer>{right}</answer>",
    "text after the answer": f"<think>x</think><answer>{right - 10}</answer> or {right}",
    "empty answer": "<think>x</think><answer> </answer>",
    "an expression, not a number": f"<think>x</think><answer>{p.question[8:-1]}</answer>",
    "code in the answer": "<think>x</think><answer>__import__('os').getcwd()</answer>",
}
print(p.question)
for name, text in attempts.items():
    print(f"{name:>28}: accuracy {accuracy_reward(p, text):.0f}, format {format_reward(text):.0f}")

# %% [markdown]
# ### Code answers run in a sandbox
#
# For the code family the answer is a Python function, run against hidden test cases by `dslearn.rl.run_code` inside
# **bubblewrap** (Debian's `bubblewrap`, the sandbox under Flatpak): every namespace unshared (user, pid, network, IPC,
# UTS, cgroup), a read-only view of nothing but the interpreter and its libraries, a size-limited tmpfs as the only
# writable disk, a cgroup bounding memory and process count across the whole box, a wall clock, and results read back
# through a capped pipe, never from a file the program could replace. It fails closed: where bubblewrap cannot run,
# `run_code` refuses (`SandboxUnavailable` says how to install it, or how to opt in to an unprotected mode explicitly),
# so this cell shows the code task only when isolation works here. The module docstring lists what it does not stop
# (it is not a VM); the test suite throws over a hundred hostile programs at it: fork and memory bombs, escapes, SysV
# IPC, UNIX sockets, symlinked or FIFO results, forged outputs.

# %%
mode = sandbox_mode()
print("sandbox mode here:", mode)
if mode != "isolated":  # fail closed: never run model-written code unprotected in a notebook
    print("skipping the code task:", why_not_isolated())
else:
    task = code(1, seed=3)[0]
    print(task.question)
    for label, src in [("reference", task.answer), ("infinite loop", "def f(*a):\n    while True:\n        pass"),
                       ("reads the parent's files", "def f(*a):\n    return open('/etc/shadow').read()")]:
        r = run_code(src, "f", list(task.tests))
        print(f"{label:>25}: reward {r.reward:.0f}, passed {r.passed}/{r.total}"
              + (f" ({r.error[:60]})" if r.error else ""))

# %% [markdown]
# ## 3. GRPO, step by step
#
# For each prompt, G sampled responses $o_1..o_G$ with rewards $r_i$. No value network: the group is the baseline.
#
# $$A_i = \frac{r_i - \mathrm{mean}(r)}{\mathrm{std}(r)}, \qquad \rho_{i,t} = \frac{\pi_\theta(o_{i,t})}{\pi_{old}(o_{i,t})}, \qquad
# \mathbb{D}_{i,t} = \frac{\pi_{ref}}{\pi_\theta} - \log\frac{\pi_{ref}}{\pi_\theta} - 1$$
#
# $$\mathcal{L} = -\frac{1}{G}\sum_i \frac{1}{|o_i|}\sum_t \Big[\min\big(\rho_{i,t} A_i,\ \mathrm{clip}(\rho_{i,t}, 1-\varepsilon, 1+\varepsilon) A_i\big) - \beta\, \mathbb{D}_{i,t}\Big]$$
#
# Written small, on random log-probabilities, then compared with `dslearn.rl.grpo_loss` (which the test suite
# holds equal to TRL's `GRPOTrainer` loss for four aggregation variants):

# %%
g = torch.Generator().manual_seed(0)
G, T = 4, 6
rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
mask = (torch.arange(T)[None] < torch.tensor([6, 4, 5, 2])[:, None]).float()      # responses of different lengths
old = -torch.rand(G, T, generator=g) * 2                                         # log π_old of the sampled tokens
logp = (old + 0.3 * torch.randn(G, T, generator=g)).requires_grad_()            # log π_θ after some updates
ref = old + 0.1 * torch.randn(G, T, generator=g)                                 # log π_ref (the base model)
eps, beta = 0.2, 0.04

adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)                        # 1. group advantages
ratio = torch.exp(logp - old)                                                    # 2. importance ratio
surrogate = torch.min(ratio * adv[:, None], ratio.clamp(1 - eps, 1 + eps) * adv[:, None])   # 3. clipped
kl = torch.exp(ref - logp) - (ref - logp) - 1                                    # 4. k3 KL to the reference
per_token = -(surrogate - beta * kl)
mine = ((per_token * mask).sum(1) / mask.sum(1)).mean()                          # 5. 1/|o_i|, then 1/G

theirs, metrics = grpo_loss(logp, old, group_advantages(rewards, G).advantages, mask, ref_logp=ref, beta=beta,
                            eps_low=eps)
torch.testing.assert_close(mine, theirs)
print(f"from scratch {mine.item():.6f} == dslearn {theirs.item():.6f}; clipped tokens: {metrics['clip_fraction']:.0%}")

# %% [markdown]
# **Per token or per output?** DeepSeekMath (§4.1.2) writes GRPO per *token*: each token has its own ratio
# $\rho_{i,t}$, clipped on its own, and the per-token terms are averaged over the response's $|o_i|$ tokens, then over the
# $G$ responses — the formula above. DeepSeek-R1 (§2.2.1, Eq. 1) writes it per *output*: one ratio
# $\pi_\theta(o_i|q)/\pi_{old}(o_i|q)$ for the whole response, clipped once, and one KL term per response. dslearn follows
# DeepSeekMath's per-token form, as TRL does: `loss_type="grpo"` is exactly $\frac1G\sum_i \frac1{|o_i|}\sum_t$ of the
# per-token terms. On the same tensors the two forms are different numbers — a sequence ratio is the *product* of its
# token ratios, so it leaves the clip range far sooner:

# %%
with torch.no_grad():
    seq_ratio = torch.exp(((logp - old) * mask).sum(1))                             # π_θ(o_i|q) / π_old(o_i|q)
    d = ((ref - logp) * mask).sum(1)                                               # log π_ref(o_i|q) / π_θ(o_i|q)
    per_output = -(torch.min(seq_ratio * adv, seq_ratio.clamp(1 - eps, 1 + eps) * adv)
                   - beta * (torch.exp(d) - d - 1)).mean()
    tok_clipped = ((ratio < 1 - eps) | (ratio > 1 + eps)).float()
print(f"R1's per-output form {per_output.item():.4f}   DeepSeekMath's per-token form (dslearn) {mine.item():.4f}")
print("sequence ratios:", [f"{r:.2f}" for r in seq_ratio.tolist()], "| outside [1-ε, 1+ε]:",
      int(((seq_ratio < 1 - eps) | (seq_ratio > 1 + eps)).sum()), "of 4 responses;",
      f"per token: {(tok_clipped * mask).sum().item():.0f} of {mask.sum().item():.0f} tokens")

# %% [markdown]
# The aggregation in step 5 is a choice with consequences: averaging per response gives each response equal weight
# however long it is, so long wrong answers are penalised *less* per token — one of Dr. GRPO's criticisms.
# `loss_type="bnpo"/"dapo"` average over tokens; `"dr_grpo"` divides by a constant and drops the std scaling.
#
# ### Explorer: a group's rewards → advantages → loss
#
# Move ε and β and the rewards of a group of four. Left: each response's advantage. Right: what one token of each
# response contributes to the objective (to maximise) as a function of its ratio ρ, **when π_ref = π_old** — true in the
# first GRPO step, where the sampling policy is the base: the clipped surrogate minus β·D with D = 1/ρ + log ρ − 1. β bends
# every curve down on both sides of ρ = 1 (a response with A = 0 feels only the KL). (A static version is drawn below
# for readers without a kernel.)

# %%
import ipywidgets as widgets


def show(r1=1.0, r2=0.0, r3=0.0, r4=1.0, eps=0.2, beta=0.04):
    r = torch.tensor([r1, r2, r3, r4])
    a = group_advantages(r, 4).advantages
    rho = torch.linspace(0.5, 1.5, 101)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    ax[0].bar(range(1, 5), a.tolist(), color=["C2" if v > 0 else "C3" for v in a.tolist()])
    ax[0].set(xlabel="response", ylabel="advantage A_i", title=f"rewards {r.tolist()}")
    for ai in a.tolist():
        kl = 1 / rho + torch.log(rho) - 1                  # k3 with π_ref = π_old: π_ref/π_θ = 1/ρ
        obj = torch.min(rho * ai, rho.clamp(1 - eps, 1 + eps) * ai) - beta * kl
        ax[1].plot(rho, obj, label=f"A = {ai:+.2f}")
    ax[1].set(xlabel="ratio ρ = π_θ / π_old", ylabel="clipped surrogate − β·D",
              title=f"per-token objective, ε = {eps}, β = {beta}")
    ax[1].legend(fontsize=7)
    plt.tight_layout()
    plt.show()

widgets.interact(show, r1=(0.0, 1.0, 0.1), r2=(0.0, 1.0, 0.1), r3=(0.0, 1.0, 0.1), r4=(0.0, 1.0, 0.1),
                 eps=(0.05, 0.5, 0.05), beta=(0.0, 0.2, 0.01));

# %%
show(beta=0.1)  # the static version: two right and two wrong answers, a visible KL term

# %% [markdown]
# ## 4. GRPO, live
#
# A reduced run from the shipped base model: 10 steps of 16 prompts × 8 samples, the same learning rate as the full
# runs (the other settings are `GRPOConfig`'s defaults, printed with the shipped runs' below), then the held-out
# greedy accuracy again.

# %%
from dslearn.rl.trainer import GRPOConfig, GRPOTrainer

torch.manual_seed(0)
live = GRPOTrainer(load_base(), GRPOConfig(steps=10, prompts_per_step=16, group_size=8, lr=1.5e-4, eval_every=10,
                                           eval_samples=2), carry_problems("train"), held_out[:50])
live_records = live.fit()
evals = [r for r in live_records if r["kind"] == "eval"]
print(f"held-out greedy accuracy: {evals[0]['heldout_greedy']:.0%} -> {evals[-1]['heldout_greedy']:.0%} in 10 steps")

# %%
# NBVAL_CHECK_OUTPUT
print("the live run raised held-out greedy accuracy:", evals[-1]["heldout_greedy"] > evals[0]["heldout_greedy"])

# %% [markdown]
# ## 5. The shipped runs
#
# `python experiments/rl/r1_zero.py` pretrains the base (if missing) and runs five RL runs on the same samples budget
# (40 steps × 16 prompts × G = 8): GRPO with three seeds; **REINFORCE** — on-policy, one update per batch of samples
# (μ = 1), loss −A_i · mean log π(o_i) with the same group-standardised advantages, no ratio, no clipping, no KL; and
# GRPO with a KL penalty β = 0.04. Every setting of every run, read from the shipped summary:

# %%
# NBVAL_CHECK_OUTPUT
from dslearn.rl.trainer import GRPOConfig

for name, s in summary["runs"].items():
    c = GRPOConfig(**{**summary["rl"], **s["overrides"]})
    print(f"{name:>16}: reward = accuracy + {c.w_format} · format | {c.algorithm}, μ = {c.inner_steps}, "
          f"ε = {c.eps_low}, β = {c.beta}, G = {c.group_size}, lr {c.lr:g}, loss_type {c.loss_type!r}, "
          f"T = {c.temperature}, ≤ {c.max_new_tokens} tokens")

# %% [markdown]
# Held-out accuracy over training:

# %%
rows = [json.loads(line) for line in (RESULTS / "runs.jsonl").read_text().splitlines()]
fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
for i, name in enumerate(summary["runs"]):
    ev = [r for r in rows if r["run"] == name and r["kind"] == "eval"]
    tr = [r for r in rows if r["run"] == name and r["kind"] == "train"]
    ax[0].plot([r["step"] for r in ev], [r["heldout_greedy"] for r in ev], "o-", ms=3, color=f"C{i}", label=name)
    ax[1].plot([r["step"] for r in ev], [r["heldout_pass@1"] for r in ev], "o-", ms=3, color=f"C{i}", label=name)
    ax[2].plot([r["step"] for r in tr], [r["zero_variance_share"] for r in tr], color=f"C{i}", alpha=0.7, label=name)
ax[0].set(xlabel="GRPO step", ylabel="held-out accuracy", title="greedy decoding")
ax[1].set(xlabel="GRPO step", ylabel="held-out accuracy", title="pass@1 (sampling, T = 1)")
ax[2].set(xlabel="GRPO step", ylabel="share of groups", title="groups with equal rewards (no gradient)")
for a in ax:
    a.grid(alpha=0.3)
ax[0].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
runs = summary["runs"]
lines = [f"{'run':>16} {'greedy':>16} {'pass@1':>16} {'wall':>6} {'rollout tok/s':>13}"]
for name, s in runs.items():
    lines.append(f"{name:>16} {s['heldout_greedy_start']:>6.0%} -> {s['heldout_greedy_end']:>5.0%} "
                 f"{s['heldout_pass@1_start']:>6.0%} -> {s['heldout_pass@1_end']:>5.0%} {s['wall_s']:>5.0f}s "
                 f"{s['rollout_tokens_per_s']:>13,.0f}")
print("\n".join(lines))
gains = [runs[f"grpo_seed{i}"]["heldout_pass@1_end"] - runs[f"grpo_seed{i}"]["heldout_pass@1_start"] for i in range(3)]
mean = sum(gains) / 3
spread = math.sqrt(sum((x - mean) ** 2 for x in gains) / 2)
print(f"GRPO pass@1 gain over 3 seeds: {100 * mean:+.0f} ± {100 * spread:.0f} percentage points (sample std)")
print("every GRPO seed gained at least 20 points:", min(gains) >= 0.20)

# %% [markdown]
# **GRPO against REINFORCE.** At μ = 1 GRPO's ratio is 1 and its clip inactive, so REINFORCE's update *is* GRPO's
# first inner update (`tests/test_rl_trainer.py` holds the two equal after a step). What separates the runs is GRPO's
# second update per batch of samples — off-policy, made legitimate by the ratio and the clip. Set the gap against the
# seed-to-seed spread before reading anything into it:

# %%
# NBVAL_CHECK_OUTPUT
grpo_end = [runs[f"grpo_seed{i}"]["heldout_pass@1_end"] for i in range(3)]
rf = runs["reinforce_seed0"]["heldout_pass@1_end"]
print(f"final held-out pass@1: GRPO (μ = 2) seeds {', '.join(f'{x:.1%}' for x in grpo_end)};"
      f" REINFORCE (μ = 1, seed 0) {rf:.1%}")
print(f"REINFORCE − GRPO mean: {100 * (rf - sum(grpo_end) / 3):+.1f} percentage points; "
      f"range of the GRPO seeds: {100 * (max(grpo_end) - min(grpo_end)):.1f} points")
print("note:", summary["reruns_note"])

# %% [markdown]
# ## 6. The reports' claims, next to this miniature
#
# - **"RL alone teaches reasoning."** R1-Zero's AIME pass@1 rose from 15.6% to 71.0%. Ours rises too, but read the
#   mechanism honestly: the base model already carried correctly in a minority of its samples; GRPO made that habit
#   dominant. Nothing here shows a *new* skill appearing — at this scale that would be a claim the numbers can't support.
# - **"Responses grow longer during RL."** In R1-Zero the thinking grew to thousands of tokens. Our task has a fixed-length
#   worked solution, and the response length barely moves (see below); there is no room for "self-checking" to emerge,
#   and we don't claim any.
# - **KL.** DeepSeekMath/R1 use a KL penalty to a reference model; public small-model reproductions often drop it. Compare
#   `grpo_kl_seed0` with `grpo_seed0` above.

# %%
# NBVAL_CHECK_OUTPUT
for name, s in runs.items():
    print(f"{name:>16}: mean response length {s['response_len_start']:.1f} -> {s['response_len_end']:.1f} bytes")

# %% [markdown]
# ## 7. Exercises
#
# 1. `group_advantages(rewards, G)` — the group-normalised advantages (rewards given in group order).
# 2. `k3_kl(logp, ref_logp)` — the per-token KL estimator GRPO adds to its loss.

# %%
from dslearn.exercises import check


def my_group_advantages(rewards, G):
    raise NotImplementedError  # your code here

def my_k3_kl(logp, ref_logp):
    raise NotImplementedError  # your code here

print(check("group_advantages", my_group_advantages))
print(check("k3_kl", my_k3_kl))

# %% [markdown]
# ## Recap
#
# - RL from verifiable rewards needs a checker that cannot be fooled (strict format, AST-evaluated answers, code in a
#   sandbox) and a base model that already succeeds sometimes (pass@1 low, pass@G high).
# - GRPO = group-normalised advantages + PPO's clipped ratio + a k3 KL to the reference, with several aggregation
#   variants; ours equals TRL's.
# - From our base model, GRPO lifts held-out accuracy far within a couple of minutes on two CPU cores — by sharpening a
#   habit the base already had.
#
# **Next:** chapter 09 builds the rest of R1's recipe: cold-start SFT, rejection sampling and DPO.
#
# <details><summary>Solutions</summary>
#
# ```python
# def my_group_advantages(rewards, G):
#     r = rewards.view(-1, G)
#     return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()
#
# def my_k3_kl(logp, ref_logp):
#     d = ref_logp - logp
#     return torch.exp(d) - d - 1
# ```
# </details>
