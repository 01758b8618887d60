# %% [markdown]
# # 10 · The capstone: one miniature DeepSeek-V3/R1, assembled from every chapter and trained stage by stage
#
# Nine chapters built the parts. This one builds **nothing new**: it picks DeepSeek-V3's choices in one config, sizes
# the model with chapter 01's *own* fitted scaling laws, and runs the stages V3 and R1 went through:
#
# 1. **pretraining** with fill-in-the-middle, V3's learning-rate shape and batch ramp, the aux-loss-free balance and
#    multi-token prediction, on Python text mixed with chapter 09's world of worked additions;
# 2. **context extension** with YaRN;
# 3. **R1's post-training** on chapter 09's tasks: cold-start SFT → reasoning GRPO with the language-consistency
#    reward → rejection-sampling SFT (from the long-context base, as R1 does) → a final GRPO stage;
# 4. **evaluation** of every stage's checkpoint in one table (bits/byte, long-context loss, pass@1 and maj@k on
#    held-out problems, format and consistency, MaxVio, MTP acceptance);
# 5. **export** to Hugging Face format, loaded by `transformers` and checked token for token;
# 6. a **report**.
#
# The command that does it is `dslearn capstone`; this notebook runs a reduced version of the very same pipeline
# live, then reads the shipped default run.
#
# **You will see**: the assembly as a diagram drawn from the config · the sizing derivation · the accounting beside
# V3 (parameters, FLOPs/token, KV cache) · every stage run live · what each stage changed, in numbers · the
# exported model loaded by `transformers` · exercises.
#
# Paper sections: V3 §2 (architecture), §3.3 (FP8), §4.1–4.3 (pre-training data, hyper-parameters, long context);
# R1 §2.3 (the multi-stage recipe); DeepSeek-LLM §3 (scaling laws).
#
# **Symbols** used across the course (and the letters whose meaning changes between chapters) are listed in the [glossary](../docs/glossary.md).
#
# **One place where we depart from chapter 09, measured.** Chapter 01's laws size this model for the default run's
# pretraining budget (section 2), and the model they pick is tiny. `experiments/capstone/task_size.py` pretrains that width on chapter 09's
# world alone: it learns the 2-digit additions but not the 3- and 4-digit ones (section 5 prints the figures).
# So the capstone's post-training works on the 2-digit level, in both languages; everything else is chapter 09's.

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, Markdown, display
from matplotlib.patches import FancyBboxPatch

from dslearn.capstone import (
    POST_TRAINING,
    accounting_table,
    derivation,
    reduced_plan,
    run,
    size_for_budget,
    stage_names,
)
from dslearn.config import get_preset
from dslearn.paths import experiments_dir

torch.set_num_threads(1)  # a model this small runs as fast on one thread, and steadier on shared cores
SHIPPED = experiments_dir("capstone") / "run"
config = get_preset("mini-v3")
print("stages:", " → ".join(stage_names()))
print("of which post-training (chapter 09):", ", ".join(s.name for s in POST_TRAINING))

# %% [markdown]
# ## 1. The assembly: every choice is a config field
#
# Each box is one field of the `mini-v3` preset and the chapter that built what it chooses. `dslearn.model.parts`
# turns these fields into modules; nothing else in the capstone decides how the model computes.

