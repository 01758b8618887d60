"""Chapter 07 experiment: does multi-token prediction (V3 §2.2) help the main model, in miniature?

The "tiny" preset (dense DeepSeek-LLM-style MHA model: hidden 128, FFN 352, 4 layers, 4 heads, byte vocabulary,
context 256) trains on the embedded standard-library corpus with D = 0 (no MTP), D = 1 and D = 2 MTP depths,
for seeds 0, 1, 2. For one seed, every D starts from the **same main-model weights** (CausalLM draws its
initial weights in parameter order and the MTP modules come last; the runner checks it) and sees the **same
batches in the same order** (TokenStream batches are a pure function of (seed, step)); only the MTP modules
and their loss differ. The main model's compute per step is therefore identical; D adds D blocks of work.

    λ schedule   V3: 0.3 for the first 10T of 14.8T tokens, then 0.1. Here: 0.3 for the first 2/3 of the
                 optimizer steps (``mtp_weight_switch_step = round(2/3 · steps)``), then 0.1.
    measured     the main model's next-token validation loss and bits per byte (Trainer.evaluate: eval mode,
                 where the MTP modules are not run, so it is pure main-model CE), along the way and at the end;
                 per-depth MTP training losses (``mtp/loss1``, ``mtp/loss2`` from the metrics log); the main
                 CE in training (``ce_loss``); wall time and tokens/s (main-model tokens).
    acceptance   for every D ≥ 1 model, on held-out windows, a *teacher-forced proxy* of the draft acceptance
                 rate of greedy self-speculative decoding: at position i the depth-1 module reads h_i and the
                 TRUE token t_{i+1}; its argmax (a draft of t_{i+2}) is compared with the main model's own
                 greedy prediction of t_{i+2} given the true prefix t_{≤i+1}, and with the true t_{i+2}. Real
                 decoding feeds the main model's own tokens instead (bench/mtp_decode.py measures that).

    python experiments/mtp/run_mtp.py                      # 9 runs, two 1-thread workers, ≈ 8–12 min shared
    python experiments/mtp/run_mtp.py --steps 20 --seeds 0 --out /tmp/mtp   # smoke run (< 1 min)

Writes ``results.json`` (every run, per-D mean/std/min–max and per-seed differences to D = 0),
``run_info.json`` (versions, machine, corpus hash, settings, wall times) and ``model_d1/`` (the D = 1 seed-0
model, ``dslearn.export.to_hf``; read back with ``dslearn.export.from_hf``, checked tensor for tensor).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PRESET = "tiny"
SETTINGS = dict(batch_size=8, seq_len=256, lr=3e-3, warmup_steps=20, schedule="multistep")
DEPTHS = (0, 1, 2)
SEEDS = (0, 1, 2)
SWITCH_FRACTION = 2 / 3  # λ = 0.3 → 0.1 here; V3: after 10T of 14.8T tokens (0.68)


def model_config(depth: int, steps: int):
    from dslearn.config import ModelConfig

    return ModelConfig.from_preset(PRESET, num_nextn_predict_layers=depth, mtp_loss_weight=0.3,
                                   mtp_loss_weight_final=0.1,
                                   mtp_weight_switch_step=round(SWITCH_FRACTION * steps) if depth else None)


def main_weights_equal(model, depth: int, seed: int, steps: int) -> bool:
    """Whether ``model`` (built fresh with D = depth) holds exactly the D = 0 model's initial main weights."""
    from dslearn.model import CausalLM

    ref = CausalLM(model_config(0, steps), seed=seed).state_dict()
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in ref.items())


@torch.no_grad()
def acceptance_proxy(model, val, n_windows: int = 64, seq_len: int = 256, batch_size: int = 16) -> dict:
    """Teacher-forced acceptance of depth-1 drafts on held-out windows (see the module docstring).

    Position i (0-based, i ≤ T−2): draft = argmax OutHead(TRM_1(M_1[hnorm(h_i); enorm(Emb(t_{i+1}))])), a guess
    of t_{i+2}; main = argmax of the main model's logits at position i+1 (its greedy t_{i+2} given t_{≤i+1})."""
    model.eval()
    depth = model.mtp[0]
    agree_main = agree_true = main_true = n = 0
    agree_main_when_right = n_right = 0
    for x, y in val.eval_batches(n_windows, seq_len, batch_size):
        B, T = x.shape
        inputs = model.prepare(B, T, x.device)
        h = model.backbone(model.model.embed_tokens(x), inputs)  # h^0 (B, T, d), before the final norm
        main = model.head(h).argmax(-1)  # (B, T): greedy t_{i+1} at position i
        ins = model.prepare(B, T - 1, x.device)
        h1 = depth(h[:, :-1], model.model.embed_tokens(x[:, 1:]), ins.rope, ins.attn_mask)  # (B, T−1, d)
        draft = model.lm_head(depth.shared_head.norm(h1)).argmax(-1)  # (B, T−1): drafts of t_{i+2}
        target_main, target_true = main[:, 1:], y[:, 1:]  # main's greedy t_{i+2}; the true t_{i+2}
        right = main[:, :-1] == y[:, :-1]  # main's greedy t_{i+1} was the true one: the proxy's prefix is its own
        agree_main += int((draft == target_main).sum())
        agree_true += int((draft == target_true).sum())
        main_true += int((target_main == target_true).sum())
        agree_main_when_right += int(((draft == target_main) & right).sum())
        n_right += int(right.sum())
        n += draft.numel()
    return {"positions": n, "vs_main_greedy": agree_main / n, "vs_true_token": agree_true / n,
            "main_greedy_vs_true": main_true / n,
            "vs_main_greedy_where_main_next_correct": agree_main_when_right / max(n_right, 1),
            "main_next_correct_fraction": n_right / n}


