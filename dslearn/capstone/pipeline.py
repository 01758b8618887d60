"""``dslearn capstone``: a miniature DeepSeek-V3 trained from nothing, stage by stage, each stage resumable.

    plan      the run's every number, from chapter 01's fitted laws (sizing.py) → <out>/plan.json
    stages    pretrain → long_context → [post-training] → evaluate → export → report   (stages.py, report.py)

**Resuming.** A stage is done when ``<out>/<stage>/summary.json`` exists (written atomically, last). A
training stage checkpoints every ``checkpoint_every`` steps through the course's training loop; stop the run
at any moment (Ctrl-C, a kill, a power cut) and the same command continues: finished stages are skipped, the
interrupted one resumes from its newest checkpoint and, because every batch is a pure function of (seed,
step), computes exactly what an uninterrupted run computes. A directory holding a run with a different plan
is refused rather than mixed.

**Several processes.** Under ``torchrun --nproc-per-node N`` (``dslearn.train.ddp``) the stages that train
with ``Trainer`` — pretrain, long_context and the two SFT stages — are data-parallel: each rank runs its share
of every step's micro-batches and the ranks sum their gradients, so N processes compute the one-process
trajectory. The other stages (GRPO, rejection sampling's generation, evaluate, export, report) run on rank 0 by
itself (``ddp.alone()``) while the other ranks wait at a barrier. Rank 0 writes every file; a run checkpointed
on N processes resumes on one, and the other way round.

**Post-training.** Chapter 09's stages (``dslearn.rl.recipe``) run as ``POST_TRAINING`` between long_context
and evaluate: cold-start SFT → reasoning GRPO (with the language-consistency reward) → rejection-sampling SFT
from the long-context base → final GRPO, on chapter 09's world of worked additions, which pretraining mixes into
the Python corpus (``world_docs``) so that the base has met the task.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, get_preset
from ..train import ddp
from . import report as report_mod
from . import stages as st
from .sizing import (
    DEFAULT_BUDGET,
    QUICK_BUDGET,
    accounting_table,
    derivation,
    family,
    fitted_laws,
    size_for_budget,
)
from .stages import CapstoneError

V3_TOTAL_TOKENS = 14.8e12
V3_BATCH_RAMP_TOKENS = 469e9  # V3 §4.2: 3,072 → 15,360 sequences over the first 469B tokens
V3_GAMMA_ZERO_TOKENS = 500e9  # γ = 0 for the last 500B tokens
V3_LAMBDA_SWITCH_TOKENS = 10e12  # λ = 0.3 for the first 10T tokens, then 0.1
V3_WARMUP_FRACTION = 2000 / (V3_TOTAL_TOKENS / (15360 * 4096))  # 2K warm-up steps of ≈ 235K at the full batch


@dataclass
class Stage:
    name: str
    run: Callable  # run(ctx) -> summary dict
    about: str
    trains: bool = False  # leaves a checkpoint that evaluate scores and the next stage starts from
    # under torchrun: every rank runs it (its training is Trainer's data-parallel loop); else rank 0 runs it alone
    data_parallel: bool = False


PRETRAINING = [
    Stage("pretrain", st.pretrain, "next-token + MTP + balance losses, FIM 0.1, V3's LR shape and batch ramp", True,
          True),
    Stage("long_context", st.long_context, "YaRN context extension (V3 §4.3)", True, True),
]
POST_TRAINING = [
    Stage("cold_start_sft", st.cold_start_sft, "R1's cold start: SFT on readable worked solutions (chapter 09)", True,
          True),
    Stage("reasoning_rl", st.reasoning_rl, "GRPO, reward = accuracy + 0.1·format + λ·consistency (R1 §2.3.2)", True),
    Stage("rejection_sampling_sft", st.rejection_sampling_sft,
          "keep the RL model's verified answers, SFT the base on them + plain text (R1 §2.3.3)", True, True),
    Stage("final_rl", st.final_rl, "a second GRPO stage from the rejection-sampling model (R1 §2.3.4)", True),
]
FINAL = [
    Stage("evaluate", st.evaluate, "every training stage's checkpoint in one table"),
    Stage("export", st.export, "Hugging Face format, checked against transformers"),
    Stage("report", report_mod.write_report, "report.md with figures"),
]


def all_stages() -> list[Stage]:
    return PRETRAINING + POST_TRAINING + FINAL


def stage_names() -> list[str]:
    return [s.name for s in all_stages()]


# --- the plan -----------------------------------------------------------------------------------------------
def make_plan(quick: bool = False, seed: int = 0, fp8: bool = False) -> dict:
    """Every number of a run. The model and the pretraining budget come from the sizing derivation; the
    schedule's proportions from V3's token counts. ``fp8``: every linear layer in FP8 (``linear_impl="fp8"``)."""
    C = QUICK_BUDGET if quick else DEFAULT_BUDGET
    size = size_for_budget(C)
    steps, batch, seq = size["steps"], size["batch_size"], size["seq_len"]
    fields = family(size["width"], context=seq)
    if size["width"] == get_preset("mini-v3").hidden_size:
        fields = get_preset("mini-v3").to_dict()  # the preset is the default run's model
    model = ModelConfig.from_dict(fields).replace(
        bias_update_until=round(steps * (1 - V3_GAMMA_ZERO_TOKENS / V3_TOTAL_TOKENS)),
        mtp_weight_switch_step=round(steps * V3_LAMBDA_SWITCH_TOKENS / V3_TOTAL_TOKENS),
        linear_impl="fp8" if fp8 else "torch")
    pretrain = dict(steps=steps, batch_size=batch, seq_len=seq, grad_accum_steps=2, lr=size["lr"],
                    warmup_steps=max(10, round(steps * V3_WARMUP_FRACTION)), schedule="v3", seed=seed,
                    batch_ramp_start=max(2, batch // 2 // 2 * 2),
                    batch_ramp_steps=max(1, round(steps * V3_BATCH_RAMP_TOKENS / V3_TOTAL_TOKENS)),
                    eval_every=max(1, steps // 10), eval_windows=64 if quick else 256, log_every=10,
                    checkpoint_every=max(10, steps // 20), weight_decay=0.1)
    factor, context = 4, 4 * seq
    long_ctx = dict(context=context, eval_windows=16 if quick else 64,
                    rope_scaling={"type": "yarn", "factor": float(factor), "original_max_position_embeddings": seq,
                                  "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
                    train=dict(steps=20 if quick else 120, batch_size=4, seq_len=context, grad_accum_steps=2,
                               lr=size["lr"] * 0.1, warmup_steps=0, schedule="constant", seed=seed + 1,
                               eval_every=0, eval_windows=16 if quick else 64, log_every=5,
                               checkpoint_every=10 if quick else 20, weight_decay=0.1))
    # two micro-batches per step, as in pretraining: under torchrun each of 2 processes runs one (train/ddp.py)
    sft = dict(batch_size=16, seq_len=160, lr=size["lr"] * 0.1, warmup_steps=10, grad_accum_steps=2)
    rl = dict(prompts_per_step=8, group_size=8, lr=size["lr"] * 0.02, lam=0.5, n_per_level=300, eval_n_per_level=2,
              eval_samples=2)
    # The task: chapter 09's additions of two 2-digit numbers, in both languages. Chapter 09's 3- and 4-digit
    # levels are out of reach of the law-sized width (experiments/capstone/task_size.py measures it; the figures
    # are in task_size.txt and the capstone's README).
    post = {"levels": [2], "max_new_tokens": 96,  # the annotator's longest 2-digit worked solution is 61 tokens
            "cold_start": sft | dict(n=600, steps=40 if quick else 300, checkpoint_every=10 if quick else 50),
            "reasoning_rl": rl | dict(steps=3 if quick else 150, checkpoint_every=1 if quick else 10),
            # --quick pretrains too little to solve anything: its rejection-sampling SFT may see plain text only
            # a few epochs over the kept samples and the plain pairs: more erodes the base's Python (measured)
            "rejection_sampling": sft | dict(n_per_level=15 if quick else 200, samples=4, keep=2, n_plain=100,
                                             allow_empty=quick, steps=40 if quick else 100,
                                             checkpoint_every=10 if quick else 50),
            "final_rl": rl | dict(steps=2 if quick else 50, checkpoint_every=1 if quick else 10),
            "eval": dict(n_per_level=9 if quick else 30, k=4)}
    return {"quick": quick, "seed": seed, "budget": C, "fim_rate": 0.1,
            "world_docs": 125_000,  # ≈ 9.5 MB of 2-digit worked additions: about half the pretraining text
            "post_training": post,
            "sizing": {k: v for k, v in size.items() if k != "laws"} | {"laws": size["laws"]["source"]},
            "model": model.to_dict(), "pretrain": pretrain, "long_context": long_ctx,
            "evaluate": dict(windows=32 if quick else 128, mtp_prompts=2 if quick else 6, prompt_bytes=32,
                             mtp_new_tokens=24 if quick else 48),
            "export": dict(prompts=4, prompt_bytes=24, new_tokens=16 if quick else 32, atol=1e-4),
            "report": dict(sample_tokens=48 if quick else 120)}


def reduced_plan(seq_len: int = 32, steps: int = 12, long_steps: int = 4, seed: int = 0, fp8: bool = False) -> dict:
    """The --quick plan shrunk to seconds (the tests and the notebook's live run): the same model and stages at a
    context of ``seq_len`` (extended by YaRN to ≥ 160, chapter 09's longest pair), ``steps`` pretraining steps,
    ``long_steps`` at the long
    context. Its numbers show that every stage runs, not what the model learns."""
    plan = make_plan(quick=True, seed=seed, fp8=fp8)
    plan["model"] = ModelConfig.from_dict(plan["model"]).replace(
        max_position_embeddings=seq_len, bias_update_until=round(steps * (1 - V3_GAMMA_ZERO_TOKENS / V3_TOTAL_TOKENS)),
        mtp_weight_switch_step=round(steps * V3_LAMBDA_SWITCH_TOKENS / V3_TOTAL_TOKENS)).to_dict()
    plan["pretrain"] |= dict(steps=steps, batch_size=4, seq_len=seq_len, warmup_steps=2, batch_ramp_start=2,
                             batch_ramp_steps=max(1, steps // 4), eval_every=max(1, steps // 2), eval_windows=4,
                             log_every=1, checkpoint_every=max(1, steps // 4))
    lc = plan["long_context"]
    factor = max(2, -(-160 // seq_len))  # room for chapter 09's plain-text pairs (157 tokens) after the extension
    lc |= dict(context=factor * seq_len, eval_windows=4)
    lc["rope_scaling"] = lc["rope_scaling"] | dict(factor=float(factor), original_max_position_embeddings=seq_len)
    lc["train"] |= dict(steps=long_steps, batch_size=2, seq_len=factor * seq_len, eval_windows=4, log_every=1,
                        checkpoint_every=max(1, long_steps // 2))
    pt = plan["post_training"]
    pt |= dict(levels=[2], max_new_tokens=24)
    for name in ("cold_start", "rejection_sampling"):
        pt[name] |= dict(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=1)
    pt["cold_start"]["n"] = 8
    pt["rejection_sampling"] |= dict(n_per_level=1, samples=2, n_plain=4, allow_empty=True)
    for name in ("reasoning_rl", "final_rl"):
        pt[name] |= dict(steps=2, prompts_per_step=2, group_size=2, n_per_level=4, eval_n_per_level=1,
                         eval_samples=1, checkpoint_every=1)
    pt["eval"] = dict(n_per_level=1, k=2)
    plan["world_docs"] = 200
    plan["evaluate"] = dict(windows=4, mtp_prompts=1, prompt_bytes=8, mtp_new_tokens=6)
    plan["export"] |= dict(prompts=3, prompt_bytes=8, new_tokens=6)
    plan["report"] = dict(sample_tokens=6)
    plan["reduced"] = True
    return plan


# --- a run --------------------------------------------------------------------------------------------------
class Context:
    """What a stage sees: the run directory, the plan, the device, and the other stages' results."""

    def __init__(self, out: Path, plan: dict, device: str = "cpu", progress: bool = True):
        self.out, self.plan, self.device, self.progress = out, plan, device, progress

    def stage_dir(self, name: str) -> Path:
        d = self.out / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def summary(self, name: str) -> dict | None:
        path = self.out / name / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def training_stages(self) -> list[Stage]:
        """The training stages that have finished, in order."""
        return [s for s in all_stages() if s.trains and self.summary(s.name) is not None]


def _check_plan(out: Path, plan: dict) -> None:
    path = out / "plan.json"
    if not path.is_file() and ddp.is_main():
        out.mkdir(parents=True, exist_ok=True)
        st.write_json_atomic(path, plan)
    ddp.barrier()  # every rank compares with the file rank 0 wrote or found, so all of them stop or none
    saved = json.loads(path.read_text())
    if json.loads(json.dumps(plan, default=float)) != saved:
        kind = "a --quick run" if saved.get("quick") else "a default run"
        raise CapstoneError(f"{out} holds {kind} whose plan differs from this command's; rerun the command that "
                            f"made it, or choose another --out")


def _check_processes(plan: dict) -> None:
    """Under torchrun every process takes an equal share of each training step's micro-batches (train/ddp.py)."""
    world = ddp.rank_world()[1]
    post = plan["post_training"]
    splits = {"pretrain": plan["pretrain"]["grad_accum_steps"],
              "long_context": plan["long_context"]["train"]["grad_accum_steps"],
              "cold_start_sft": post["cold_start"]["grad_accum_steps"],
              "rejection_sampling_sft": post["rejection_sampling"]["grad_accum_steps"]}
    for name, n in splits.items():
        if n % world:
            raise CapstoneError(f"--nproc-per-node {world}: the plan splits each {name} step into {n} micro-batches, "
                                f"which {world} processes cannot share equally; run on a number of processes that "
                                f"divides {n}")


def run(out: str | Path = "runs/capstone", quick: bool = False, until: str | None = None,
        from_: str | None = None, device: str = "cpu", threads: int | None = None, progress: bool = True,
        seed: int = 0, echo: Callable[[str], None] = print, plan: dict | None = None, fp8: bool = False) -> dict:
    """Run the pipeline into ``out``: every stage not yet done, up to ``until``; ``from_`` reruns that stage and
    all after it. Returns {stage: summary}. Raises CapstoneError (one line) for bad input. ``plan`` replaces
    ``make_plan(quick, seed, fp8)`` (the tests run a reduced one). Under torchrun (after
    ``ddp.init_from_env()``) every rank calls this; rank 0 prints and writes."""
    names = stage_names()
    for flag, value in (("--until", until), ("--from", from_)):
        if value is not None and value not in names:
            raise CapstoneError(f"{flag} {value!r}: unknown stage; the stages are {', '.join(names)}")
    if until is not None and from_ is not None and names.index(from_) > names.index(until):
        raise CapstoneError(f"--from {from_} comes after --until {until}; the order is {' → '.join(names)}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise CapstoneError(f"--threads must be an integer >= 1, got {threads!r}")
        torch.set_num_threads(threads)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CapstoneError(f"--out {out} is a file, not a directory")
    plan = plan or make_plan(quick, seed, fp8)
    _check_processes(plan)
    main = ddp.is_main()
    if not main:
        echo = _silent
    _check_plan(out, plan)
    ctx = Context(out, plan, device, progress and main)
    if from_ is not None:
        first = names.index(from_)
        missing = [n for n in names[:first] if ctx.summary(n) is None]
        if missing:
            raise CapstoneError(f"--from {from_} needs the stages before it finished; {', '.join(missing)} "
                                f"{'is' if len(missing) == 1 else 'are'} not (run without --from first)")
        if main:
            for n in names[first:]:
                shutil.rmtree(out / n, ignore_errors=True)
        ddp.barrier()
    last = names.index(until) if until is not None else len(names) - 1
    world = ddp.rank_world()[1]
    echo(f"capstone → {out}: {' → '.join(names)}" + (f" ({world} processes)" if world > 1 else ""))
    done = {}
    for i, stage in enumerate(all_stages()[:last + 1]):
        summary = ctx.summary(stage.name)
        if summary is not None:
            echo(f"[{i + 1}/{last + 1}] {stage.name}: done earlier ({summary['wall_s']:.0f} s)")
            done[stage.name] = summary
            continue
        echo(f"[{i + 1}/{last + 1}] {stage.name}: {stage.about}"
             + ("" if world == 1 or stage.data_parallel else " (on rank 0; the other ranks wait)"))
        elapsed_path = ctx.stage_dir(stage.name) / "elapsed.json"
        elapsed = json.loads(elapsed_path.read_text()) if elapsed_path.is_file() else {}
        before, cpu_before = elapsed.get("seconds", 0.0), elapsed.get("cpu_seconds", 0.0)
        resumed = before > 0 or (ctx.stage_dir(stage.name) / "checkpoints" / "LATEST").is_file()
        if resumed:
            echo(f"    resuming {stage.name} from its checkpoint")
        t0, c0 = time.perf_counter(), time.process_time()
        if main:
            try:
                if stage.data_parallel:
                    summary = stage.run(ctx)
                else:
                    with ddp.alone():
                        summary = stage.run(ctx)
            except BaseException:
                st.write_json_atomic(elapsed_path, {"seconds": before + time.perf_counter() - t0,
                                                  "cpu_seconds": cpu_before + time.process_time() - c0})
                raise
            # wall_s: this stage's time over every invocation that ended normally or by Ctrl-C (a SIGKILLed
            # invocation cannot record its time; "resumed" still says the stage continued from a checkpoint)
            # cpu_s: this process's CPU time in the stage — on shared cores a steadier guide to the cost than wall_s
            summary = {"wall_s": before + time.perf_counter() - t0, "cpu_s": cpu_before + time.process_time() - c0,
                       "resumed": resumed, "processes": world if stage.data_parallel else 1, **summary}
            st.write_json_atomic(ctx.stage_dir(stage.name) / "summary.json", summary)
        elif stage.data_parallel:
            stage.run(ctx)
        ddp.barrier()  # the other ranks wait here while rank 0 runs a stage alone, then read its summary
        summary = ctx.summary(stage.name)
        echo(f"    {stage.name} finished in {summary['wall_s']:.0f} s")
        done[stage.name] = summary
    walls = {n: s["wall_s"] for n, s in done.items()}
    echo("stage wall times: " + ", ".join(f"{n} {w:.0f} s" for n, w in walls.items())
         + f"; total {sum(walls.values()):.0f} s")
    return done


def _silent(_: str) -> None:
    pass


def describe_plan(plan: dict) -> str:
    """The derivation and the accounting, as ``dslearn capstone`` prints them before training."""
    size = size_for_budget(plan["budget"], fitted_laws())
    return derivation(size) + "\n\n" + accounting_table(ModelConfig.from_dict(plan["model"]))[1]

