"""The course's trainer for next-token losses: pretraining and SFT, on the shared loop core (loop.py).

    for step in range(steps):
        x, y = train.batch(step, batch_size, seq_len, seed)   # any Batches: TokenStream, SFTStream, FIMStream;
                                                     # batch_size ramps up when batch_ramp_* are set (V3 §4.2)
        loss = model(x, y).loss                      # CE (+ MoE balance losses), optionally bf16 autocast
        loss.backward(); clip ‖g‖ to grad_clip       # DeepSeek-LLM: 1.0
        lr = warm-up, then multi-step (or cosine)    # train/schedule.py
        AdamW(β1=0.9, β2=0.95, weight decay 0.1)     # DeepSeek-LLM §2.3
        every eval_every steps: validation loss and bits per byte
        every checkpoint_every steps or checkpoint_minutes: an atomic checkpoint (train/checkpoint.py)

``Trainer`` only builds the step function (``step_function``: the batch of a step, split into
``grad_accum_steps`` micro-batches) and the evaluation; the loop itself — optimizer, clipping, the
divergence guard (``NonFiniteLossError``, ``DivergenceError``), ``after_optimizer_step()`` hooks
(V3's bias update), checkpoints, exact resume and the metrics log — is ``TrainingLoop``, which
GRPO (rl/trainer.py) runs too.

Targets of -100 (SFT prompts and padding) carry no loss. Each micro-batch's loss is weighted by its
share of the batch's target tokens, so accumulation gives the gradient of the whole batch even when
micro-batches hold different numbers of response tokens.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import check_choice, check_int, check_number
from ..data import Batches, EvalBatches, bits_per_byte
from . import ddp
from .loop import (
    DivergenceError,
    LoopConfig,
    LoopWrapper,
    MicroBatch,
    NonFiniteLossError,
    Step,
    TrainingLoop,
    make_optimizer,
)
from .mfu import matmul_peak, mfu, model_flops_per_token
from .schedule import SCHEDULES

__all__ = ["DivergenceError", "NonFiniteLossError", "TrainConfig", "TrainResult", "Trainer", "make_optimizer"]


@dataclass
class TrainConfig:
    steps: int = 200  # optimizer steps
    batch_size: int = 16  # sequences per step
    seq_len: int | None = None  # tokens per sequence; None → the model's context
    grad_accum_steps: int = 1  # split each batch into this many micro-batches
    lr: float = 2e-3  # peak learning rate η
    warmup_steps: int = 20
    schedule: str = "multistep"  # "multistep" (DeepSeek-LLM), "v3" (V3 §4.2), "cosine" or "constant"
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    weight_decay: float = 0.1  # on matrices and embeddings, not on norms/biases
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    max_loss: float | None = None  # stop (DivergenceError) if a training loss exceeds this; None = only NaN/inf
    bf16: bool = False  # bf16 autocast for forward/backward (fp32 master weights)
    seed: int = 0  # model init and batch order
    eval_every: int = 50  # steps between validation passes (0 = only at the end)
    eval_windows: int = 64  # validation windows of seq_len tokens
    log_every: int = 10  # steps between metrics-log records
    checkpoint_every: int = 100  # steps between checkpoints (0 = none by count; the end is always saved); needs run_dir
    checkpoint_minutes: float | None = 10.0  # also save when this long has passed since the last save (None: off)
    keep_checkpoints: int = 2
    device: str = "cpu"
    progress: bool = True  # show a tqdm progress bar
    # V3's batch-size ramp (§4.2: 3,072 → 15,360 sequences over the first 469B of 14.8T tokens): the batch grows
    # linearly from batch_ramp_start sequences at step 0 to batch_size at step batch_ramp_steps (None: no ramp)
    batch_ramp_start: int | None = None
    batch_ramp_steps: int | None = None

    # fields that do not change the numbers a run computes: free to change on resume
    COSMETIC = ("eval_every", "eval_windows", "log_every", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints",
                "progress", "device")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum_steps", "eval_windows", "log_every", "keep_checkpoints"):
            check_int("TrainConfig", name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            check_int("TrainConfig", name, getattr(self, name), 0)
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} must be divisible by "
                             f"grad_accum_steps={self.grad_accum_steps}")
        if self.seq_len is not None:
            check_int("TrainConfig", "seq_len", self.seq_len, 1)
        if (self.batch_ramp_start is None) != (self.batch_ramp_steps is None):
            raise ValueError("TrainConfig.batch_ramp_start and batch_ramp_steps must be set together (or neither), "
                             f"got {self.batch_ramp_start!r} and {self.batch_ramp_steps!r}")
        if self.batch_ramp_start is not None:
            check_int("TrainConfig", "batch_ramp_start", self.batch_ramp_start, self.grad_accum_steps)
            check_int("TrainConfig", "batch_ramp_steps", self.batch_ramp_steps, 1)
            if self.batch_ramp_start > self.batch_size:
                raise ValueError(f"TrainConfig.batch_ramp_start={self.batch_ramp_start} must be <= "
                                 f"batch_size={self.batch_size} (the ramp grows the batch)")
        check_number("TrainConfig", "lr", self.lr, 0, above=True)
        check_choice("TrainConfig", "schedule", self.schedule, SCHEDULES)
        check_number("TrainConfig", "min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_number("TrainConfig", "weight_decay", self.weight_decay, 0)
        for name in ("beta1", "beta2"):
            check_number("TrainConfig", name, getattr(self, name), 0, 1)
        check_number("TrainConfig", "eps", self.eps, 0, above=True)
        check_number("TrainConfig", "grad_clip", self.grad_clip, 0, above=True, none_ok=True)
        check_number("TrainConfig", "max_loss", self.max_loss, 0, above=True, none_ok=True)
        check_number("TrainConfig", "checkpoint_minutes", self.checkpoint_minutes, 0, above=True, none_ok=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def batch_size_at(self, step: int) -> int:
        """Sequences in the batch of ``step``: batch_size, or V3's linear ramp up to it, rounded down to a
        multiple of grad_accum_steps (every micro-batch has the same number of rows)."""
        if self.batch_ramp_start is None or step >= self.batch_ramp_steps:
            return self.batch_size
        b = self.batch_ramp_start + (self.batch_size - self.batch_ramp_start) * step / self.batch_ramp_steps
        return max(self.grad_accum_steps, int(b) // self.grad_accum_steps * self.grad_accum_steps)

    def tokens_before(self, step: int, seq_len: int) -> int:
        """Tokens trained on in steps 0 … step−1."""
        if self.batch_ramp_start is None:
            return step * self.batch_size * seq_len
        ramp = min(step, self.batch_ramp_steps)
        return (sum(self.batch_size_at(s) for s in range(ramp)) + (step - ramp) * self.batch_size) * seq_len

    def loop_config(self) -> LoopConfig:
        """The loop core's settings (optimizer, schedule, guards, logging, checkpoints)."""
        names = {f.name for f in dataclasses.fields(LoopConfig)} - {"desc"}
        return LoopConfig(**{k: v for k, v in self.to_dict().items() if k in names}, desc="train")


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # training loss of every step this call ran
    val: list[dict] = field(default_factory=list)  # {"step", "val_loss", "val_bpb"} records
    tokens_per_s: float = float("nan")  # training throughput, evaluation excluded
    mfu: float = float("nan")  # model FLOPs utilisation at that throughput (train/mfu.py); NaN with log_mfu=False
    steps_done: int = 0  # the run's step counter at the end (resumed steps included)

    @property
    def final_val_bpb(self) -> float:
        return self.val[-1]["val_bpb"] if self.val else float("nan")