def run_one(depth: int, seed: int, steps: int, eval_windows: int = 256, export_dir: str | None = None,
            accept_windows: int = 64, threads: int = 1) -> dict:
    """Train one (D, seed) run; returns its record. With ``export_dir``, write the model there with to_hf and
    check that from_hf reads back the identical state dict."""
    torch.set_num_threads(threads)  # two 1-thread workers beat one 2-thread run on shared cores
    from dslearn.data import TokenStream, load_corpus
    from dslearn.export import from_hf, to_hf
    from dslearn.model import CausalLM
    from dslearn.train import TrainConfig, Trainer, read_metrics

    corpus = load_corpus()
    cfg = model_config(depth, steps)
    model = CausalLM(cfg, seed=seed)
    same_init = main_weights_equal(model, depth, seed, steps)
    tc = TrainConfig(steps=steps, **SETTINGS, seed=seed, eval_every=max(steps // 5, 1), eval_windows=eval_windows,
                     log_every=5, progress=False)
    val = TokenStream(corpus.val, "val")
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, tc, TokenStream(corpus.train, "train"), val, run_dir=run_dir)
        t0 = time.perf_counter()
        res = trainer.fit()
        wall = time.perf_counter() - t0
        rows = read_metrics(run_dir, "train")
    tail = rows[-max(len(rows) // 5, 1):]  # the last 20% of logged steps
    rec = {
        "depth": depth, "seed": seed, "steps": steps, "wall_s": wall, "tokens_per_s": res.tokens_per_s,
        "same_main_init_as_d0": same_init,
        "parameters": model.num_parameters(), "main_parameters": model.num_parameters(mtp=False),
        "final_val_loss": res.val[-1]["val_loss"], "final_val_bpb": res.final_val_bpb, "val": res.val,
        "train": {"step": [r["step"] for r in rows],
                  "ce_loss": [r.get("ce_loss", r["loss"]) for r in rows],  # D = 0 logs no ce_loss: loss is CE
                  **{f"mtp_loss{k}": [r[f"mtp/loss{k}"] for r in rows] for k in range(1, depth + 1)},
                  **({"mtp_lambda": [r["mtp/lambda"] for r in rows]} if depth else {})},
        "final_train_ce": statistics.fmean(r.get("ce_loss", r["loss"]) for r in tail),
        **{f"final_mtp_loss{k}": statistics.fmean(r[f"mtp/loss{k}"] for r in tail) for k in range(1, depth + 1)},
    }
    if depth:
        t0 = time.perf_counter()
        rec["acceptance"] = acceptance_proxy(model, val, accept_windows, tc.seq_len)
        rec["acceptance_wall_s"] = time.perf_counter() - t0
    if export_dir is not None:
        model.eval()
        to_hf(model, export_dir)
        back = from_hf(export_dir).state_dict()
        own = model.state_dict()
        rec["export_roundtrip_identical"] = own.keys() == back.keys() and all(
            torch.equal(own[k], back[k]) for k in own)
    return rec


def git_commit() -> str | None:
    """The repository's HEAD commit (the dslearn code a run used, when it runs from this checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[dict]) -> dict:
    """Per D: mean, sample std and min–max over seeds; per seed: the difference to D = 0 (paired: same init,
    same batches)."""
    by = {}
    for r in runs:
        by.setdefault(r["depth"], {})[r["seed"]] = r
    out = {}
    for depth, seeds in sorted(by.items()):
        rs = [seeds[s] for s in sorted(seeds)]
        s = {"seeds": sorted(seeds), "final_val_bpb": spread([r["final_val_bpb"] for r in rs]),
             "final_val_loss": spread([r["final_val_loss"] for r in rs]),
             "final_train_ce": spread([r["final_train_ce"] for r in rs]),
             "wall_s": spread([r["wall_s"] for r in rs]), "tokens_per_s": spread([r["tokens_per_s"] for r in rs])}
        for k in range(1, depth + 1):
            s[f"final_mtp_loss{k}"] = spread([r[f"final_mtp_loss{k}"] for r in rs])
        if depth:
            for key in ("vs_main_greedy", "vs_true_token", "main_greedy_vs_true"):
                s[f"acceptance_{key}"] = spread([r["acceptance"][key] for r in rs])
        base = by.get(0, {})
        paired = [seeds[x]["final_val_bpb"] - base[x]["final_val_bpb"] for x in sorted(seeds) if x in base]
        if depth and paired:
            s["val_bpb_minus_d0_per_seed"] = paired
            s["val_bpb_minus_d0"] = spread(paired)
        out[str(depth)] = s
    return out


def markdown_table(results: dict) -> str:
    """The README's table from a results.json dict (``--table``)."""
    lines = ["| D | val bpb, mean ± std (3 seeds) | min – max | Δ vs D=0, per seed (mean ± std) | final train CE "
             "(nats) | L_MTP^1 | L_MTP^2 | draft = main greedy | draft = true token | wall s / run | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d, s in results["summary"].items():
        b, ce = s["final_val_bpb"], s["final_train_ce"]
        delta = s.get("val_bpb_minus_d0")
        cells = [d, f"{b['mean']:.4f} ± {b['std']:.4f}", f"{b['min']:.4f} – {b['max']:.4f}",
                 f"{delta['mean']:+.4f} ± {delta['std']:.4f}" if delta else "—", f"{ce['mean']:.3f}"]
        for k in (1, 2):
            m = s.get(f"final_mtp_loss{k}")
            cells.append(f"{m['mean']:.3f}" if m else "—")
        for key in ("vs_main_greedy", "vs_true_token"):
            m = s.get(f"acceptance_{key}")
            cells.append(f"{m['mean']:.3f} ± {m['std']:.3f}" if m else "—")
        cells += [f"{s['wall_s']['mean']:.0f}", f"{s['tokens_per_s']['mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    p.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--eval-windows", type=int, default=256, help="validation windows of 256 bytes")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-export", action="store_true", help="do not write model_d1/")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--table", action="store_true", help="print the README table from OUT/results.json and exit")
    a = p.parse_args()
    if a.table:
        print(markdown_table(json.loads((a.out / "results.json").read_text())))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    export = None if a.no_export or 1 not in a.depths or 0 not in a.seeds else str(a.out / "model_d1")
    jobs = sorted(((d, s) for d in a.depths for s in a.seeds), key=lambda j: (-j[0], j[1]))  # longest first
    args = [(d, s, a.steps, a.eval_windows, export if (d, s) == (1, 0) else None) for d, s in jobs]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(a.workers) as pool:
        runs = pool.starmap(run_one, args)
    total = time.perf_counter() - t0
    runs.sort(key=lambda r: (r["depth"], r["seed"]))
    from dslearn.data import load_corpus

    corpus = load_corpus()
    settings = {"preset": PRESET, "steps": a.steps, **SETTINGS, "tokens_per_run": a.steps * SETTINGS["batch_size"]
                * SETTINGS["seq_len"], "mtp_loss_weight": 0.3, "mtp_loss_weight_final": 0.1,
                "mtp_weight_switch_step": round(SWITCH_FRACTION * a.steps), "eval_windows": a.eval_windows,
                "depths": a.depths, "seeds": a.seeds}
    (a.out / "results.json").write_text(json.dumps({"settings": settings, "summary": summarize(runs), "runs": runs},
                                                   indent=1))
    info = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "workers": a.workers, "threads_per_worker": 1,
            "corpus_sha256": corpus.sha256, "corpus": corpus.describe(), "settings": settings,
            "wall_s": {"total": round(total, 1),
                       **{f"d{r['depth']}_seed{r['seed']}": round(r["wall_s"], 1) for r in runs}},
            "dslearn_commit": git_commit(), "command": "python experiments/mtp/run_mtp.py"}
    (a.out / "run_info.json").write_text(json.dumps(info, indent=1))
    for r in runs:
        acc = r.get("acceptance", {})
        print(f"D={r['depth']} seed={r['seed']}  val_bpb {r['final_val_bpb']:.4f}  "
              + "  ".join(f"mtp{k} {r[f'final_mtp_loss{k}']:.3f}" for k in range(1, r["depth"] + 1))
              + (f"  accept(main) {acc['vs_main_greedy']:.3f} (true) {acc['vs_true_token']:.3f}" if acc else "")
              + f"  {r['tokens_per_s']:.0f} tok/s  {r['wall_s']:.0f}s")
    for d, s in summarize(runs).items():
        b = s["final_val_bpb"]
        print(f"D={d}: val_bpb {b['mean']:.4f} ± {b['std']:.4f} [{b['min']:.4f}, {b['max']:.4f}]")
    print(f"total wall {total:.0f}s")


if __name__ == "__main__":
    main()
