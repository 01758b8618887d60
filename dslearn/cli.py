"""The ``dslearn`` command line: ``check``, ``train``, ``sample`` and ``tour``.

    python -m dslearn tour                      # the 1–2 minute end-to-end run
    dslearn train --preset tiny --steps 300 --out runs/tiny
    dslearn sample runs/tiny --prompt "def "
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import ACCOUNTING_ONLY, get_preset, preset_names

TOUR = dict(preset="tiny", steps=300, batch_size=16, lr=3e-3, warmup_steps=30, eval_every=100)


def _train_args(p: argparse.ArgumentParser, defaults: dict) -> None:
    p.add_argument("--preset", default=defaults.get("preset", "tiny"), choices=preset_names(),
                   help="model preset (default: %(default)s)")
    p.add_argument("--steps", type=int, default=defaults.get("steps", 1000),
                   help="optimizer steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 16), help="sequences per step")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the preset's context)")
    p.add_argument("--lr", type=float, default=defaults.get("lr", 2e-3), help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=defaults.get("warmup_steps", 50))
    p.add_argument("--schedule", default="multistep", choices=("multistep", "cosine", "constant"))
    p.add_argument("--eval-every", type=int, default=defaults.get("eval_every", 100))
    p.add_argument("--checkpoint-every", type=int, default=0, help="0 = only at the end")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on CPUs with AMX/AVX512-BF16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_training(args, run_dir: Path | None, resume: bool):
    from .data import TokenStream, load_corpus
    from .model import CausalLM
    from .train import TrainConfig, Trainer

    if args.preset in ACCOUNTING_ONLY:
        raise SystemExit(f"error: preset {args.preset!r} describes a paper-scale model for accounting only; "
                         f"train 'tiny' or 'small'")
    corpus = load_corpus()
    print(corpus.describe())
    cfg = get_preset(args.preset)
    model = CausalLM(cfg, seed=args.seed)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                       warmup_steps=args.warmup_steps, schedule=args.schedule, eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, bf16=args.bf16, seed=args.seed,
                       device=args.device, progress=not args.no_progress)
    print(f"model: preset {args.preset!r}, {model.num_parameters():,} parameters "
          f"({model.num_parameters(non_embedding=True):,} non-embedding)")
    train, val = TokenStream(corpus.train, "train split"), TokenStream(corpus.val, "validation split")
    trainer = Trainer(model, tcfg, train, val, run_dir=run_dir)
    t0 = time.perf_counter()
    result = trainer.fit(resume=resume)
    return model, result, time.perf_counter() - t0


def _sample_text(model, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None, seed: int) -> str:
    import torch

    from .data import ByteTokenizer
    from .generate import generate

    tok = ByteTokenizer()
    ids = tok.encode(prompt)
    max_new_tokens = min(max_new_tokens, model.config.max_position_embeddings - len(ids))
    if max_new_tokens < 1:
        raise SystemExit(f"error: the prompt fills the model's whole context ({model.config.max_position_embeddings})")
    out = generate(model, [ids], max_new_tokens, temperature=temperature, top_k=top_k,
                   generator=torch.Generator().manual_seed(seed))[0]
    return prompt + tok.decode(out.tokens)


def cmd_check(args) -> int:
    from .envcheck import report

    text, ok = report()
    print(text)
    print("\nAll required checks passed." if ok else "\nSome required checks FAILED (see above).")
    return 0 if ok else 1


def cmd_train(args) -> int:
    from .train import DivergenceError

    try:
        _, result, seconds = _run_training(args, Path(args.out), resume=not args.no_resume)
    except DivergenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: step {result.steps_done}, validation {result.final_val_bpb:.3f} bits/byte, "
          f"{result.tokens_per_s:,.0f} tokens/s, {seconds:.0f} s. Run directory: {args.out}")
    return 0


def cmd_sample(args) -> int:
    from .train import load_model_from_checkpoint

    model = load_model_from_checkpoint(args.checkpoint, device=args.device)
    for i in range(args.num_samples):
        print(_sample_text(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed + i))
        print("-" * 60)
    return 0


def cmd_tour(args) -> int:
    import math

    run_dir = Path(args.out) if args.out else None
    print("dslearn tour: train the tiny DeepSeek-LLM baseline on the Python standard library.\n")
    model, result, seconds = _run_training(args, run_dir, resume=False)
    first, last = result.losses[0], sum(result.losses[-10:]) / min(10, len(result.losses))
    print(f"\ntrained {result.steps_done} steps in {seconds:.0f} s ({result.tokens_per_s:,.0f} tokens/s)")
    print(f"training loss: {first:.3f} → {last:.3f} nats/byte (uniform guess: ln 256 = {math.log(256):.3f})")
    print(f"validation: {result.final_val_bpb:.3f} bits per byte (uniform guess: 8.000)")
    print("\nsample (temperature 0.8, top-k 40):\n" + "-" * 60)
    print(_sample_text(model, args.prompt, 200, 0.8, 40, args.seed))
    print("-" * 60)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dslearn", description="DeepSeek's ideas in miniature: the course's tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="report on the environment ([OK]/[WARN]/[FAIL])")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("train", help="pretrain a preset model on the embedded corpus")
    _train_args(p, {})
    p.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoints)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run found in --out")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("checkpoint", help="a run directory or checkpoint directory")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("tour", help="the 1–2 minute end-to-end run: train tiny, report bits/byte, sample")
    _train_args(p, TOUR)
    p.add_argument("--out", default=None, help="keep the run here (default: not saved)")
    p.add_argument("--prompt", default="def ")
    p.set_defaults(func=cmd_tour)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