class Trainer(LoopWrapper):
    """Train ``model`` on ``train`` (any ``Batches``: a TokenStream, an SFTStream), evaluating on ``val``.

    With ``run_dir`` set, the run writes ``metrics.jsonl``, ``config.json`` and checkpoints there,
    and ``fit()`` resumes from the newest checkpoint it finds.
    """

    def __init__(self, model, cfg: TrainConfig, train: Batches, val: EvalBatches | None = None,
                 run_dir: str | Path | None = None, bytes_per_token: float = 1.0, log_mfu: bool = True):
        self.cfg = cfg
        self.seq_len = cfg.seq_len or model.config.max_position_embeddings
        if self.seq_len > model.config.max_position_embeddings:
            raise ValueError(f"TrainConfig.seq_len={self.seq_len} exceeds the model's context "
                             f"max_position_embeddings={model.config.max_position_embeddings}")
        train.check_fits(self.seq_len)  # a clear error now if the data cannot fill a batch
        if val is not None:
            val.check_fits(self.seq_len)
        self.train_data, self.val_data = train, val
        self.bytes_per_token = bytes_per_token
        self.loop = TrainingLoop(model, cfg.loop_config(), run_dir, {"train_config": cfg.to_dict()},
                                 cosmetic=TrainConfig.COSMETIC)
        self.model, self.device, self.optimizer = self.loop.model, self.loop.device, self.loop.optimizer
        self.run_dir, self.log = self.loop.run_dir, self.loop.log
        self.micro = ddp.my_micro_batches(cfg.grad_accum_steps)  # all of them, unless data parallel (ddp.py)
        # train/mfu.py: model FLOPs per token against a matmul peak measured once per process, device and dtype
        # (cached; ~0.1 s the first time on a CPU core) — on by default, so every run shows how close it trains
        # to the machine's limit; log_mfu=False skips even that one measurement
        if log_mfu:
            self.loop.flops_per_token = model_flops_per_token(model.config, self.seq_len)
            self.loop.peak_flops = matmul_peak("bf16" if cfg.bf16 else "fp32", str(self.device))

    @property
    def ckpt_dir(self) -> Path | None:
        return self.loop.ckpt_dir

    def save(self) -> Path:
        return self.loop.save()

    def maybe_resume(self) -> bool:
        """Load the newest checkpoint in run_dir, if any. Returns whether it resumed."""
        return self.loop.resume()

    # ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def step_function(self, step: int) -> Step:
        """The batch of ``step`` as ``grad_accum_steps`` micro-batches, each weighted by its share of the
        batch's target tokens (the loss core's contract: the shares sum to the batch's loss)."""
        cfg = self.cfg
        batch_size = cfg.batch_size_at(step)
        x, y = self.train_data.batch(step, batch_size, self.seq_len, cfg.seed)
        x, y = x.to(self.device), y.to(self.device)
        n = cfg.grad_accum_steps
        total = int((y != -100).sum().clamp(min=1))

        def micro_batches():
            xs, ys = x.chunk(n), y.chunk(n)
            for i in self.micro:  # this rank's micro-batches: all of them in one process (ddp.py)
                xm, ym = xs[i], ys[i]
                with self._autocast():
                    out = self.model(xm, ym)
                loss, aux = out.loss.float(), out.aux_loss
                share = int((ym != -100).sum()) / total
                if aux is None:
                    yield MicroBatch(loss * share, out.metrics)
                else:  # the CE part weighs by target tokens, the balance losses by micro-batch
                    aux = aux.float()
                    yield MicroBatch((loss - aux) * share + aux / n, out.metrics)

        tokens = batch_size * self.seq_len
        metrics = {"tokens": cfg.tokens_before(step + 1, self.seq_len)}
        if cfg.batch_ramp_start is not None:
            metrics["batch_size"] = batch_size
        return Step([micro_batches()], metrics=metrics, tokens=tokens)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean validation loss (nats per target token) and bits per byte over the fixed validation windows."""
        if self.val_data is None:
            raise ValueError("no validation data was given to this Trainer")
        was = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for x, y in self.val_data.eval_batches(self.cfg.eval_windows, self.seq_len, self.cfg.batch_size):
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                loss = self.model(x, y).loss
            n = int((y != -100).sum())
            total += loss.item() * n
            count += n
        self.model.train(was)
        val_loss = total / max(count, 1)
        return {"step": self.step, "val_loss": val_loss, "val_bpb": bits_per_byte(val_loss, self.bytes_per_token)}

    def fit(self, resume: bool = True) -> TrainResult:
        """Train until ``cfg.steps`` (resuming from run_dir's checkpoint when there is one)."""
        if resume:
            self.loop.resume()
        else:
            self.loop.refuse_existing()
        if self.run_dir and self.step == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(
                {"model_config": self.model.config.to_dict(), "train_config": self.cfg.to_dict()}, indent=1))
        out = self.loop.fit(self.step_function, evaluate=self.evaluate if self.val_data is not None else None,
                            eval_every=self.cfg.eval_every, eval_kind="val", show=("loss", "val_bpb", "mfu"))
        result = TrainResult(losses=[r["loss"] for r in out.records if r["kind"] == "train"],
                             val=[{k: v for k, v in r.items() if k != "kind"} for r in out.records
                                  if r["kind"] == "val"], steps_done=self.step)
        if not result.val and self.val_data is not None:  # resumed a finished run: still report where it is
            result.val.append(self.evaluate())
        if result.losses:
            result.tokens_per_s = out.tokens / out.train_seconds
            if self.loop.flops_per_token and self.loop.peak_flops:
                result.mfu = mfu(self.loop.flops_per_token, result.tokens_per_s, self.loop.peak_flops)
        return result
