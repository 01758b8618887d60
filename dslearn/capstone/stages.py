"""The capstone's stages: what each one trains or measures, on the checkpoints of the stages before it.

Each stage is a function ``run(ctx) -> summary`` (a JSON-able dict). A training stage trains in its own
directory ``<out>/<stage>/`` with ``train.Trainer`` — the course's one training core — so it checkpoints
atomically and resumes exactly; the pipeline (pipeline.py) marks a stage done by writing its summary.

    stage          what it does (paper)                                             writes
    pretrain       next-token + MTP + balance losses on the Python corpus, FIM 0.1  pretrain/checkpoints
                   (PSM), V3's LR shape and batch ramp (V3 §4.1–4.2)
    long_context   YaRN ×factor on the decoupled RoPE key, a short stage at the     long_context/checkpoints
                   longer context (V3 §4.3); held-out loss there before and after
    evaluate       every training stage's checkpoint in one table                   evaluate/table.json
    export         the final model to Hugging Face format, loaded back by           export/hf/
                   transformers, greedy continuations compared with ours
    report         figures and report.md                                            report.md, figures/
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..data import FIMStream, TokenStream, bits_per_byte, fim_prompt, load_corpus
from ..export import to_hf
from ..generate import generate
from ..model import CausalLM, with_config
from ..rl import recipe
from ..rl.evaluate import evaluate as evaluate_reasoning
from ..rl.world import LANGUAGES, base_corpus, mixed_problems
from ..speculative import speculative_generate
from ..train import TrainConfig, Trainer, ddp, load_model_from_checkpoint, read_metrics


class CapstoneError(RuntimeError):
    """A user error or a failed check of the capstone; the message is one line."""


# --- helpers the stages share ------------------------------------------------------------------------------
def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON so that ``path`` holds either the old file or the whole new one, flushed to disk."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@torch.no_grad()
def heldout(model: CausalLM, stream: TokenStream, seq_len: int, windows: int, batch: int = 8) -> dict:
    """Mean next-token loss (nats), bits/byte and MoE MaxVio over ``windows`` fixed held-out windows."""
    was = model.training
    model.eval()
    total, count, maxvio = 0.0, 0, []
    for x, y in stream.eval_batches(windows, seq_len, batch):
        out = model(x.to(model.lm_head.weight.device), y.to(model.lm_head.weight.device))
        n = int((y != -100).sum())
        total += out.loss.item() * n
        count += n
        if "moe/maxvio" in out.metrics:
            maxvio.append(out.metrics["moe/maxvio"])
    model.train(was)
    loss = total / max(count, 1)
    return {"loss": loss, "bpb": bits_per_byte(loss), "maxvio": sum(maxvio) / len(maxvio) if maxvio else math.nan}


def extend_context(model: CausalLM, context: int, rope_scaling: dict | None, **changes) -> CausalLM:
    """The same weights in a model of a longer context (with YaRN when ``rope_scaling`` is given): every
    parameter keeps its shape, only the RoPE tables change."""
    twin = CausalLM(model.config.replace(max_position_embeddings=context, rope_scaling=rope_scaling, **changes))
    twin.load_state_dict(model.state_dict())
    return twin.to(model.lm_head.weight.device).train(model.training)


def mtp_acceptance(model: CausalLM, prompts: list[list[int]], new_tokens: int) -> float:
    """Share of the MTP module's greedy drafts the main model accepts (V3 §5.4.3 reports 85–90%)."""
    if model.mtp is None:
        return math.nan
    drafted = accepted = 0
    for p in prompts:
        r = speculative_generate(model, p, new_tokens, temperature=0.0)
        drafted, accepted = drafted + r.drafted, accepted + r.accepted
    return accepted / drafted if drafted else math.nan


def val_prompts(corpus, n: int, length: int) -> list[list[int]]:
    """``n`` prompts of ``length`` bytes from evenly spaced places of the validation split."""
    step = len(corpus.val) // (n + 1)
    return [list(corpus.val[(i + 1) * step:(i + 1) * step + length]) for i in range(n)]


