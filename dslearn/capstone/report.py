"""The capstone's report: ``<out>/report.md`` and its figures (``<out>/report/*.png``), from the run's own files.

Every number in the report is read from what the stages wrote (metrics logs, summaries, the evaluation table)
or computed here from the plan (the sizing derivation, the accounting beside V3); nothing is typed in.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..config import ModelConfig
from ..generate import generate
from ..rl.template import STOP, display
from ..train import load_model_from_checkpoint
from . import stages as st
from .sizing import accounting_table, derivation, fitted_laws, size_for_budget


def _subplots(nrows: int, ncols: int, figsize, **kw):
    """A figure that is only ever saved to a file: no pyplot, so no GUI backend is chosen or changed (a notebook
    that writes a report keeps its inline figures)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _smooth(y, n: int = 10):
    y = np.asarray(y, dtype=float)
    if len(y) < n:
        return y
    return np.convolve(y, np.ones(n) / n, mode="valid")


def _fig_losses(ctx, path: Path) -> None:
    names = [s.name for s in ctx.training_stages() if not s.name.endswith("_rl")]  # RL: _fig_rl
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = _subplots(rows, cols, (5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        recs = st.stage_records(ctx, name)
        train = [r for r in recs if r.get("kind") == "train"]
        val = [r for r in recs if r.get("kind") == "val"]
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], alpha=0.4, label="train loss (total)")
        if train and "ce_loss" in train[0]:
            ax.plot([r["step"] for r in train], [r["ce_loss"] for r in train], label="train next-token CE")
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", ms=3, label="held-out CE")
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("nats per byte")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fig_schedule(ctx, path: Path) -> None:
    train = [r for r in st.stage_records(ctx, "pretrain") if r.get("kind") == "train"]
    fig, axes = _subplots(1, 3, (14, 3.4))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["lr"] for r in train])
    axes[0].set_title("learning rate (V3's shape: warm-up, constant, cosine, tail)")
    axes[1].plot(steps, [r.get("batch_size", math.nan) for r in train])
    axes[1].set_title("batch size (sequences; V3's ramp)")
    axes[2].plot(steps, [r.get("mtp/loss1", math.nan) for r in train], label="L_MTP^1 (next-next token)")
    axes[2].plot(steps, [r.get("ce_loss", math.nan) for r in train], label="main next-token CE")
    ax2 = axes[2].twinx()
    ax2.plot(steps, [r.get("mtp/lambda", math.nan) for r in train], "k--", label="λ")
    ax2.set_ylabel("λ")
    axes[2].set_title("multi-token prediction")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fig_experts(ctx, path: Path) -> None:
    train = [r for r in st.stage_records(ctx, "pretrain") if r.get("kind") == "train"]
    cfg = ModelConfig.from_dict(ctx.plan["model"])
    layers = [i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)]
    E = cfg.n_routed_experts
    fig, axes = _subplots(1, 2, (12, 3.6))
    last = train[-1] if train else {}
    load = np.array([[last.get(f"moe/l{i}/expert{j}", math.nan) for j in range(E)] for i in layers])
    im = axes[0].imshow(load, aspect="auto", cmap="viridis")
    axes[0].set_yticks(range(len(layers)), [f"layer {i}" for i in layers])
    axes[0].set_xlabel("routed expert")
    axes[0].set_title(f"expert load at the last step (share; balanced = {1 / E:.3f})")
    fig.colorbar(im, ax=axes[0])
    steps = [r["step"] for r in train]
    for i in layers:
        axes[1].plot(steps, _pad(_smooth([r.get(f"moe/l{i}/maxvio", math.nan) for r in train]), len(steps)),
                     label=f"layer {i}")
    axes[1].set_xlabel("optimizer step")
    axes[1].set_ylabel("MaxVio (max load / mean − 1)")
    axes[1].set_title("load imbalance during pretraining (aux-loss-free bias)")
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fig_rl(ctx, path: Path) -> None:
    """Reward, accuracy, format and response length per GRPO step, both RL stages side by side."""
    names = [s.name for s in ctx.training_stages() if s.name.endswith("_rl")]
    keys = [("reward", "reward"), ("accuracy", "accuracy (rule-checked)"), ("consistency", "language consistency"),
            ("response_len", "response length (tokens)")]
    fig, axes = _subplots(1, len(keys), (4.2 * len(keys), 3.4), squeeze=False)
    for name in names:
        train = [r for r in st.stage_records(ctx, name) if r.get("kind") == "train"]
        for ax, (key, title) in zip(axes[0], keys):
            ax.plot([r["step"] for r in train], [r.get(key, math.nan) for r in train], "o-", ms=3, label=name)
            ax.set_title(title)
    for ax in axes[0]:
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _pad(y, n: int):
    y = list(y)
    return [math.nan] * (n - len(y)) + y


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _post_training(ctx, s: dict) -> list[str]:
    """The post-training section: what each R1 stage did, in numbers, and held-out answers before and after."""
    if not s["cold_start_sft"]:
        return []
    cs, rs, r1, r2 = s["cold_start_sft"], s["rejection_sampling_sft"], s["reasoning_rl"], s["final_rl"]
    pre = ctx.summary("pretrain") or {}
    sft_rows = [{"stage": n, "steps": x.get("steps"), "loss first": x.get("loss_first"),
                 "loss last": x.get("loss_last")} for n, x in (("cold_start_sft", cs), ("rejection_sampling_sft", rs))]
    rl_rows = [{"stage": n, "steps": x.get("steps"), "λ": x.get("lam"),
                **{f"{k} (first → last quarter)": f"{_fmt(x.get(f'{k}_first_quarter'))} → "
                                                  f"{_fmt(x.get(f'{k}_last_quarter'))}"
                   for k in ("reward", "accuracy", "consistency", "response_len")}}
               for n, x in (("reasoning_rl", r1), ("final_rl", r2))]
    rl_cols = list(rl_rows[0])
    md = ["## Post-training: chapter 09's R1 stages", "",
          "Pretraining mixed chapter 09's world of worked additions into the Python text "
          f"({_fmt(pre.get('world_bytes'))} bytes, {_fmt(100 * pre.get('world_share', math.nan))}% of the training "
          "bytes), so the base has met the "
          "template; the stages below follow R1 §2.3 on the long-context model.", "",
          _table(sft_rows, ["stage", "steps", "loss first", "loss last"]), "",
          _table(rl_rows, rl_cols), "",
          f"Rejection sampling: {rs.get('rs_sampled')} samples of the reasoning_rl model, "
          f"{rs.get('rs_correct')} correct, "
          f"{rs.get('rs_kept')} kept (verified, well-formed, one language; ≤ 2 per problem) from "
          f"{rs.get('rs_problems_kept')} problems, trained on with {rs.get('plain_pairs')} plain-text pairs, starting "
          "from the long-context base as R1 does."
          + (" With nothing kept, that SFT saw plain text only: this run's RL checkpoint solved no training problem."
             if not rs.get("rs_kept") else ""), "", "![rl](report/rl.png)", "",
          "Greedy answers to held-out problems before (long_context) and after (final_rl) post-training:", ""]
    problems = st.heldout_problems(ctx)
    chosen = [problems[i] for i in sorted({0, len(problems) // 3, 2 * len(problems) // 3, len(problems) - 1})]
    for stage in ("long_context", "final_rl"):
        model = load_model_from_checkpoint(ctx.stage_dir(stage)).float().eval()
        room = model.config.max_position_embeddings - max(len(p.prompt_ids) for p in chosen)
        outs = generate(model, [p.prompt_ids for p in chosen], min(ctx.plan["post_training"]["max_new_tokens"], room),
                        temperature=0.0, stop=[STOP])
        md += [f"**{stage}**", "", "```"]
        md += [f"{display(p.prompt_ids + o.tokens)}    [{p.answer}]" for p, o in zip(chosen, outs)]
        md += ["```", ""]
    return md


def write_report(ctx) -> dict:
    """report.md and its figures, from the finished stages' files."""
    out, plan = ctx.out, ctx.plan
    figdir = ctx.stage_dir("report")
    figures = {"losses.png": _fig_losses, "pretraining.png": _fig_schedule, "experts.png": _fig_experts,
               "rl.png": _fig_rl}
    for name, fn in figures.items():
        fn(ctx, figdir / name)
    s = {n: ctx.summary(n) or {} for n in ("pretrain", "long_context", "cold_start_sft", "reasoning_rl",
                                            "rejection_sampling_sft", "final_rl", "evaluate", "export")}
    final = ctx.training_stages()[-1].name
    model = load_model_from_checkpoint(ctx.stage_dir(final)).float().eval()
    samples = st.samples(ctx, model, plan["report"]["sample_tokens"])
    config = ModelConfig.from_dict(plan["model"])
    walls = [{"stage": n, "wall s": (ctx.summary(n) or {}).get("wall_s", math.nan),
              "CPU s": (ctx.summary(n) or {}).get("cpu_s", math.nan),
              "resumed": (ctx.summary(n) or {}).get("resumed")} for n in (*[x.name for x in ctx.training_stages()],
                                                                           "evaluate", "export")]
    pre, lc, ex = s["pretrain"], s["long_context"], s["export"]
    md = [f"# Capstone report: mini-v3 ({'quick' if plan['quick'] else 'default'} run)", "",
          f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads; {pre.get('corpus', '')}.", "",
          "## Stages and wall times", "",
          "CPU s is this process's CPU time: on cores shared with other jobs, wall time (and the tokens/s and MFU "
          "below, which use it) overstates the cost.", "", _table(walls, ["stage", "wall s", "CPU s", "resumed"]), "",
          "## The model, sized by chapter 01's laws", "", "```",
          derivation(size_for_budget(plan["budget"], fitted_laws())), "```", "",
          "## Accounting beside DeepSeek-V3", "", "```", accounting_table(config)[1], "```", "",
          "## Pretraining", "",
          f"{pre.get('steps')} steps, {_fmt(pre.get('tokens'))} tokens, held-out {_fmt(pre.get('val_bpb'))} bits/byte, "
          f"{_fmt(pre.get('tokens_per_s'))} tokens/s.", "",
          f"**MFU**: {_fmt(100 * pre.get('mfu_mean', math.nan))}% on average — model FLOPs per token "
          f"{_fmt(pre.get('model_flops_per_token'))} (M + output head + MTP) × tokens/s, over a "
          f"{pre.get('peak_dtype')} matmul peak of {_fmt((pre.get('peak_flops') or math.nan) / 1e9)} GFLOP/s "
          "measured in the same process (dslearn/train/mfu.py). A model this small spends most of a step outside "
          "large matmuls (routing, norms, the optimizer), which is what the gap measures.", "",
          "![losses](report/losses.png)", "", "![pretraining](report/pretraining.png)", "",
          "![experts](report/experts.png)", "",
          "## Context extension (YaRN)", "",
          _table([{"held-out at": f"{lc.get('context')} tokens", "plain RoPE (before)": lc.get("long_bpb_plain_rope"),
                   "YaRN, untrained": lc.get("long_bpb_yarn_untrained"),
                   "YaRN, after the stage": lc.get("long_bpb_after")},
                  {"held-out at": f"{plan['pretrain']['seq_len']} tokens",
                   "plain RoPE (before)": lc.get("short_bpb_before"), "YaRN, untrained": None,
                   "YaRN, after the stage": lc.get("short_bpb_after")}],
                 ["held-out at", "plain RoPE (before)", "YaRN, untrained", "YaRN, after the stage"]),
          "", "(bits per byte; lower is better)", "",
          *_post_training(ctx, s),
          "## Evaluation of every stage's checkpoint", "",
          _table(s["evaluate"].get("rows", []), s["evaluate"].get("columns", [])), "",
          "val_bpb: held-out bits/byte at the pretraining context; long_bpb: at the extended context (plain RoPE for "
          "checkpoints trained before the extension); moe_maxvio: mean over MoE layers of max expert load / mean "
          "load − 1 on held-out text; mtp_acceptance: share of the MTP module's greedy drafts the model accepts. "
          f"On {len(st.heldout_problems(ctx))} held-out addition problems (chapter 09's split), k = "
          f"{plan['post_training']['eval']['k']} samples each at temperature 1: pass@1 = mean accuracy of the samples "
          "(R1's definition), maj@k = the majority answer, greedy = temperature 0; format = share of responses the "
          "template parses; consistency = share of target-language words; self_check = responses with a check line; "
          "resp_len in tokens; pass@1_dN = pass@1 on N-digit problems. Generation stops at a checkpoint's context "
          f"(pretrain's is {plan['pretrain']['seq_len']} tokens).",
          "", "## Export", "",
          f"`{ex.get('architecture')}` loaded by `transformers.AutoModelForCausalLM.from_pretrained` from "
          f"`{ex.get('path')}`: max |logit difference| {_fmt(ex.get('max_abs_logit_diff'))}; greedy continuations "
          f"equal to ours for {ex.get('greedy_equal')} of {ex.get('prompts')} prompts ({ex.get('new_tokens')} tokens).",
          "", "## Samples (greedy, the final model, absorbed MLA)", ""]
    for k, v in samples.items():
        md += [f"**{k!r}**", "", "```", v, "```", ""]
    md += ["## Plan", "", "```json", json.dumps({k: plan[k] for k in ("pretrain", "long_context", "post_training")},
                                              indent=1), "```", ""]
    (out / "report.md").write_text("\n".join(md))
    return {"report": str(out / "report.md"), "figures": sorted(figures), "samples": samples}
