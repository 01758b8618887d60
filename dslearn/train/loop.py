"""The one training loop of the course: pretraining, SFT and GRPO differ only by their step function.

    for step in range(steps):
        plan = step_fn(step)                          # what to learn from this step (a Step)
        for update in plan.updates:                   # optimizer updates: 1 (pretraining, SFT) or μ (GRPO)
            for loss, metrics in update:              # micro-batches (gradient accumulation)
                loss.backward()                       # each loss is its share of the update's loss
            clip ‖g‖ to grad_clip; stop on NaN/inf or a loss above max_loss
            AdamW step; after_optimizer_step() on every module that defines one   (V3's bias update)
        log a record; evaluate; checkpoint atomically (weights, optimizer, RNG, modules' step counters)

A **step function** is any callable ``step_fn(step) -> Step``. Its ``updates`` are consumed lazily,
so a micro-batch's forward runs only when the core asks for it, after the previous update was
applied (GRPO's inner step k sees the weights of inner step k−1). It must depend only on ``step``,
the weights and explicitly seeded generators: that is what makes a resumed run exact.

**Micro-batch contract.** The losses of one update are *summed* for the gradient: the step function
scales each micro-batch's mean loss to its share (``mean / n_micro`` for equal micro-batches, ``sum /
tokens_in_update`` for masked SFT targets), so the gradient equals the un-accumulated batch's.
The logged ``loss`` is the sum of the shares, i.e. the update's loss.

**Metrics reduction.** Micro-batch metrics are floats; over the micro-batches of an update, and then
over the updates of a step, each key is reduced by

    mean  (sum / n)   every key by default: ce_loss, moe/aux_loss, moe/maxvio, moe/entropy, the per-expert
                      and per-group shares ``moe/l{i}/expert{j}`` (micro-batches have equal token counts, so
                      the mean of the shares is the share of the summed load), kl, clip_fraction, …
    sum               the counts in ``SUMMED_METRICS`` (``moe/dropped``: assignments dropped over the step)

A key missing from some micro-batches is averaged over those that report it.

**Data parallel** (``ddp.py``): under ``torchrun`` each rank runs its share of an update's micro-batches (the
step function asks ``ddp.my_micro_batches``); after the last one ``update`` sums the gradients and the loss shares
over the ranks, averages the metrics, and sums the MoE layers' ``step_load`` before the hooks — so N processes
follow the one-process trajectory. Rank 0 alone writes the metrics log and checkpoints. Decisions every
rank must share — a checkpoint due by the clock, a stop on Ctrl-C or SIGTERM that reached some ranks or
reached them at different moments — go through one all-reduce per step, so the ranks save and stop together.

**MFU** (``mfu.py``): with ``flops_per_token`` and ``peak_flops`` set (``Trainer`` sets both unless
``log_mfu=False``), every logged record with a throughput also holds ``mfu``.

**Resume.** A run directory holding a checkpoint resumes from it: the wrapper's config (``run_config``,
e.g. ``{"train_config": {...}}``) must match the checkpoint's except for the ``cosmetic`` fields,
else ``CheckpointError`` names every differing field; weights, optimizer, torch's RNG state and
the plain-int step counters modules name in ``STEP_COUNTERS`` (DeepSeekMoE's ``bias_updates``, MTP's
``optimizer_steps``; saved in the checkpoint's meta as ``counters``) are
restored, and the metrics log is cut back to the checkpoint's step (a run with no checkpoint starts
its log afresh). The newest *intact* checkpoint is used (train/checkpoint.py checks SHA-256 sums).

**Never lose a run.** Checkpoints are written every ``checkpoint_every`` steps and whenever
``checkpoint_minutes`` have passed since the last one (both on by default), and at the end. Ctrl-C
(SIGINT) or SIGTERM during ``fit`` finishes the current step, saves it and raises ``Interrupted``
(a KeyboardInterrupt) whose message says how to resume; a second Ctrl-C stops at once. A run directory
is locked (``RunLock``) while a process trains in it.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from tqdm.auto import tqdm

from ..devices import resolve_device
from . import ddp
from .checkpoint import RunConflictError, RunLock, find_intact, load_checkpoint, save_checkpoint
from .metrics import MetricsLog
from .mfu import mfu
from .schedule import SCHEDULES, lr_at

SUMMED_METRICS = frozenset({"moe/dropped"})  # counts: summed over micro-batches and updates, not averaged


class DivergenceError(RuntimeError):
    """Training diverged (a non-finite loss or gradient, or a loss above ``max_loss``) and stopped."""


class NonFiniteLossError(DivergenceError):
    """The loss or gradient became NaN/inf; training stopped."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped ``fit`` after a whole step; the message says where it was saved and how to resume."""


