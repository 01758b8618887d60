"""Data parallelism for the one training loop: the same run on N processes, with the same numbers.

Launch any training script unchanged under ``torchrun --nproc-per-node N script.py`` (gloo on CPU, NCCL
on GPUs). ``init_from_env()`` joins the process group torchrun describes in the environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``…); with one process it does nothing, so the same script runs alone.

How a step is shared. A step's batch is already split into ``grad_accum_steps`` micro-batches, each
carrying its share of the step's loss (loop.py's micro-batch contract). With W ranks, rank r runs
micro-batches r, r+W, r+2W, … — exactly the tensors it would compute in one process — and the ranks
**sum** their gradients (one all-reduce) before clipping. The summed gradient is the single-process
gradient, up to the order of the float additions, so the loss trajectory matches a single process with
the same global batch. This is what ``torch.nn.parallel.DistributedDataParallel`` does (an all-reduce
of the gradients); it is written out here, after the last micro-batch, because DDP averages instead of
summing, and buckets and overlaps the reduction with the backward pass, which a CPU course gains
nothing from and which would hide the one line that matters.

What else must agree across ranks:

- V3's aux-loss-free bias update reads the expert load of the *whole* step: each MoE layer's
  ``step_load`` is summed over ranks before the ``after_optimizer_step`` hooks run (``sync_buffers``).
- The logged loss and metrics: the loss shares are summed over ranks, micro-batch metrics averaged.
- Checkpoints: rank 0 writes them (and the metrics log); every rank reads the same one to resume, so a
  run checkpointed on N processes resumes on one, and the other way round.

A pipeline whose stages are not all data-parallel (the capstone: GRPO, evaluation and export run on rank 0
while the other ranks wait) runs those stages inside ``alone()``: there this process sees a world of one, so
the training loop neither all-reduces nor waits at barriers.

    code                       what it does
    init_from_env()            join torchrun's process group (gloo on CPU, NCCL on CUDA); False alone
    rank_world()               (rank, world size); (0, 1) without a process group, or inside alone()
    alone()                    a block this rank runs by itself, as one process would
    my_micro_batches(n)        the micro-batch indices this rank runs: r, r+W, …
    all_reduce_grads(params)   sum the gradients over ranks (one flat buffer)
    sync_buffers(model)        sum each MoE layer's step_load over ranks
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

_ALONE = False  # inside alone(): this rank runs by itself


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when no process group is running or inside ``alone()``."""
    if not _ALONE and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def alone():
    """Run a block on this rank only, as a single process would (no all-reduce, no barrier): the other ranks must
    not enter collective calls meanwhile — they wait for the block's end at a ``barrier()`` after it."""
    global _ALONE
    before, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = before


def is_main() -> bool:
    return rank_world()[0] == 0


def init_from_env(device: str = "cpu", timeout_minutes: float | None = None) -> bool:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1 in the environment); False when alone.
    ``timeout_minutes``: how long a collective (a barrier) may wait for the other ranks (torch's default: 30
    for gloo, 10 for NCCL) — a pipeline whose ranks wait while rank 0 runs a stage alone needs longer."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        kw = {} if timeout_minutes is None else {"timeout": datetime.timedelta(minutes=timeout_minutes)}
        dist.init_process_group(backend, **kw)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def my_micro_batches(n: int) -> list[int]:
    """Indices of the micro-batches (out of the step's ``n``) this rank computes: rank, rank+W, …"""
    rank, world = rank_world()
    if n % world:
        raise ValueError(f"grad_accum_steps={n} must be a multiple of the number of processes ({world}): "
                         f"each rank runs grad_accum_steps / {world} micro-batches of the global batch")
    return list(range(rank, n, world))


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks (in place), through one flat buffer.

    A parameter that has a gradient on some rank but not on this one (an expert none of this rank's tokens
    chose) gets a zero gradient first, so every rank reduces the same tensors; a parameter with no gradient on
    any rank keeps ``None``, as in one process (AdamW skips it there too)."""
    if rank_world()[1] == 1:
        return
    has = torch.tensor([float(p.grad is not None) for p in params], dtype=torch.float64)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in live])
    dist.all_reduce(flat)
    offset = 0
    for p in live:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def all_reduce_sum(values: list[float], device="cpu") -> list[float]:
    """Sum a list of floats over the ranks (float64)."""
    if rank_world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(model: torch.nn.Module) -> None:
    """Sum each MoE layer's per-step expert load (``step_load``) over the ranks, so V3's bias update sees the
    whole step's load on every rank and the biases stay equal."""
    if rank_world()[1] == 1:
        return
    for m in model.modules():
        load = getattr(m, "step_load", None)
        if isinstance(load, torch.Tensor):
            dist.all_reduce(load)


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