# %%
c = config
rows = [
    ("attention", f"MLA: d_c={c.kv_lora_rank}, d_c'={c.q_lora_rank}, d_h^R={c.qk_rope_head_dim} (decoupled RoPE key)", "02"),
    ("MLA path", f"mla_impl='{c.mla_impl}' to train; 'absorbed' to decode (with_config)", "02"),
    ("feed-forward", f"DeepSeekMoE: {c.n_shared_experts} shared + {c.n_routed_experts} routed, top-{c.num_experts_per_tok}; "
                     f"first {c.first_k_dense_replace} layer dense", "03"),
    ("gate", f"{c.scoring_func} affinities, normalised top-K, × {c.routed_scaling_factor}", "04"),
    ("routing", f"{c.topk_method}: {c.n_group} groups (nodes), a token reaches {c.topk_group}", "04"),
    ("balance", f"aux-loss-free bias γ={c.bias_update_speed} (then 0) + sequence-wise α={c.seq_aux_loss_alpha}", "04"),
    ("linear", f"linear_impl='{c.linear_impl}' (or 'fp8': V3's block-scaled FP8 GEMMs)", "05"),
    ("MTP", f"D={c.num_nextn_predict_layers}, λ={c.mtp_loss_weight} → {c.mtp_loss_weight_final}", "07"),
    ("size", f"d={c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads, context "
             f"{c.max_position_embeddings}: chapter 01's laws", "01"),
]
fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 0.6))
for i, (field, text, chapter) in enumerate(rows):
    y = len(rows) - 1 - i
    ax.add_patch(FancyBboxPatch((0, y + 0.1), 2.2, 0.8, boxstyle="round,pad=0.02", fc="#a9c8ec", ec="0.3"))
    ax.text(1.1, y + 0.5, field, ha="center", va="center", fontsize=9, weight="bold")
    ax.add_patch(FancyBboxPatch((2.5, y + 0.1), 8.0, 0.8, boxstyle="round,pad=0.02", fc="#f4f4f4", ec="0.6"))
    ax.text(2.65, y + 0.5, text, va="center", fontsize=8.5)
    ax.text(10.8, y + 0.5, f"ch. {chapter}", va="center", fontsize=8.5, color="0.35")
ax.set_xlim(0, 11.6)
ax.set_ylim(0, len(rows))
ax.axis("off")
ax.set_title("mini-v3: DeepSeek-V3's choices, one config field each")
plt.show()

# %% [markdown]
# ## 2. How big? Chapter 01's laws decide
#
# DeepSeek-LLM sizes a model from its compute budget $C$: $M_{opt}(C)$ FLOPs per token and $D_{opt} = C/M_{opt}$
# tokens, with batch and learning rate from the hyper-parameter laws. The capstone uses the laws chapter 01 fitted
# on *our* runs (`experiments/scaling/fits.json`), not the paper's constants. The family keeps every V3 choice and
# scales only the widths; the width whose $M$ is nearest $M_{opt}$ becomes the preset (a test holds the preset to
# this derivation).

# %%
# NBVAL_CHECK_OUTPUT
size = size_for_budget()
print(derivation(size))

# %% [markdown]
# The law's exponent has a wide uncertainty (the ± above), and it was fitted on dense 2-layer models; still, its
# answer is clear: at two million million FLOPs, the compute-optimal model is *tiny*, and more of the budget should
# go into data. A bigger model trained on fewer tokens would be worse at the same cost.
#
# ## 3. Beside DeepSeek-V3
#
# The same accounting functions (`dslearn.scaling`, `dslearn.attention.cache_accounting`) applied to both configs.

# %%
# NBVAL_CHECK_OUTPUT
rows, text = accounting_table(config)
print(text)

# %% [markdown]
# Two ratios tell the architecture's story at both scales: the **activated fraction** (V3 activates 5.6% of its
# parameters per token; our 8 experts with top-2, a shared expert and a relatively large embedding activate far
# more) and the **KV cache per token**, which MLA keeps at $(d_c + d_h^R)$ per layer.
#
# ## 4. Every stage, live (reduced)
#
# `reduced_plan` is the `--quick` plan shrunk to seconds: the same model and stages at a 32-token context (YaRN
# then extends it far enough to hold chapter 09's longest training pair), a dozen pretraining steps, two steps of
# each post-training stage on a handful of problems. Its numbers show that every stage runs end to end — export
# included, with `transformers` loading the folder and its greedy continuations compared with ours — not what the
# model learns; for that, see the shipped default run below.

# %%
out = Path(tempfile.mkdtemp()) / "capstone"
done = run(out, plan=reduced_plan(seq_len=32, steps=12, long_steps=4), progress=False)

# %%
ev = done["evaluate"]
display(Markdown("| stage | " + " | ".join(ev["columns"][1:]) + " |\n|" + "---|" * len(ev["columns"]) + "\n" +
                 "\n".join("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])
                                             for c in ev["columns"]) + " |" for r in ev["rows"])))
ex = done["export"]
print(f"export: {ex['architecture']} from transformers, max |logit diff| {ex['max_abs_logit_diff']:.2e}, "
      f"greedy equal for {ex['greedy_equal']} of {ex['prompts']} prompts")

