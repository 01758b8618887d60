"""Chapter 05 experiments, full size: regenerates the CSV/JSON files next to this script.

    python experiments/fp8/run_fp8.py                       # everything, ≈ 8–10 min on 2 shared cores
    python experiments/fp8/run_fp8.py --parts scaling accumulation   # the two fast studies (< 10 s)
    python experiments/fp8/run_fp8.py --steps 20 --out /tmp/fp8     # smoke run

1. scaling_error.csv — activations with outliers (random entries, or whole channels) quantised to E4M3
   per tensor, per token, in 1×128 tiles and in 128×128 blocks; error of the ordinary values.
2. accumulation_error.csv — an emulated 14-bit tensor-core accumulator (dslearn.fp8.accumulation)
   vs K, without promotion and with FP32 promotion every N_C elements; plus fp32 accumulation.
3. training.json — the same model (hidden 128, FFN 384, 4 layers, byte vocabulary; every Linear a
   multiple of 128) trained for the same budget in fp32, bf16 autocast and FP8Linear, plus fp32 with
   another seed for scale; final validation losses and their relative gaps.

Each part records its wall time, and run_info.json the machine, versions and corpus hash.
Runs with one intra-op thread (the machine has two cores and is usually shared).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

from dslearn.data import load_corpus
from dslearn.fp8.accumulation import accumulation_sweep
from dslearn.studies.fp8 import relative_gap, scaling_error_study, train_compare

HERE = Path(__file__).resolve().parent
TRAIN_MODES = ("fp32", "bf16", "fp8", "fp32@1")


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def run_scaling(out: Path) -> float:
    t0 = time.perf_counter()
    rows = scaling_error_study(magnitudes=(1, 10, 100, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5), T=512, K=2048)
    write_csv(out / "scaling_error.csv", rows)
    return time.perf_counter() - t0


def run_accumulation(out: Path) -> float:
    t0 = time.perf_counter()
    rows = accumulation_sweep(Ks=(128, 256, 512, 1024, 2048, 4096, 8192, 16384), promote_every=(None, 128),
                              M=64, N=64, progress=True)
    for nc in (32, 64, 256, 512, 1024):  # the promotion interval at K = 4096
        rows += [r for r in accumulation_sweep(Ks=(4096,), promote_every=(nc,), M=64, N=64)
                 if r["accumulation"] != "fp32"]
    write_csv(out / "accumulation_error.csv", rows)
    return time.perf_counter() - t0


def run_training(out: Path, steps: int) -> float:
    t0 = time.perf_counter()
    settings = dict(steps=steps, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=min(30, steps // 4),
                    eval_windows=128, eval_every=max(1, steps // 8), seed=0)
    res = train_compare(modes=TRAIN_MODES, **settings)
    summary = {
        "settings": settings,
        "model": "hidden 128, intermediate 384, 4 layers, 4 heads, vocab 256 (dslearn.studies.fp8.fp8_model_config)",
        "gap_percent": {"fp8 vs bf16": relative_gap(res, "fp8", "bf16"),
                        "fp8 vs fp32": relative_gap(res, "fp8", "fp32"),
                        "bf16 vs fp32": relative_gap(res, "bf16", "fp32"),
                        "fp32 seed 1 vs seed 0": relative_gap(res, "fp32@1", "fp32")},
        "runs": res,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=1))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["scaling", "accumulation", "training"],
                   choices=["scaling", "accumulation", "training"])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per training run")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    info_path = args.out / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    corpus = load_corpus()
    info.update({"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                 "cpu_count": __import__("os").cpu_count(), "threads": 1, "corpus_sha256": corpus.sha256})
    info.setdefault("wall_s", {})
    for part in args.parts:
        fn = {"scaling": lambda: run_scaling(args.out), "accumulation": lambda: run_accumulation(args.out),
              "training": lambda: run_training(args.out, args.steps)}[part]
        info["wall_s"][part] = round(fn(), 1)
        print(f"{part}: {info['wall_s'][part]} s")
        info_path.write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
