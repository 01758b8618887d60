"""The ``dslearn`` command line: ``check``, ``train``, ``sample``, ``tour`` and ``capstone``.

    python -m dslearn tour                      # the 1–2 minute end-to-end run
    dslearn capstone --quick                    # chapter 10: a miniature V3 through every stage (≤ 3 minutes)
    dslearn train --preset tiny --steps 300 --out runs/tiny
    dslearn train --preset tiny --set num_hidden_layers=2 --set lr=3e-3 --out runs/two-layers
    dslearn sample runs/tiny --prompt "def "

``train`` and ``tour`` can set every ``ModelConfig`` and ``TrainConfig`` field (CONFIGURING, below, is
also their ``--help`` text); ``build_configs`` turns a parsed command line into the two configs.

Errors. Every user mistake is one line on stderr, ``error: …`` naming the option or field and what is
allowed, never a traceback (``main``'s one error path, ``_exit_code``): exit status 2 for a usage error
(a bad flag or value, a missing path, a run directory holding another recipe), 1 for a run that could
not go on (divergence, a full disk, no intact checkpoint, another process training in --out), 130 for
Ctrl-C/SIGTERM (the checkpoint is saved and the message says how to resume). ``DSLEARN_TRACEBACK=1``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from .config import (
    ACCOUNTING_ONLY,
    ConfigError,
    ModelConfig,
    field_names,
    get_preset,
    preset_fields,
    preset_names,
    unknown_names_error,
)

TOUR = dict(preset="tiny", steps=300, batch_size=16, lr=3e-3, warmup_steps=30, eval_every=100)

CONFIGURING = """\
configuring the run: every ModelConfig and TrainConfig field can be set; later layers override earlier ones
  1. --preset NAME         the preset's ModelConfig fields; the training defaults shown below
  2. --config FILE.json    {"model": {ModelConfig fields}, "train": {TrainConfig fields}}, both optional;
                           a run directory's config.json ({"model_config": ..., "train_config": ...}) works too
  3. --set KEY=VALUE       repeatable; VALUE is read as JSON when it parses (2, 3e-3, true, null,
                           '{"type": "yarn", "factor": 4}'), else as a string (cosine); KEY is a field name,
                           written model.KEY or train.KEY when a name belongs to both
  4. the named flags       --steps, --lr, ... when given on the command line
Fields the preset derives (head_dim, num_key_value_heads) follow the changed sizes unless set themselves."""

# The named flags of train/tour: each sets the TrainConfig field named like it (dashes → underscores).
_TRAIN_FLAGS = (
    ("--steps", int, "optimizer steps"),
    ("--batch-size", int, "sequences per step"),
    ("--seq-len", int, "tokens per sequence, None = the model's context"),
    ("--lr", float, "peak learning rate"),
    ("--warmup-steps", int, "linear warm-up steps"),
    ("--schedule", str, "learning-rate schedule"),
    ("--eval-every", int, "steps between validation passes (0 = only at the end)"),
    ("--checkpoint-every", int, "steps between checkpoints (0 = only at the end)"),
    ("--seed", int, "model initialisation and batch order"),
    ("--device", str, "cpu, cuda, mps or auto"),
)
_TRAIN_DESTS = (*(flag[2:].replace("-", "_") for flag, _, _ in _TRAIN_FLAGS), "bf16", "progress")


class _Given(argparse.Action):
    """Store the value (``const`` for a switch) and record the field in ``namespace.given``, so that a flag
    typed on the command line outranks --config and --set while its default does not."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.given = namespace.given | {self.dest}


