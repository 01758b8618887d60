"""One trainer for the whole course.

    for step in range(steps):
        x, y = train.batch(step)                     # a pure function of (seed, step)
        loss = model(x, y).loss                      # optionally under bf16 autocast
        loss.backward(); clip ‖g‖ to grad_clip       # DeepSeek-LLM: 1.0
        lr = warm-up, then multi-step (or cosine)    # train/schedule.py
        AdamW(β1=0.9, β2=0.95, weight decay 0.1)     # DeepSeek-LLM §2.3
        every eval_every steps: validation loss and bits per byte
        every checkpoint_every steps: an atomic checkpoint (train/checkpoint.py)

A non-finite loss or gradient norm stops the run with ``NonFiniteLossError``, and a loss above
``max_loss`` (a divergence guard) with ``DivergenceError``, the parent of both; no checkpoint is written
after it, so the last one on disk is the last good state. A run directory holding a
checkpoint resumes from it and continues exactly as if it had never stopped: the batches depend
only on the step, and the weights, optimizer and RNG state are restored bit for bit.

Modules may define ``after_optimizer_step()``; the trainer calls it after every update (V3's
aux-loss-free balancing adjusts its expert biases this way, outside autograd).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import TokenStream, bits_per_byte
from ..devices import resolve_device
from .checkpoint import LATEST, CheckpointError, load_checkpoint, save_checkpoint
from .metrics import MetricsLog
from .schedule import SCHEDULES, lr_at


class DivergenceError(RuntimeError):
    """Training diverged (a non-finite loss or gradient, or a loss above ``max_loss``) and stopped."""


class NonFiniteLossError(DivergenceError):
    """The loss or gradient became NaN/inf; training stopped."""


@dataclass
class TrainConfig:
    steps: int = 200  # optimizer steps
    batch_size: int = 16  # sequences per step
    seq_len: int | None = None  # tokens per sequence; None → the model's context
    grad_accum_steps: int = 1  # split each batch into this many micro-batches
    lr: float = 2e-3  # peak learning rate η
    warmup_steps: int = 20
    schedule: str = "multistep"  # "multistep" (DeepSeek-LLM), "cosine" or "constant"
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
    checkpoint_every: int = 0  # steps between checkpoints (0 = only at the end); needs run_dir
    keep_checkpoints: int = 2
    device: str = "cpu"
    progress: bool = True  # show a tqdm progress bar

    # fields that do not change the numbers a run computes: free to change on resume
    COSMETIC = ("eval_every", "eval_windows", "log_every", "checkpoint_every", "keep_checkpoints",
                "progress", "device")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum_steps", "eval_windows", "log_every", "keep_checkpoints"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {v!r}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0, got {v!r}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} must be divisible by "
                             f"grad_accum_steps={self.grad_accum_steps}")
        if self.seq_len is not None and self.seq_len < 1:
            raise ValueError(f"TrainConfig.seq_len must be >= 1, got {self.seq_len}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a positive finite number, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.max_loss is not None and not self.max_loss > 0:
            raise ValueError(f"TrainConfig.max_loss must be > 0 or None, got {self.max_loss}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # training loss of every step this call ran
    val: list[dict] = field(default_factory=list)  # {"step", "val_loss", "val_bpb"} records
    tokens_per_s: float = float("nan")  # training throughput, evaluation excluded
    steps_done: int = 0  # the run's step counter at the end (resumed steps included)

    @property
    def final_val_bpb(self) -> float:
        return self.val[-1]["val_bpb"] if self.val else float("nan")


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


class Trainer:
    """Train ``model`` on ``train`` (a TokenStream), evaluating on ``val``.

    With ``run_dir`` set, the run writes ``metrics.jsonl``, ``config.json`` and checkpoints there,
    and ``fit()`` resumes from the newest checkpoint it finds.
    """

    def __init__(self, model, cfg: TrainConfig, train: TokenStream, val: TokenStream | None = None,
                 run_dir: str | Path | None = None, bytes_per_token: float = 1.0):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.train_data, self.val_data = train, val
        self.seq_len = cfg.seq_len or model.config.max_position_embeddings
        if self.seq_len > model.config.max_position_embeddings:
            raise ValueError(f"TrainConfig.seq_len={self.seq_len} exceeds the model's context "
                             f"max_position_embeddings={model.config.max_position_embeddings}")
        train.check_fits(self.seq_len)  # a clear error now if the corpus is too small
        if val is not None:
            val.check_fits(self.seq_len)
        self.bytes_per_token = bytes_per_token
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.optimizer = make_optimizer(self.model, cfg)
        self.step = 0
        self.hooks = [m for m in self.model.modules() if hasattr(m, "after_optimizer_step")]
        self.log = MetricsLog(self.run_dir / "metrics.jsonl") if self.run_dir else None

    # ------------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def _meta(self) -> dict:
        return {"train_config": self.cfg.to_dict()}

    def save(self) -> Path:
        if self.ckpt_dir is None:
            raise ValueError("this Trainer has no run_dir to save checkpoints into")
        return save_checkpoint(self.ckpt_dir, self.model, self.optimizer, self.step, self._meta(),
                               keep=self.cfg.keep_checkpoints)

    def maybe_resume(self) -> bool:
        """Load the newest checkpoint in run_dir, if any. Returns whether it resumed."""
        if self.ckpt_dir is None or not (self.ckpt_dir / LATEST).is_file():
            return False
        meta = load_checkpoint(self.ckpt_dir, self.model, self.optimizer, restore_rng=True)
        saved = meta["train_config"]
        changed = {k: (saved[k], v) for k, v in self.cfg.to_dict().items()
                   if k not in TrainConfig.COSMETIC and saved.get(k) != v}
        if changed:
            raise CheckpointError(
                "cannot resume exactly: the train config differs from the checkpoint's in "
                + ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in sorted(changed.items())))
        self.step = meta["step"]
        if self.log:
            self.log.truncate_after(self.step)
        return True

    # ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean validation loss (nats/token) and bits per byte over the fixed validation windows."""
        if self.val_data is None:
            raise ValueError("no validation data was given to this Trainer")
        was = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for x, y in self.val_data.eval_batches(self.cfg.eval_windows, self.seq_len, self.cfg.batch_size):
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                loss = self.model(x, y).loss
            total += loss.item() * y.numel()
            count += y.numel()
        self.model.train(was)
        val_loss = total / count
        return {"step": self.step, "val_loss": val_loss, "val_bpb": bits_per_byte(val_loss, self.bytes_per_token)}

    def _train_step(self) -> tuple[float, float, dict]:
        cfg = self.cfg
        x, y = self.train_data.batch(self.step, cfg.batch_size, self.seq_len, cfg.seed)
        x, y = x.to(self.device), y.to(self.device)
        lr = lr_at(self.step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum, metrics = 0.0, {}
        for xm, ym in zip(x.chunk(cfg.grad_accum_steps), y.chunk(cfg.grad_accum_steps)):
            with self._autocast():
                out = self.model(xm, ym)
            loss = out.loss.float()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(self._stop_message(f"loss became {loss.item()}"))
            if cfg.max_loss is not None and loss.item() > cfg.max_loss:
                raise DivergenceError(self._stop_message(f"loss {loss.item():.4g} exceeded max_loss={cfg.max_loss:g}"))
            (loss / cfg.grad_accum_steps).backward()
            loss_sum += loss.item() / cfg.grad_accum_steps
            metrics.update({k: float(v) for k, v in out.metrics.items()})
        if cfg.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None])).item()
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(self._stop_message(f"gradient norm became {grad_norm}"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for m in self.hooks:
            m.after_optimizer_step()
        return loss_sum, grad_norm, {"lr": lr, **metrics}

    def _stop_message(self, what: str) -> str:
        msg = f"{what} at step {self.step} (lr {self.optimizer.param_groups[0]['lr']:.3g}); stopped."
        if self.ckpt_dir is not None and (self.ckpt_dir / LATEST).is_file():
            last = (self.ckpt_dir / LATEST).read_text().strip()
            msg += f" The last good checkpoint, {self.ckpt_dir / last}, is kept."
        else:
            msg += " No checkpoint had been written yet."
        if self.log:
            self.log.append({"kind": "event", "step": self.step, "event": what})
        return msg

    def fit(self, resume: bool = True) -> TrainResult:
        """Train until ``cfg.steps`` (resuming from run_dir's checkpoint when there is one)."""
        cfg = self.cfg
        if resume:
            self.maybe_resume()
        elif self.ckpt_dir is not None and (self.ckpt_dir / LATEST).is_file():
            raise CheckpointError(f"{self.run_dir} already holds a run; resume it or choose another run_dir")
        if self.run_dir and self.step == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(
                {"model_config": self.model.config.to_dict(), "train_config": cfg.to_dict()}, indent=1))
        result = TrainResult()
        self.model.train()
        tokens_per_step = cfg.batch_size * self.seq_len
        train_time, time_since_log, steps_since_log = 0.0, 0.0, 0  # training steps only, no evaluation
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress, desc="train", unit="step")
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                loss, grad_norm, extra = self._train_step()
                dt = time.perf_counter() - t0
                train_time, time_since_log, steps_since_log = train_time + dt, time_since_log + dt, steps_since_log + 1
                self.step += 1
                result.losses.append(loss)
                bar.update(1)
                if self.log and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    self.log.append({"kind": "train", "step": self.step, "tokens": self.step * tokens_per_step,
                                     "loss": loss, "grad_norm": grad_norm,
                                     "tokens_per_s": steps_since_log * tokens_per_step / time_since_log, **extra})
                    time_since_log, steps_since_log = 0.0, 0
                last = self.step == cfg.steps
                if self.val_data is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or last):
                    rec = self.evaluate()
                    result.val.append(rec)
                    bar.set_postfix(loss=f"{loss:.3f}", val_bpb=f"{rec['val_bpb']:.3f}")
                    if self.log:
                        self.log.append({"kind": "val", **rec})
                elif self.step % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}")
                if self.run_dir and ((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last):
                    self.save()
        finally:
            bar.close()
        if not result.val and self.val_data is not None:  # resumed a finished run: still report where it is
            result.val.append(self.evaluate())
        result.steps_done = self.step
        if result.losses:
            result.tokens_per_s = len(result.losses) * tokens_per_step / train_time
        return result