def _trainer(ctx, name: str, model: CausalLM, tcfg: dict, train, val) -> Trainer:
    # on a GPU, bf16 autocast (fp32 master weights), as V3 trains in low precision; on CPU, fp32
    cfg = TrainConfig(**tcfg, device=ctx.device, progress=ctx.progress, bf16=str(ctx.device).startswith("cuda"))
    trainer = Trainer(model, cfg, train, val, run_dir=ctx.stage_dir(name))  # logs MFU (the default)
    trainer.loop.cfg.desc = name  # the progress bar's label
    return trainer


def _last(records: list[dict], key: str) -> float:
    vals = [r[key] for r in records if key in r]
    return vals[-1] if vals else math.nan


# --- the stages -------------------------------------------------------------------------------------------
def world_text(plan: dict) -> bytes:
    """Chapter 09's world as pretraining text: ``plan["world_docs"]`` worked additions at the post-training levels."""
    return base_corpus(plan["world_docs"], levels=tuple(plan["post_training"]["levels"]), seed=plan["seed"])


def pretrain(ctx) -> dict:
    """V3 §4.1–4.2 in miniature: FIM at rate 0.1 (PSM), the four-phase LR, the batch ramp, γ's end, λ's switch.
    The training text is the Python corpus followed by chapter 09's world (``plan["world_docs"]`` worked
    additions), as V3's corpus mixes code and mathematics; held-out bits/byte are measured on Python."""
    p = ctx.plan
    corpus = load_corpus()
    model = CausalLM(ModelConfig.from_dict(p["model"]), seed=p["seed"])
    world = world_text(p)
    train = FIMStream(corpus.train + world, "train split + chapter 09's world", p["fim_rate"])
    trainer = _trainer(ctx, "pretrain", model, p["pretrain"], train, TokenStream(corpus.val, "validation split"))
    result = trainer.fit()
    rows = read_metrics(ctx.stage_dir("pretrain"), "train")
    mfus = [r["mfu"] for r in rows if "mfu" in r]
    return {"val_bpb": result.final_val_bpb, "steps": result.steps_done, "tokens": _last(rows, "tokens"),
            "tokens_per_s": result.tokens_per_s, "mfu_mean": sum(mfus) / len(mfus) if mfus else math.nan,
            "peak_flops": trainer.loop.peak_flops, "peak_dtype": "bf16" if trainer.cfg.bf16 else "fp32",
            "model_flops_per_token": trainer.loop.flops_per_token, "corpus": corpus.describe(),
            "world_bytes": len(world), "world_share": len(world) / (len(world) + len(corpus.train))}


def long_context(ctx) -> dict:
    """V3 §4.3 in miniature: YaRN on the decoupled key, a short stage at the longer context; loss there
    before (plain RoPE, and YaRN untrained) and after."""
    lc = ctx.plan["long_context"]
    corpus = load_corpus()
    val = TokenStream(corpus.val, "validation split")
    base = load_model_from_checkpoint(ctx.stage_dir("pretrain"), device=ctx.device)
    L, windows = lc["context"], lc["eval_windows"]
    before_plain = heldout(extend_context(base, L, None), val, L, windows)
    model = extend_context(base, L, lc["rope_scaling"], bias_update_until=0, mtp_weight_switch_step=0)
    before_yarn = heldout(model, val, L, windows)
    short_before = heldout(base, val, base.config.max_position_embeddings, windows)
    # the pretraining mix (V3 extends the context on its pretraining data), so the template is not forgotten
    train = TokenStream(corpus.train + world_text(ctx.plan), "train split + chapter 09's world")
    trainer = _trainer(ctx, "long_context", model, lc["train"], train, val)
    result = trainer.fit()
    after = heldout(trainer.model, val, L, windows)
    short_after = heldout(trainer.model, val, base.config.max_position_embeddings, windows)
    return {"context": L, "factor": lc["rope_scaling"]["factor"], "steps": result.steps_done,
            "long_bpb_plain_rope": before_plain["bpb"], "long_bpb_yarn_untrained": before_yarn["bpb"],
            "long_bpb_after": after["bpb"], "short_bpb_before": short_before["bpb"],
            "short_bpb_after": short_after["bpb"], "tokens_per_s": result.tokens_per_s}