# %% [markdown]
# Stop the command at any moment and run it again: finished stages are skipped and the interrupted one resumes from
# its newest checkpoint, computing exactly what an uninterrupted run computes (`tests/test_capstone.py` kills runs
# with SIGKILL in the middle of pretraining, of a GRPO stage and of the rejection-sampling SFT, and compares logs and
# weights bit for bit).
#
# The same command runs on several processes: `torchrun --nproc-per-node 2 -m dslearn capstone`. The stages that
# train with `Trainer` (pretrain, long_context, both SFT stages) give each process one of a step's two micro-batches
# and sum the gradients; GRPO, evaluation and export run on rank 0 while the other rank waits. A sum of two numbers
# does not depend on their order, so the default run on two processes should end with the one-process run's
# weights bit for bit. The last output of section 5 shows the comparison of the two shipped runs
# (`experiments/capstone/compare_runs.py`): weights, losses, the evaluation table and each stage's wall time.
#
# ## 5. The shipped default run
#
# `dslearn capstone` with the default plan was run once and its results copied to `experiments/capstone/run/` by
# `experiments/capstone/ship.py`; `experiments/capstone/README.md` says on what machine and under what load. The
# cell below reads what it shipped: the plan, the wall time of every stage, the evaluation table, and the greedy
# answers of the model before and after post-training. Wall times depend on the machine; the losses, the
# accuracies, the YaRN figures and the export check do not.

# %%
if (SHIPPED / "report.md").is_file():
    plan = json.loads((SHIPPED / "plan.json").read_text())
    summary = {p.parent.name: json.loads(p.read_text()) for p in SHIPPED.glob("*/summary.json")}
    lc_plan, post = plan["long_context"], plan["post_training"]
    print(f"plan: {plan['pretrain']['steps']} pretraining steps at {plan['pretrain']['seq_len']} tokens, "
          f"{lc_plan['train']['steps']} at {lc_plan['context']}; post-training on "
          f"{' and '.join(map(str, post['levels']))}-digit additions")
    walls = {name: round(summary[name]["wall_s"]) for name in stage_names() if name in summary}
    print(f"wall times (s): {walls}, total {sum(walls.values())} s")
    lc = summary["long_context"]
    print(f"YaRN at {lc['context']} tokens: plain RoPE {lc['long_bpb_plain_rope']:.3f} → YaRN untrained "
          f"{lc['long_bpb_yarn_untrained']:.3f} → after the stage {lc['long_bpb_after']:.3f} bits/byte")
    rs = summary["rejection_sampling_sft"]
    print(f"rejection sampling: {rs['rs_kept']} of {rs['rs_sampled']} samples kept")
    table = json.loads((SHIPPED / "evaluate" / "table.json").read_text())
    cols = [c for c in table["columns"] if not c.startswith("pass@1_d")]
    display(Markdown("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + "\n".join(
        "| " + " | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |"
        for r in table["rows"])))
    report = (SHIPPED / "report.md").read_text()
    samples = report[report.index("Greedy answers to held-out problems"):].split("\n## ")[0]
    display(Markdown(samples))
    for name in ("losses.png", "pretraining.png", "experts.png", "rl.png"):
        display(Image(filename=str(SHIPPED / "report" / name)))
    print("why 2-digit additions (experiments/capstone/task_size.txt):")
    print(open(experiments_dir("capstone", "task_size.txt")).read())
    print("the same run on 2 processes (experiments/capstone/two_processes.txt):")
    print(open(experiments_dir("capstone", "two_processes.txt")).read())
else:
    print("no shipped run yet: `dslearn capstone` then `python experiments/capstone/ship.py runs/capstone`")

# %% [markdown]
# **Reading the shipped run.** Follow the pass@1 column down the stages, remembering that 60 problems × 4 samples
# leave about ±0.05 of sampling noise. Pretraining met the template (format is high) but rarely lands the sum. The
# **cold start is the stage that pays**: accuracy and consistency jump, at a price in Python bits/byte (hundreds of
# steps on worked additions alone). **GRPO does not help at this size**: with most groups of eight holding no correct
# answer, most advantages are zero (the RL figure's accuracy barely moves). In this run pass@1 fell after GRPO; in
# the run shipped before it, which differed only in the SFT stages' float summation order, it rose by a little, so
# the sign is noise. What GRPO does reach is consistency, the reward's λ term. **Rejection-sampling SFT restarts from the long-context base**, as R1 does: it keeps Python
# (bits/byte back near the base's) but teaches less than the cold start did, because a model that is right about
# one time in seven yields few verified samples. R1 §4.1 found the same direction at far larger scale: for small
# models, distilling a stronger model beats RL on the small model itself (chapter 09 measures distillation). The
# last cell's output is why the task is 2-digit additions: the same width pretrained on chapter 09's world alone
# learns 2-digit sums and not the 2–4-digit mix. `experiments/capstone/README.md` reads the run number by number.
#