# --- what a step function returns ------------------------------------------------------------
class MicroBatch(NamedTuple):
    loss: torch.Tensor  # this micro-batch's share of the update's loss (shares sum to it): backpropagated as is
    metrics: dict  # floats, reduced over micro-batches (see SUMMED_METRICS)


@dataclass
class Step:
    """One training step: its optimizer updates (each an iterable of micro-batches, consumed lazily)
    and step-level metrics that are not per micro-batch (rewards, rollout speed, tokens seen…)."""
    updates: Iterable[Iterable[MicroBatch]]
    metrics: dict = field(default_factory=dict)
    tokens: int | None = None  # tokens trained on, for throughput (None: not reported)


class StepFunction(Protocol):
    def __call__(self, step: int) -> Step: ...


# --- the core's settings -----------------------------------------------------------------------
@dataclass
class LoopConfig:
    """What the core acts on. ``TrainConfig`` and ``GRPOConfig`` each map onto it (``.loop_config()``)."""
    steps: int
    lr: float  # peak learning rate
    warmup_steps: int = 0
    schedule: str = "constant"  # train/schedule.py
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # on matrices and embeddings, not on norms/biases
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    max_loss: float | None = None  # DivergenceError above this; None: only NaN/inf stop the run
    log_every: int = 1  # steps between metrics-log records (the last step is always logged)
    checkpoint_every: int = 0  # steps between checkpoints (0: none by step count); needs a run_dir
    checkpoint_minutes: float | None = 10.0  # also save when this long has passed since the last save (None: off)
    keep_checkpoints: int = 2
    device: str = "cpu"
    progress: bool = True
    desc: str = "train"  # the progress bar's label

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.steps, self.lr, self.warmup_steps, self.schedule, self.min_lr_ratio)


def make_optimizer(model, cfg) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (``cfg``: lr, beta1, beta2, eps, weight_decay)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def reduce_metrics(rows: list[dict]) -> dict:
    """Mean of each key over the rows that hold it; the keys in SUMMED_METRICS are summed."""
    sums, counts = {}, {}
    for row in rows:
        for k, v in row.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: s if k in SUMMED_METRICS else s / counts[k] for k, s in sums.items()}


@dataclass
class FitLog:
    """What one ``TrainingLoop.fit`` call did."""
    records: list[dict] = field(default_factory=list)  # every train record (logged or not) and eval record
    train_seconds: float = 0.0  # time in training steps, evaluation excluded
    tokens: int = 0  # tokens the step functions reported