def evaluate(ctx) -> dict:
    """Every training stage's final checkpoint in one table."""
    p, ev = ctx.plan, ctx.plan["evaluate"]
    corpus = load_corpus()
    val = TokenStream(corpus.val, "validation split")
    short, long_ = p["pretrain"]["seq_len"], p["long_context"]["context"]
    prompts = val_prompts(corpus, ev["mtp_prompts"], ev["prompt_bytes"])
    rows = []
    for stage in ctx.training_stages():
        model = load_model_from_checkpoint(ctx.stage_dir(stage.name), device=ctx.device)
        s = heldout(model, val, short, ev["windows"])
        lm = model if model.config.max_position_embeddings >= long_ else extend_context(model, long_, None)
        row = {"stage": stage.name, "val_bpb": s["bpb"], "long_bpb": heldout(lm, val, long_, ev["windows"])["bpb"],
               "moe_maxvio": s["maxvio"], "mtp_acceptance": mtp_acceptance(model, prompts, ev["mtp_new_tokens"])}
        row |= reasoning_metrics(ctx, model)
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    (ctx.stage_dir("evaluate") / "table.json").write_text(json.dumps({"columns": columns, "rows": rows}, indent=1))
    return {"rows": rows, "columns": columns}


def _greedy_ours(model: CausalLM, prompts: list[list[int]], n: int) -> list[list[int]]:
    decoder = with_config(model, mla_impl="absorbed").eval()  # MLA's decoding path: W^UK, W^UV absorbed
    return [g.tokens for g in generate(decoder, prompts, n, temperature=0.0)]


def export(ctx) -> dict:
    """to_hf, then transformers' from_pretrained: logits and greedy continuations must equal ours."""
    import transformers  # optional (the dev extra); the stage fails with a one-line message without it

    ex = ctx.plan["export"]
    final = ctx.training_stages()[-1].name
    model = load_model_from_checkpoint(ctx.stage_dir(final)).float().eval()
    fp8_diff = math.nan
    if model.config.linear_impl != "torch":  # transformers has no FP8 GEMMs: export the same weights, unquantised
        full = with_config(model, linear_impl="torch").eval()
        T = min(model.config.max_position_embeddings, 256)
        x = torch.tensor([list(load_corpus().val[:T])])
        with torch.no_grad():
            fp8_diff = (model(x).logits - full(x).logits).abs().max().item()
        model = full
    path = to_hf(model, ctx.stage_dir("export") / "hf")
    transformers.logging.set_verbosity_error()  # it lists the MTP layer's keys, which DeepseekV3 does not build
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    corpus = load_corpus()
    prompts = [list(b"def "), list(b"import "), *val_prompts(corpus, ex["prompts"] - 2, ex["prompt_bytes"])]
    T = min(model.config.max_position_embeddings, 256)
    x = torch.tensor([list(corpus.val[:T])])
    with torch.no_grad():
        diff = (model(x).logits - theirs(x).logits).abs().max().item()
    ours = _greedy_ours(model, prompts, ex["new_tokens"])
    hf = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.no_grad():
            out = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=ex["new_tokens"],
                                  min_new_tokens=ex["new_tokens"], do_sample=False, pad_token_id=0)
        hf.append(out[0, len(p):].tolist())
    same = [a == b for a, b in zip(ours, hf)]
    summary = {"stage": final, "path": str(path), "architecture": type(theirs).__name__, "max_abs_logit_diff": diff,
               "fp8_vs_full_precision_max_abs_logit_diff": fp8_diff,
               "prompts": len(prompts), "greedy_equal": sum(same), "new_tokens": ex["new_tokens"],
               "samples": [bytes(p + t).decode("utf-8", "replace") for p, t in zip(prompts, ours)]}
    if diff > ex["atol"] or not all(same):
        bad = same.index(False) if not all(same) else None
        raise CapstoneError(f"export check failed: transformers' logits differ by {diff:.3g} (allowed "
                            f"{ex['atol']:g}) and {len(prompts) - sum(same)} of {len(prompts)} greedy continuations "
                            f"differ{f' (first: prompt {bad})' if bad is not None else ''}; the folder is {path}")
    return summary