# %% [markdown]
# ## 6. Exercises
#
# 1. **MHA instead of MLA.** Predict the KV cache per token of `mini-v3` with `attention_type="mha"` (2 heads of
#    16), then check it with `accounting`.
# 2. **No bias update.** Set `bias_update_speed=0` in a reduced plan's model and compare `moe_maxvio` in the
#    evaluation table with the run above. Which way should it move, and why is one reduced run not enough to say?
# 3. **No MTP.** With `num_nextn_predict_layers=0`, what happens to the model FLOPs per token that the MFU counts
#    (`dslearn.train.mfu.model_flops_per_token`)?
# 4. **No consistency reward.** Set λ = 0 for both GRPO stages (`plan["post_training"]["reasoning_rl"]["lam"]`
#    and `["final_rl"]["lam"]`) in a `--quick`-sized plan and run it into a new directory. Which column of the
#    evaluation table should move, and in which direction? (Chapter 09 measured it over three seeds.)
#
# <details><summary>Solutions</summary>
#
# 1. `from dslearn.capstone import accounting; accounting(config.replace(attention_type="mha", head_dim=16))`:
#    MHA caches $2 n_h d_h$ = 64 numbers per token per layer, against MLA's $d_c + d_h^R$ = 32.
# 2. `plan = reduced_plan(); plan["model"]["bias_update_speed"] = 0.0; run(tmp, plan=plan)`. Without the bias,
#    nothing pushes load back from popular experts, so MaxVio should rise; but over a dozen steps the bias has moved
#    at most 12·γ, so differences are noise: compare over the default run's length (`--quick` at least).
# 3. It drops by `mtp_flops_per_token(config)`: the MTP block, its projection and its pass through the shared head.
# 4. `from dslearn.capstone import make_plan; plan = make_plan(quick=True)`, set both `lam` to 0.0, then
#    `run(tmp, plan=plan)`. Without the consistency reward nothing stops a `da` prompt's reasoning from drifting
#    into `en`, where the base's solutions slip less, so `consistency` is the column to watch. Chapter 09 found the
#    drift in GRPO straight from the base; after a cold start that already writes one language per answer, λ = 0
#    kept consistency high there too. So expect little movement, and one seed of a few steps cannot tell you more.
# </details>
#
# ## 7. Where every chapter went
#
# | chapter | in the capstone |
# |---|---|
# | 00 baseline | the training core (`Trainer`/`TrainingLoop`), byte data, checkpoints |
# | 01 scaling laws | the preset's width, the budget's tokens, batch and learning rate |
# | 02 MLA | the attention (naive to train, absorbed to decode), the KV-cache accounting |
# | 03 DeepSeekMoE | shared + fine-grained routed experts, the first dense layer |
# | 04 V3 balancing | sigmoid gate, node-limited routing, bias γ with its end, sequence-wise α, MaxVio |
# | 05 FP8 | `dslearn capstone --fp8`: `linear_impl="fp8"` in every linear layer, routed experts included (not the default: on CPU the FP8 GEMMs are emulated); the export ships the weights unquantised |
# | 06 DualPipe | not in the capstone, whose parallelism is data parallel: `torchrun --nproc-per-node 2 -m dslearn capstone` splits each pretraining and SFT step over two processes and computes the one-process run (GRPO and evaluation run on rank 0). Pipeline and expert parallelism are chapter 06's: the capstone's model, MTP included, takes one step on PP = 2 × EP = 2 processes under DualPipeV with the one-process loss (`tests/test_parallel_expert.py`), but the pipeline does not train with them |
# | 07 MTP | the MTP module, λ's switch, the acceptance column |
# | 08–09 GRPO, R1 | the post-training stages (`POST_TRAINING`): cold-start SFT, GRPO with the consistency reward, rejection sampling, final GRPO; pass@1 / maj@k in the table |