class TrainingLoop:
    """Optimizer, updates, guards, hooks, checkpoints and the metrics log, for any step function.

    run_config: ``{name: dict}`` saved in every checkpoint's meta and compared on resume (fields in
    ``cosmetic`` may change). With ``run_dir`` set the loop writes ``metrics.jsonl`` and
    ``checkpoints/`` there."""

    def __init__(self, model, cfg: LoopConfig, run_dir: str | Path | None = None,
                 run_config: dict | None = None, cosmetic: Iterable[str] = ()):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_config = run_config or {}
        self.cosmetic = frozenset(cosmetic)
        self.step = 0  # training steps done (a GRPO step holds μ optimizer updates)
        self.hooks = [m for m in self.model.modules() if callable(getattr(m, "after_optimizer_step", None))]
        # data parallel (train/ddp.py): rank 0 writes the log and the checkpoints; all ranks read them to resume
        self.log = MetricsLog(self.run_dir / "metrics.jsonl") if self.run_dir and ddp.is_main() else None
        # MFU (train/mfu.py): set both to log "mfu" beside tokens_per_s
        self.flops_per_token: float | None = None  # model FLOPs per trained token
        self.peak_flops: float | None = None  # the matmul peak measured in this process

    # --- checkpoints -----------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def has_checkpoint(self) -> bool:
        return self.ckpt_dir is not None and self.ckpt_dir.is_dir() and any(
            p.name == "LATEST" or p.name.startswith("step_") for p in self.ckpt_dir.iterdir())

    def _latest(self) -> Path:
        return find_intact(self.ckpt_dir)

    def lock(self) -> None:
        """Take the run directory's lock (CheckpointError if another process trains there). Under data
        parallelism rank 0, the one that writes, holds it for all ranks."""
        if self.run_dir is not None and ddp.is_main():
            if not hasattr(self, "_lock"):
                self._lock = RunLock(self.run_dir)
            self._lock.acquire()

    def unlock(self) -> None:
        if hasattr(self, "_lock"):
            self._lock.release()

    def _counters(self) -> dict[str, dict[str, int]]:
        """The plain-int step counters modules keep outside the state dict, named by their ``STEP_COUNTERS``
        (DeepSeekMoE's ``bias_updates``, MTP's ``optimizer_steps``): {module name: {attribute: value}}."""
        return {name: {a: getattr(m, a) for a in type(m).STEP_COUNTERS}
                for name, m in self.model.named_modules() if hasattr(type(m), "STEP_COUNTERS")}

    def save(self) -> Path:
        if self.ckpt_dir is None:
            raise ValueError("this run has no run_dir to save checkpoints into")
        self.lock()
        meta = {**self.run_config, "counters": self._counters()}
        self._saved_at = (self.step, time.monotonic())
        path = self.ckpt_dir / f"step_{self.step:06d}"
        if ddp.is_main():
            path = save_checkpoint(self.ckpt_dir, self.model, self.optimizer, self.step, meta,
                                   keep=self.cfg.keep_checkpoints)
        ddp.barrier()
        return path

    def check_compatible(self, meta: dict, where: Path | None = None) -> None:
        """CheckpointError naming every field where the checkpoint's run config differs from this run's."""
        where = where or self._latest()
        for name, now in self.run_config.items():
            if name not in meta:
                kinds = sorted(k for k in meta if k.endswith("_config") and k != "model_config")
                raise RunConflictError(f"{where} holds a different kind of run ({', '.join(kinds) or 'unknown'}, "
                                      f"no {name}); choose another run_dir")
            saved = meta[name]
            changed = {k: (saved.get(k), v) for k, v in now.items() if k not in self.cosmetic and saved.get(k) != v}
            if changed:
                raise RunConflictError(
                    f"cannot resume exactly from {where}: the {name} differs from the checkpoint's in "
                    + ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in sorted(changed.items())))

    def resume(self) -> bool:
        """Load the newest checkpoint in run_dir, if any (weights, optimizer, RNG, MoE counters)."""
        self.lock()
        if not self.has_checkpoint():
            return False
        path = find_intact(self.ckpt_dir)  # the newest intact one (a warning names any damaged one skipped)
        meta = json.loads((path / "meta.json").read_text())
        self.check_compatible(meta, path)  # before touching the weights
        meta = load_checkpoint(path, self.model, self.optimizer, restore_rng=True)
        counters = meta.get("counters", {})
        for name, m in self.model.named_modules():
            for attr, value in counters.get(name, {}).items():
                setattr(m, attr, value)
        self.step = meta["step"]
        self._saved_at = (self.step, time.monotonic())
        if self.log:
            self.log.truncate_after(self.step)
        print(f"resuming from step {self.step} ({path})")
        return True

    def refuse_existing(self) -> None:
        self.lock()
        if self.has_checkpoint():
            raise RunConflictError(f"{self.run_dir} already holds a run; resume it or choose another run_dir")

    # --- one optimizer update, one training step --------------------------------------------------
    def _stop(self, error: type[DivergenceError], what: str) -> DivergenceError:
        msg = f"{what} at step {self.step} (lr {self.optimizer.param_groups[0]['lr']:.3g}); stopped."
        if self.has_checkpoint():
            msg += f" The last good checkpoint, {self._latest()}, is kept."
        else:
            msg += " No checkpoint had been written yet."
        if self.log:
            self.log.append({"kind": "event", "step": self.step, "event": what})
        return error(msg)

    def update(self, micro_batches: Iterable[MicroBatch]) -> dict:
        """One optimizer update: backward every micro-batch, guard, clip, step, hooks → its metrics."""
        loss_sum, rows = 0.0, []
        for loss, metrics in micro_batches:
            value = loss.item()
            if not math.isfinite(value):
                raise self._stop(NonFiniteLossError, f"loss became {value}")
            loss.backward()
            loss_sum += value
            rows.append(metrics)
        if ddp.rank_world()[1] > 1:  # data parallel: sum gradients and loss shares, average metrics over ranks
            ddp.all_reduce_grads([p for p in self.model.parameters() if p.requires_grad])
            keys = sorted({k for row in rows for k in row})
            sums = [sum(float(r[k]) for r in rows if k in r) for k in keys]
            counts = [float(sum(k in r for r in rows)) for k in keys]
            total = ddp.all_reduce_sum([loss_sum, *sums, *counts])
            loss_sum, sums, counts = total[0], total[1:1 + len(keys)], total[1 + len(keys):]
            rows = [{k: s if k in SUMMED_METRICS else s / max(c, 1) for k, s, c in zip(keys, sums, counts)}]
            ddp.sync_buffers(self.model)
        if self.cfg.max_loss is not None and loss_sum > self.cfg.max_loss:
            raise self._stop(DivergenceError, f"loss {loss_sum:.4g} exceeded max_loss={self.cfg.max_loss:g}")
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip).item()
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()
        if not math.isfinite(grad_norm):
            raise self._stop(NonFiniteLossError, f"gradient norm became {grad_norm}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for m in self.hooks:
            m.after_optimizer_step()
        return {"loss": loss_sum, "grad_norm": grad_norm, **reduce_metrics(rows)}

    def run_step(self, step_fn: StepFunction) -> tuple[dict, Step]:
        """Training step ``self.step``: every update of ``step_fn(self.step)``; then the counter moves on.
        Returns the step's metrics (its updates' metrics reduced, then its own) and the Step."""
        lr = self.cfg.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        plan = step_fn(self.step)
        updates = [self.update(micro_batches) for micro_batches in plan.updates]
        self.step += 1
        return {"lr": lr, **reduce_metrics(updates), **plan.metrics}, plan

    # --- the loop -------------------------------------------------------------------------------
    def fit(self, step_fn: StepFunction, evaluate: Callable[[], dict] | None = None, eval_every: int = 0,
            eval_first: bool = False, eval_kind: str = "val", show: tuple[str, ...] = ("loss",)) -> FitLog:
        """Run ``step_fn`` until ``cfg.steps``, from ``self.step`` (call ``resume()`` first to continue a run).
        evaluate() → a record, at step 0 when eval_first (fresh runs only), every eval_every steps and
        at the last step; ``show`` names the record keys on the progress bar."""
        cfg, out = self.cfg, FitLog()
        self.lock()
        if self.log and self.step == 0 and not self.has_checkpoint():
            self.log.truncate_after(-1)  # records of an attempt killed before its first checkpoint

        def record(r: dict, logged: bool = True) -> None:
            out.records.append(r)
            if self.log and logged:
                self.log.append(r)

        if evaluate is not None and eval_first and self.step == 0:
            record({"kind": eval_kind, **evaluate()})
        self.model.train()
        since_log_s, since_log_tokens = 0.0, 0
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or not ddp.is_main(),  # one bar
                   desc=cfg.desc, unit="step")
        postfix = {}
        stop = _StopRequest()
        self._saved_at = getattr(self, "_saved_at", (self.step, time.monotonic()))
        parallel = ddp.rank_world()[1] > 1
        stopping = None  # data parallel: the stop every rank agreed on at the end of the last step
        try:
            stop.install()
            while self.step < cfg.steps:
                why = stopping if parallel else stop.requested
                if why:
                    raise self._interrupted(why)
                t0 = time.perf_counter()
                metrics, plan = self.run_step(step_fn)
                dt = time.perf_counter() - t0
                out.train_seconds += dt
                since_log_s += dt
                if plan.tokens is not None:
                    out.tokens += plan.tokens
                    since_log_tokens += plan.tokens
                last = self.step == cfg.steps
                rec = {"kind": "train", "step": self.step, **metrics}
                logged = self.step % cfg.log_every == 0 or last
                if logged and plan.tokens is not None:
                    rec["tokens_per_s"] = since_log_tokens / since_log_s
                    if self.flops_per_token and self.peak_flops:
                        rec["mfu"] = mfu(self.flops_per_token, rec["tokens_per_s"], self.peak_flops)
                if logged:
                    since_log_s, since_log_tokens = 0.0, 0
                record(rec, logged)
                bar.update(1)
                postfix.update({k: f"{rec[k]:.3g}" for k in show if k in rec})
                if evaluate is not None and ((eval_every and self.step % eval_every == 0) or last):
                    ev = {"kind": eval_kind, **evaluate()}
                    record(ev)
                    postfix.update({k: f"{ev[k]:.3g}" for k in show if k in ev})
                    self.model.train()
                bar.set_postfix(postfix, refresh=False)
                due = (cfg.checkpoint_minutes is not None
                       and time.monotonic() - self._saved_at[1] >= 60 * cfg.checkpoint_minutes)
                if parallel:  # every rank must take the same decisions: save() ends in a barrier. A signal may
                    # reach one rank only, or the ranks at different moments: they stop together after this step
                    n_due, n_stop = ddp.all_reduce_sum([float(due), float(stop.requested is not None)])
                    due = n_due > 0
                    if n_stop > 0:
                        stopping = stop.requested or "interrupted (a signal reached another process)"
                if self.run_dir and (last or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or due):
                    self.save()
        finally:
            stop.uninstall()
            bar.close()
            self.unlock()
        return out

    def _interrupted(self, why: str) -> Interrupted:
        if self.run_dir is None:
            return Interrupted(f"{why}: stopped at step {self.step} (no run_dir, nothing saved)")
        if self._saved_at[0] != self.step:
            self.save()
        return Interrupted(f"{why}: saved step {self.step} of {self.cfg.steps} in {self.ckpt_dir}; "
                           f"run the same command again to resume from step {self.step}")


class _StopRequest:
    """SIGINT/SIGTERM while fit runs: the first asks the loop to stop after the current step (it saves);
    a second SIGINT raises KeyboardInterrupt at once. Installed only in the main thread."""

    def __init__(self):
        self.requested: str | None = None
        self.previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = "interrupted (Ctrl-C)" if signum == signal.SIGINT else "terminated (SIGTERM)"

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handler)
            except (ValueError, OSError):
                pass

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class LoopWrapper:
    """Base of the wrappers that build a step function and drive a ``TrainingLoop`` (``Trainer``,
    ``GRPOTrainer``): their ``step`` is the loop's."""

    loop: TrainingLoop

    @property
    def step(self) -> int:
        return self.loop.step

    @step.setter
    def step(self, value: int) -> None:
        self.loop.step = value