def samples(ctx, model: CausalLM, n_tokens: int) -> dict:
    """Greedy continuations of code prompts, and a fill-in-the-middle prompt (PSM)."""
    prompts = {"def ": list(b"def "), "class ": list(b"class "), "import os\n": list(b"import os\n")}
    fim = fim_prompt("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n")
    room = model.config.max_position_embeddings
    n_tokens = min(n_tokens, room - max(map(len, prompts.values())))
    out = {k: bytes(p + t).decode("utf-8", "replace")
           for (k, p), t in zip(prompts.items(), _greedy_ours(model, list(prompts.values()), n_tokens))}
    t = _greedy_ours(model, [fim], min(24, room - len(fim)))[0]
    out["FIM: def add(a, b): <hole> print(add(1, 2))"] = bytes(t).decode("utf-8", "replace")
    return out


def stage_records(ctx, name: str) -> list[dict]:
    path = Path(ctx.stage_dir(name)) / "metrics.jsonl"
    return read_metrics(path) if path.is_file() else []


# --- post-training: chapter 09's R1 stages (dslearn.rl.recipe) on the long-context model ----------------------
# The pretraining corpus mixes chapter 09's world (worked additions in two languages, the chat template) into
# the Python text, so the base has met the task; these stages then follow R1 §2.3 in order.
def _load(ctx, stage: str) -> CausalLM:
    return load_model_from_checkpoint(ctx.stage_dir(stage), device=ctx.device).train()


def heldout_problems(ctx) -> list:
    """The held-out problems every checkpoint is scored on (the split chapter 09 holds out, by the sum's hash)."""
    pt = ctx.plan["post_training"]
    return mixed_problems(pt["eval"]["n_per_level"], pt["levels"], LANGUAGES, "held_out", seed=1)


def _sft_cfg(ctx, s: dict) -> TrainConfig:
    return recipe.sft_config(steps=s["steps"], batch_size=s["batch_size"], seq_len=s["seq_len"], lr=s["lr"],
                             warmup_steps=s["warmup_steps"], checkpoint_every=s["checkpoint_every"],
                             grad_accum_steps=s["grad_accum_steps"],
                             seed=ctx.plan["seed"], device=ctx.device, progress=ctx.progress,
                             bf16=str(ctx.device).startswith("cuda"))


def _sft_summary(records: list[dict], extra: dict) -> dict:
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    return {"steps": len(losses), "loss_first": losses[0] if losses else math.nan,
            "loss_last": losses[-1] if losses else math.nan, **extra}


def cold_start_sft(ctx) -> dict:
    """R1 §2.3.1: SFT of the long-context model on readable, correct worked solutions (the loss on the prompt
    masked), so that RL starts from a policy that already writes the template."""
    pt, c = ctx.plan["post_training"], ctx.plan["post_training"]["cold_start"]
    pairs = recipe.cold_start_data(c["n"], seed=ctx.plan["seed"], levels=tuple(pt["levels"]))
    _, records = recipe.cold_start_sft(_load(ctx, "long_context"), pairs, _sft_cfg(ctx, c),
                                       run_dir=ctx.stage_dir("cold_start_sft"))
    return _sft_summary(records, {"pairs": len(pairs)})