class UsageError(ValueError):
    """A command-line value the command cannot use (exit status 2); the message names the option."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: ``error: <what> (see dslearn … --help)``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _trainable_presets() -> list[str]:
    return [name for name in preset_names() if name not in ACCOUNTING_ONLY]


def _preset(name: str) -> str:
    if name in ACCOUNTING_ONLY:
        raise argparse.ArgumentTypeError(f"preset {name!r} describes a paper-scale model for accounting only; "
                                         f"train one of {', '.join(_trainable_presets())}")
    if name not in preset_names():
        raise argparse.ArgumentTypeError(f"unknown preset {name!r}; choose one of {', '.join(_trainable_presets())}")
    return name


def _train_args(p: argparse.ArgumentParser, overrides: dict) -> None:
    # Imported here, not at the top: `dslearn check` must run, and report, when torch is broken.
    from .train import TrainConfig
    from .train.schedule import SCHEDULES

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | overrides
    p.set_defaults(given=frozenset())
    p.add_argument("--preset", default=defaults.get("preset", "tiny"), type=_preset,
                   metavar="{" + ",".join(_trainable_presets()) + "}", help="model preset (default: %(default)s)")
    p.add_argument("--config", metavar="FILE.json", help="model and training fields from a JSON file (see above)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any ModelConfig or TrainConfig field; repeatable (see above)")
    for flag, kind, text in _TRAIN_FLAGS:
        dest = flag[2:].replace("-", "_")
        p.add_argument(flag, dest=dest, type=kind, default=defaults[dest], action=_Given,
                       choices=SCHEDULES if dest == "schedule" else None, help=f"{text} (default: %(default)s)")
    p.add_argument("--bf16", action=_Given, nargs=0, const=True, default=defaults["bf16"],
                   help="bf16 autocast (fast on CPUs with AMX/AVX512-BF16; default: off)")
    p.add_argument("--no-progress", dest="progress", action=_Given, nargs=0, const=False,
                   default=defaults["progress"], help="hide the progress bar (default: shown)")


def _resolve_key(key: str, model_keys: set[str], train_keys: set[str]) -> tuple[str, str]:
    """("model" | "train", field name) for a --set KEY, prefixed or not."""
    section, dot, name = key.partition(".")
    if dot and section in ("model", "train"):
        known = model_keys if section == "model" else train_keys
        if name not in known:
            raise unknown_names_error(f"{'ModelConfig' if section == 'model' else 'TrainConfig'} field",
                                      [name], known)
        return section, name
    if key in model_keys and key in train_keys:
        raise ConfigError(f"--set {key}: ambiguous, both ModelConfig and TrainConfig have it; "
                          f"write model.{key} or train.{key}")
    if key in model_keys:
        return "model", key
    if key in train_keys:
        return "train", key
    raise unknown_names_error("config key (a ModelConfig or TrainConfig field)", [key], model_keys | train_keys)


def _parse_sets(items: list[str], model_keys: set[str], train_keys: set[str]) -> dict[str, dict]:
    out: dict[str, dict] = {"model": {}, "train": {}}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        section, name = _resolve_key(key.strip(), model_keys, train_keys)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[section][name] = value
    return out


_SECTIONS = {"model": "model", "train": "train", "model_config": "model", "train_config": "train"}


def _read_config_file(path: str) -> dict[str, dict]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object {{\"model\": {{...}}, \"train\": {{...}}}}")
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise unknown_names_error(f"section(s) in {path} (use \"model\" and \"train\")", unknown, _SECTIONS)
    out: dict[str, dict] = {"model": {}, "train": {}}
    for key, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"--config {path}: {key!r} must be a JSON object of fields, got {value!r}")
        out[_SECTIONS[key]] |= value
    return out


def build_configs(args):
    """The (ModelConfig, TrainConfig) a parsed ``train``/``tour`` command line asks for.

    Layers, each overriding the one before: the preset and TrainConfig's defaults (the command's own
    defaults for ``tour``), ``--config``, each ``--set``, then the named flags given on the command line.
    Raises ConfigError (or TrainConfig's ValueError) with a one-line message naming the field."""
    from .train import TrainConfig

    model_keys, train_keys = field_names(ModelConfig), field_names(TrainConfig)
    model = preset_fields(args.preset)
    train = {dest: getattr(args, dest) for dest in _TRAIN_DESTS if dest not in args.given}  # flag defaults
    layers = [_read_config_file(args.config)] if args.config else []
    layers.append(_parse_sets(args.overrides, model_keys, train_keys))
    layers.append({"model": {}, "train": {dest: getattr(args, dest) for dest in args.given}})
    for layer in layers:
        model |= layer["model"]
        train |= layer["train"]
    unknown = set(train) - train_keys
    if unknown:
        raise unknown_names_error("TrainConfig field(s)", unknown, train_keys)
    return ModelConfig.from_dict(model), TrainConfig(**train)


def _configs_or_exit(args):
    """build_configs, with a bad field reported as one line and exit status 2 (a usage error, like argparse's)."""
    try:
        return build_configs(args)
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError; TypeError: a value of the wrong type
        raise UsageError(str(e)) from None


def _run_training(args, run_dir: Path | None, resume: bool):
    from .data import TokenStream, load_corpus
    from .model import CausalLM
    from .train import Trainer

    _preset(args.preset)  # argparse checked it too; build_parser is not the only way here
    if run_dir is not None:
        _check_out(run_dir)
    if getattr(args, "prompt", "x") == "":  # tour samples at the end: refuse before training, not after
        raise UsageError("--prompt must not be empty: sampling starts from at least one token")
    cfg, tcfg = _configs_or_exit(args)
    _check_device(tcfg.device)
    corpus = load_corpus()
    print(corpus.describe())
    model = CausalLM(cfg, seed=tcfg.seed)
    changed = ", ".join(f"{k}={v[0]!r}" for k, v in cfg.differences(get_preset(args.preset)).items())
    print(f"model: preset {args.preset!r}{f' with {changed}' if changed else ''}, "
          f"{model.num_parameters():,} parameters ({model.num_parameters(non_embedding=True):,} non-embedding)")
    train, val = TokenStream(corpus.train, "train split"), TokenStream(corpus.val, "validation split")
    trainer = Trainer(model, tcfg, train, val, run_dir=run_dir)
    t0 = time.perf_counter()
    result = trainer.fit(resume=resume)
    return model, tcfg, result, time.perf_counter() - t0


def _check_out(run_dir: Path) -> None:
    if str(run_dir) in ("", "."):
        raise UsageError("--out must name a run directory (e.g. runs/tiny), got an empty path")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file; --out must name a run directory")


def _check_device(device: str) -> None:
    from .devices import resolve_device

    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--device: {e}") from None


def _check_sampling(args, vocab_size: int = 256) -> None:
    """The sampling options of ``sample``: one UsageError naming the option and its allowed values."""
    if not args.prompt:
        raise UsageError("--prompt must not be empty: sampling starts from at least one token")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be an integer >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if not 1 <= args.top_k <= vocab_size:
        raise UsageError(f"--top-k must be an integer in 1..{vocab_size} (the vocabulary), got {args.top_k}")
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be an integer >= 1, got {args.num_samples}")


def _sample_text(model, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None, seed: int) -> str:
    import torch

    from .data import ByteTokenizer
    from .generate import generate

    tok = ByteTokenizer()
    ids = tok.encode(prompt)
    context = model.config.max_position_embeddings
    if len(ids) >= context:
        raise UsageError(f"--prompt is {len(ids)} tokens; the model's context holds {context}, so it must be "
                         f"at most {context - 1} tokens long")
    max_new_tokens = min(max_new_tokens, context - len(ids))
    out = generate(model, [ids], max_new_tokens, temperature=temperature, top_k=top_k,
                   generator=torch.Generator().manual_seed(seed))[0]
    return prompt + tok.decode(out.tokens)


def cmd_check(args) -> int:
    from .envcheck import report

    text, ok = report()
    print(text)
    print("\nAll required checks passed." if ok else "\nSome required checks FAILED (see above).")
    return 0 if ok else 1


def _pct(mfu: float) -> str:
    """Model FLOPs utilisation (train/mfu.py: against a matmul peak measured in this process) as a percentage."""
    return f"{100 * mfu:.2f}%" if math.isfinite(mfu) else "n/a"


def cmd_train(args) -> int:
    _, _, result, seconds = _run_training(args, Path(args.out), resume=not args.no_resume)
    if not result.losses:  # the run had already finished: nothing trained, no throughput to report
        print(f"done: the run in {args.out} had already reached step {result.steps_done}; "
              f"validation {result.final_val_bpb:.3f} bits/byte")
        return 0
    print(f"done: step {result.steps_done}, validation {result.final_val_bpb:.3f} bits/byte, "
          f"{result.tokens_per_s:,.0f} tokens/s, MFU {_pct(result.mfu)}, {seconds:.0f} s. Run directory: {args.out}")
    return 0


def cmd_sample(args) -> int:
    from .train import load_model_from_checkpoint

    if not Path(args.checkpoint).exists():
        raise UsageError(f"sample: {args.checkpoint} does not exist (give a run directory written by "
                         f"`dslearn train --out DIR`, or one of its checkpoints)")
    _check_sampling(args)
    _check_device(args.device)
    model = load_model_from_checkpoint(args.checkpoint, device=args.device)
    for i in range(args.num_samples):
        print(_sample_text(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed + i))
        print("-" * 60)
    return 0


def cmd_tour(args) -> int:
    import math

    run_dir = Path(args.out) if args.out else None
    print("dslearn tour: train the tiny DeepSeek-LLM baseline on the Python standard library.\n")
    model, tcfg, result, seconds = _run_training(args, run_dir, resume=False)
    first, last = result.losses[0], sum(result.losses[-10:]) / min(10, len(result.losses))
    print(f"\ntrained {result.steps_done} steps in {seconds:.0f} s ({result.tokens_per_s:,.0f} tokens/s, "
          f"MFU {_pct(result.mfu)})")
    print(f"training loss: {first:.3f} → {last:.3f} nats/byte (uniform guess: ln 256 = {math.log(256):.3f})")
    print(f"validation: {result.final_val_bpb:.3f} bits per byte (uniform guess: 8.000)")
    print("\nsample (temperature 0.8, top-k 40):\n" + "-" * 60)
    print(_sample_text(model, args.prompt, 200, 0.8, 40, tcfg.seed))
    print("-" * 60)
    return 0


def cmd_capstone(args) -> int:
    from .capstone import CapstoneError, describe_plan, make_plan, run
    from .train import ddp

    out = args.out or ("runs/capstone-quick" if args.quick else "runs/capstone")
    # under torchrun: join the process group; the ranks wait for each other while rank 0 runs GRPO, evaluation
    # and export alone, so a barrier may wait as long as a stage takes (a failed rank ends the job through torchrun)
    ddp.init_from_env(args.device, timeout_minutes=24 * 60)
    try:
        if ddp.is_main():
            print(describe_plan(make_plan(args.quick, args.seed, args.fp8)) + "\n")
        run(out, quick=args.quick, until=args.until, from_=args.from_, device=args.device, threads=args.threads,
            progress=not args.no_progress, seed=args.seed, fp8=args.fp8)
    except CapstoneError as e:
        if ddp.is_main():  # every rank finds the same bad input: one of them says so
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if ddp.is_main():
            print(f"\ninterrupted; run the same command to resume from the last checkpoint in {out}",
                  file=sys.stderr)
        return 130
    if (args.until is None or args.until == "report") and ddp.is_main():
        print(f"report: {Path(out) / 'report.md'}")
    return 0


def build_parser(training: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``training=False`` leaves out train and tour, whose options import torch."""
    parser = _Parser(prog="dslearn", description="DeepSeek's ideas in miniature: the course's tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="report on the environment ([OK]/[WARN]/[FAIL])")
    p.set_defaults(func=cmd_check)
    if not training:
        return parser
    described = dict(description=CONFIGURING, formatter_class=argparse.RawDescriptionHelpFormatter)
    p = sub.add_parser("train", help="pretrain a preset model on the embedded corpus", **described)
    _train_args(p, {})
    p.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoints); running the same "
                                                "command again resumes the run there")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run found in --out "
                                                            "(default: resume it)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("checkpoint", help="a run directory or checkpoint directory")
    p.add_argument("--prompt", default="def ", help="text to continue, not empty (default: %(default)r)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to add, >= 1 (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="finite, >= 0; 0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest bytes, 1..256 "
                                                          "(default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=1, help=">= 1 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: %(default)s)")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("tour", help="the 1–2 minute end-to-end run: train tiny, report bits/byte, sample",
                       **described)
    _train_args(p, TOUR)
    p.add_argument("--out", default=None, help="keep the run here, a new directory (default: not saved)")
    p.add_argument("--prompt", default="def ", help="text the sample continues (default: %(default)r)")
    p.set_defaults(func=cmd_tour)
    p = sub.add_parser("capstone", help="chapter 10: train a miniature DeepSeek-V3 stage by stage (resumable)",
                       description="Pretrain → long context (YaRN) → cold-start SFT → reasoning RL → "
                                   "rejection-sampling SFT → final RL → evaluate → export (checked by transformers) → "
                                   "report. Interrupt at any time; the same command resumes at the same stage and "
                                   "step.")
    p.add_argument("--out", default=None, help="run directory (default: runs/capstone, or runs/capstone-quick)")
    p.add_argument("--quick", action="store_true", help="a reduced run (≤ 3 minutes on 2 cores)")
    p.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    p.add_argument("--from", dest="from_", metavar="STAGE",
                   help="rerun STAGE and every stage after it (earlier stages must be done)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: %(default)s; a model this small runs as fast on one, and steadier "
                        "on shared cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp8", action="store_true",
                   help="every linear layer, routed experts included, in FP8 with V3's tile scales (chapter 05): "
                        "Triton kernels on a GPU, emulated (slower) on CPU")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=cmd_capstone)
    return parser


def _exit_code(e: BaseException) -> int | None:
    """The exit status of a user-facing error (2: usage, 1: the run could not go on); None for a bug."""
    mods = {name: sys.modules.get(name) for name in ("dslearn.train.checkpoint", "dslearn.train.loop",
                                                      "dslearn.data.corpus", "dslearn.rl.sandbox")}
    ckpt, loop, corpus = mods["dslearn.train.checkpoint"], mods["dslearn.train.loop"], mods["dslearn.data.corpus"]
    if ckpt is not None and isinstance(e, getattr(ckpt, "RunConflictError", ())):
        return 2
    if isinstance(e, (ValueError, TypeError)):  # ConfigError, UsageError, a value a function refused
        return 2
    if ckpt is not None and isinstance(e, ckpt.CheckpointError):
        return 1
    if loop is not None and isinstance(e, loop.DivergenceError):
        return 1
    if corpus is not None and isinstance(e, corpus.CorpusError):
        return 1
    sandbox = mods["dslearn.rl.sandbox"]
    if sandbox is not None and isinstance(e, getattr(sandbox, "SandboxUnavailable", ())):
        return 1
    if isinstance(e, OSError):
        return 1
    return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.filename + ': ' if e.filename else ''}{e.strerror}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run a command. User errors exit through SystemExit with one ``error: …`` line on stderr (see above)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # `check` diagnoses a broken install, so its parser must not import torch (train/tour options do).
    args = build_parser(training=argv[:1] != ["check"]).parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        try:
            return args.func(args)
        except KeyboardInterrupt as e:  # the loop's Interrupted says where it saved and how to resume
            print(f"\n{_one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
            raise SystemExit(130) from None
        except Exception as e:
            code = _exit_code(e)
            if code is None or os.environ.get("DSLEARN_TRACEBACK"):
                raise
            print(f"error: {_one_line(e)}", file=sys.stderr)
            raise SystemExit(code) from None