def _rl(ctx, name: str, start: str, r: dict, seed: int) -> dict:
    pt = ctx.plan["post_training"]
    cfg = recipe.rl_config(steps=r["steps"], prompts_per_step=r["prompts_per_step"], group_size=r["group_size"],
                           max_new_tokens=pt["max_new_tokens"], lr=r["lr"], eval_every=r["steps"],
                           eval_samples=r["eval_samples"], seed=seed, progress=ctx.progress)
    train = mixed_problems(r["n_per_level"], pt["levels"], LANGUAGES, "train", seed=seed)
    held = mixed_problems(r["eval_n_per_level"], pt["levels"], LANGUAGES, "held_out", seed=2)
    _, records = recipe.reasoning_rl(_load(ctx, start), cfg, lam=r["lam"], train_problems=train, eval_problems=held,
                                     run_dir=ctx.stage_dir(name), checkpoint_every=r["checkpoint_every"])
    train_rows = read_metrics(ctx.stage_dir(name), "train")  # every step, also those of an earlier invocation
    evals = [x for x in read_metrics(ctx.stage_dir(name)) if x.get("kind") == "eval"]
    n = max(1, len(train_rows) // 4)

    def mean(rows, key):
        vals = [x[key] for x in rows if key in x]
        return sum(vals) / len(vals) if vals else math.nan

    out = {"steps": len(train_rows), "lam": r["lam"], "start": start}
    for key in ("reward", "accuracy", "format", "consistency", "response_len"):
        out[f"{key}_first_quarter"], out[f"{key}_last_quarter"] = mean(train_rows[:n], key), mean(train_rows[-n:], key)
    if evals:
        out["heldout_pass@1_start"] = evals[0].get("heldout_pass@1", math.nan)
        out["heldout_pass@1_end"] = evals[-1].get("heldout_pass@1", math.nan)
    return out


def reasoning_rl(ctx) -> dict:
    """R1 §2.3.2: GRPO from the cold start; reward = accuracy + 0.1·format + λ·language consistency."""
    return _rl(ctx, "reasoning_rl", "cold_start_sft", ctx.plan["post_training"]["reasoning_rl"], ctx.plan["seed"])


def rejection_sampling_sft(ctx) -> dict:
    """R1 §2.3.3: sample the RL checkpoint on training problems, keep verified, well-formed, one-language
    answers, and fine-tune *the long-context base* (not the RL model) on them mixed with plain-text pairs."""
    pt, rs = ctx.plan["post_training"], ctx.plan["post_training"]["rejection_sampling"]
    path = ctx.stage_dir("rejection_sampling_sft") / "pairs.json"
    # sampled once, by rank 0 under torchrun (or by an earlier invocation of this stage: the SFT resumes on the
    # same data); every rank then reads the same pairs
    if not path.is_file() and ddp.is_main():
        problems = mixed_problems(rs["n_per_level"], pt["levels"], LANGUAGES, "train", seed=ctx.plan["seed"] + 7)
        with ddp.alone():
            pairs, stats = recipe.rejection_sample(_load(ctx, "reasoning_rl"), problems, rs["samples"],
                                                   seed=ctx.plan["seed"], keep_per_problem=rs["keep"],
                                                   max_new_tokens=pt["max_new_tokens"])
        write_json_atomic(path, {"pairs": pairs, "stats": stats})
    ddp.barrier()
    saved = json.loads(path.read_text())
    pairs, stats = [tuple(p) for p in saved["pairs"]], saved["stats"]
    if not pairs and not rs["allow_empty"]:
        raise CapstoneError(f"rejection sampling kept none of {stats['sampled']} samples (the RL checkpoint solved "
                            "nothing verifiable); train longer (a larger budget or more RL steps) and rerun with "
                            "--from reasoning_rl")
    _, records = recipe.rejection_sampling_sft(_load(ctx, "long_context"), pairs, n_plain=rs["n_plain"],
                                               cfg=_sft_cfg(ctx, rs), seed=ctx.plan["seed"], allow_empty=True,
                                               run_dir=ctx.stage_dir("rejection_sampling_sft"))
    return _sft_summary(records, {"plain_pairs": rs["n_plain"], **{f"rs_{k}": v for k, v in stats.items()}})


def final_rl(ctx) -> dict:
    """R1 §2.3.4 (its reasoning part): a second GRPO stage, from the rejection-sampling SFT model."""
    return _rl(ctx, "final_rl", "rejection_sampling_sft", ctx.plan["post_training"]["final_rl"], ctx.plan["seed"] + 1)


def reasoning_metrics(ctx, model: CausalLM) -> dict:
    """pass@1 (mean of k samples at temperature 1), maj@k, greedy accuracy, format and consistency rates, self-check
    rate and length on the held-out problems; generation stops at the checkpoint's context."""
    ev, pt = ctx.plan["post_training"]["eval"], ctx.plan["post_training"]
    problems = heldout_problems(ctx)
    room = model.config.max_position_embeddings - max(len(p.prompt_ids) for p in problems)
    if room < 1:
        return {}
    r = evaluate_reasoning(model, problems, ev["k"], temperature=1.0, seed=0,
                           max_new_tokens=min(pt["max_new_tokens"], room))
    k = ev["k"]
    return {"pass@1": r["pass@1"], f"maj@{k}": r[f"maj@{k}"], "greedy": r["greedy"], "format": r["format"],
            "consistency": r["consistency"], "self_check": r["self_check_rate"], "resp_len": r["response_len"],
            **{f"pass@1_d{d}": v["pass@1"] for d, v in r["by_difficulty"].items()}}
