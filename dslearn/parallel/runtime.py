"""Run a pipeline schedule for real: a dslearn CausalLM cut into stages, one CPU process per rank.

Every rank builds the same model (same config and seed), keeps only the stages it holds
(``split_model``) and walks its op list from ``schedules.py``:

    F(s, m)    x = recv activation (or the token ids at stage 0); y = stage(x); isend y to the next rank
               (the last stage computes the loss of micro-batch m instead, scaled by 1/M)
    B(s, m)    autograd from y (or the loss) back to x only: dL/dx goes to the previous rank at once;
               every Linear's weight gradient is *deferred* into a queue (``WeightGradStore``)
    W(s, m)    run that queue: dL/dW = gyᵀ·x for each Linear, added to .grad
    BW(s, m)   B and W together (1F1B, and the backward half of DualPipe's F&B pairs)

The split is the one DeepSeek's DualPipe uses: a Linear layer's backward computes the input
gradient (gy·W) immediately and pushes the weight-gradient closure (gyᵀ·x) into a store that W
drains later. Norm gains and the embedding are cheap and keep their gradients in B.

Communication is point to point with ``isend``/``irecv``. Every message has its own tag
(kind, stage, micro-batch), so all receives are posted before the first op and complete in the
background (gloo's threads, or NCCL streams on GPUs); an op waits only for the one it needs, and
sends never block. While a rank computes one half of an F&B pair, the other half's transfers are
in flight: the overlap DualPipe is built for. ``latency`` injects a link delay: a message is not
usable until ``latency`` seconds after it was sent (the sender stamps the time).

DualPipe holds every stage on two ranks (i and PP−1−i, one per direction); after the schedule the
two copies' gradients are summed (a point-to-point exchange between the pair), as the optimizer
step would need.

Extension point for MoE (not built yet: dslearn's MoE layers arrive with chapters 03–04). In V3 each
chunk is attention → all-to-all dispatch → MLP (experts) → all-to-all combine. An MoE layer inside a
stage would take a process group of its expert-parallel ranks and call ``dist.all_to_all_single``
in its forward (dispatch, combine) and the mirrored pair in its backward. In V3 the expert-parallel
ranks are those holding the *same* pipeline stage in different data-parallel replicas: they run
identical op lists, so their collectives line up. Nothing in this runtime needs to change for that
except passing the group to ``split_model``'s stages; the F&B pairs are where those all-to-alls
would be overlapped with the other micro-batch's computation.

    paper / DualPipe code            code
    ---------------------            ----
    chunk (stage of a rank)          PipelineStage (split_model)
    WeightGradStore                  WeightGradStore, defer_weight_grads
    F, B, W, F&B                     the op kinds of schedules.py, executed in pipeline_worker
    PP ranks                         world_size (launcher.launch)

The result of ``pipeline_worker`` (one per rank) carries the micro-batch losses, the gradients of
the parameters the rank holds (full-model names) and the measured timeline of its ops.
"""

from __future__ import annotations

import functools
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..model.transformer import CausalLM
from .schedules import build_schedule


class WeightGradStore:
    """The queue of deferred weight-gradient closures. While ``deferring`` is set, Linear layers
    patched by ``defer_weight_grads`` return only the input gradient and queue gyᵀ·x here."""

    def __init__(self):
        self.deferring = False
        self.queue: list = []

    def take(self) -> list:
        q, self.queue = self.queue, []
        return q


def _accumulate(p: nn.Parameter, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g.clone()
    else:
        p.grad += g


class _DeferredLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, store):
        ctx.save_for_backward(x, weight)
        ctx.store, ctx.bias = store, bias
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gx = gy @ weight  # (..., d_in): B, needed now by the previous stage
        bias = ctx.bias

        def wgrad():  # W: gyᵀ·x over all tokens
            _accumulate(weight, gy.flatten(0, -2).T @ x.flatten(0, -2))  # (d_out, d_in)
            if bias is not None:
                _accumulate(bias, gy.flatten(0, -2).sum(0))

        if ctx.store.deferring:
            ctx.store.queue.append(wgrad)
            return gx, None, None, None
        gw = gy.flatten(0, -2).T @ x.flatten(0, -2)
        gb = gy.flatten(0, -2).sum(0) if bias is not None else None
        return gx, gw, gb, None


def _deferred_forward(module: nn.Linear, store: WeightGradStore, x):
    return _DeferredLinear.apply(x, module.weight, module.bias, store)


def defer_weight_grads(module: nn.Module, store: WeightGradStore) -> int:
    """Patch every plain nn.Linear inside ``module`` so its weight gradient can be deferred; returns how many."""
    n = 0
    for m in module.modules():
        if type(m) is nn.Linear:
            m.forward = functools.partial(_deferred_forward, m, store)
            n += 1
    return n


class PipelineStage(nn.Module):
    """Consecutive layers of a CausalLM; the first stage embeds, the last applies norm, head and loss."""

    def __init__(self, model: CausalLM, index: int, num_stages: int, layers: range):
        super().__init__()
        self.index, self.num_stages = index, num_stages
        self.is_first, self.is_last = index == 0, index == num_stages - 1
        self.embed_tokens = model.model.embed_tokens if self.is_first else None
        self.layers = nn.ModuleList(model.model.layers[i] for i in layers)
        self.norm = model.model.norm if self.is_last else None
        self.lm_head = model.lm_head if self.is_last else None
        self.rotary = model.rotary  # no parameters: RoPE tables

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """x: token ids (B, T) at the first stage, else hidden states (B, T, d). The last stage returns
        the mean cross-entropy when given targets, else logits."""
        if self.is_first:
            x = self.embed_tokens(x)  # (B, T, d)
        B, T = x.shape[:2]
        rope = self.rotary(torch.arange(T).expand(B, T))
        for layer in self.layers:
            x = layer(x, rope)  # (B, T, d)
        if not self.is_last:
            return x
        logits = self.lm_head(self.norm(x))  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def split_model(model: CausalLM, num_stages: int) -> list[PipelineStage]:
    """Cut the decoder layers into ``num_stages`` consecutive groups, as evenly as possible."""
    L = len(model.model.layers)
    if not 1 <= num_stages <= L:
        raise ValueError(f"cannot cut {L} decoder layers into {num_stages} stages (need 1 <= stages <= layers)")
    bounds = [round(i * L / num_stages) for i in range(num_stages + 1)]
    return [PipelineStage(model, s, num_stages, range(bounds[s], bounds[s + 1])) for s in range(num_stages)]


def stage_param_names(model: CausalLM, stage: PipelineStage) -> dict[str, nn.Parameter]:
    ids = {id(p) for p in stage.parameters()}
    return {n: p for n, p in model.named_parameters() if id(p) in ids}


# ----------------------------------------------------------------------------------------------
_KINDS = {"act": 0, "grad": 1, "act_t": 2, "grad_t": 3}


def _tag(kind: str, stage: int, mb: int, S: int, M: int) -> int:
    return 1 + (_KINDS[kind] * S + stage) * M + mb


def pipeline_worker(rank: int, world_size: int, schedule_name: str, config: dict, seed: int,
                    input_ids: torch.Tensor, targets: torch.Tensor, num_microbatches: int,
                    latency: float = 0.0, fail: dict | None = None) -> dict:
    """One rank of a pipeline step (run it with ``launch``). ``fail`` = {"rank": r, "how": "raise"|"exit"|"hang"}
    makes rank r fail halfway through its ops (for the failure-handling tests and demos)."""
    torch.manual_seed(seed)
    sched = build_schedule(schedule_name, world_size, num_microbatches)
    if sched.num_ranks != world_size:
        raise ValueError(f"{schedule_name} needs {sched.num_ranks} ranks, the group has {world_size}")
    model = CausalLM(ModelConfig.from_dict(config), seed=seed)
    stages = split_model(model, sched.num_stages)
    S, M = sched.num_stages, num_microbatches
    mine = sched.stages_on(rank)
    store = WeightGradStore()
    for s in mine:
        defer_weight_grads(stages[s], store)
    ids_mb, tgt_mb = input_ids.chunk(M), targets.chunk(M)
    b, T = ids_mb[0].shape
    d = model.config.hidden_size

    # 1. post every receive this rank will need, up front (each has its own tag)
    recvs: dict[tuple[str, int, int], tuple] = {}
    for op in sched.ops[rank]:
        for c in op.parts():
            if c.kind == "F" and c.stage > 0 and (src := sched.rank_of(c.stage - 1, c.mb)) != rank:
                key = ("act", c.stage - 1, c.mb)
            elif c.kind in ("B", "BW") and c.stage < S - 1 and (src := sched.rank_of(c.stage + 1, c.mb)) != rank:
                key = ("grad", c.stage + 1, c.mb)
            else:
                continue
            buf, stamp = torch.empty(b, T, d), torch.zeros(1, dtype=torch.float64)
            work = dist.irecv(buf, src, tag=_tag(key[0], key[1], key[2], S, M))
            work_t = dist.irecv(stamp, src, tag=_tag(key[0] + "_t", key[1], key[2], S, M))
            recvs[key] = (buf, work, stamp, work_t)
    sends = []

    def send(kind, stage, mb, tensor, dst):
        t = tensor.detach().contiguous()
        stamp = torch.tensor([time.time()], dtype=torch.float64)
        sends.append((t, stamp, dist.isend(t, dst, tag=_tag(kind, stage, mb, S, M)),
                      dist.isend(stamp, dst, tag=_tag(kind + "_t", stage, mb, S, M))))

    local: dict[tuple[str, int, int], torch.Tensor] = {}  # transfers between two stages of this rank

    waited = [0.0]  # seconds the current op spent waiting for data

    def fetch(kind, stage, mb):
        if (kind, stage, mb) in local:
            return local.pop((kind, stage, mb))
        t = time.time()
        buf, work, stamp, work_t = recvs.pop((kind, stage, mb))
        work.wait()
        work_t.wait()
        if latency > 0:  # the link delay: usable `latency` after it was sent
            time.sleep(max(0.0, stamp.item() + latency - time.time()))
        waited[0] += time.time() - t
        return buf

    # 2. walk the schedule
    saved: dict[tuple[int, int], tuple] = {}  # (stage, mb) → (input, output) for the backward
    wqueue: dict[tuple[int, int], list] = {}
    losses: dict[int, float] = {}
    timeline = []
    dist.barrier()
    t0 = time.time()
    n_ops = len(sched.ops[rank])
    for i, op in enumerate(sched.ops[rank]):
        if fail and fail.get("rank") == rank and i == n_ops // 2:
            if fail.get("how") == "exit":
                import os
                os._exit(3)
            if fail.get("how") == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected failure on rank {rank} at op {i} ({op})")
        start = time.time() - t0
        waited[0] = 0.0
        for c in op.parts():
            s, m = c.stage, c.mb
            if c.kind == "F":
                if s == 0:
                    x = ids_mb[m]
                else:
                    x = fetch("act", s - 1, m).detach().requires_grad_(True)
                if stages[s].is_last:
                    y = stages[s](x, tgt_mb[m])
                    losses[m] = y.item()
                    y = y / M  # the batch loss is the mean over micro-batches
                else:
                    y = stages[s](x)
                    nxt = sched.rank_of(s + 1, m)
                    if nxt == rank:
                        local[("act", s, m)] = y.detach()
                    else:
                        send("act", s, m, y, nxt)
                saved[(s, m)] = (x, y)
            elif c.kind in ("B", "BW"):
                x, y = saved.pop((s, m))
                gy = None if stages[s].is_last else fetch("grad", s + 1, m)
                store.deferring = c.kind == "B"
                torch.autograd.backward(y, gy)
                store.deferring = False
                if c.kind == "B":
                    wqueue[(s, m)] = store.take()
                if s > 0:
                    prev = sched.rank_of(s - 1, m)
                    if prev == rank:
                        local[("grad", s, m)] = x.grad
                    else:
                        send("grad", s, m, x.grad, prev)
            elif c.kind == "W":
                for fn in wqueue.pop((s, m)):
                    fn()
        timeline.append((op.kind, op.parts()[0].stage, op.parts()[0].mb, start, time.time() - t0, waited[0]))
    for _, _, w, w_t in sends:
        w.wait()
        w_t.wait()
    if recvs or wqueue or saved:
        raise RuntimeError(f"rank {rank}: schedule left work undone: {list(recvs)[:3]} {list(wqueue)[:3]}")
    # 3. DualPipe: both copies of a stage hold half the gradient; sum them across the pair
    names = {}
    for s in mine:
        names.update(stage_param_names(model, stages[s]))
    if len(sched.stage_rank) == 2:
        partner = world_size - 1 - rank
        flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                          for p in names.values()])
        other = torch.empty_like(flat)
        works = [dist.isend(flat, partner, tag=999_999), dist.irecv(other, partner, tag=999_999)]
        for w in works:
            w.wait()
        flat = flat + other  # bitwise the same sum on both ranks (fp addition commutes)
        grads, i = {}, 0
        for n, p in names.items():
            grads[n] = flat[i:i + p.numel()].view_as(p).clone()
            i += p.numel()
    else:
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                 for n, p in names.items()}
    return {"rank": rank, "losses": losses, "grads": grads, "timeline": timeline,
            "stages": mine, "makespan": time.time() - t0}


def reference_step(config: dict, seed: int, input_ids: torch.Tensor, targets: torch.Tensor) -> dict:
    """The same model and batch in one process: loss (the mean over tokens) and every gradient."""
    model = CausalLM(ModelConfig.from_dict(config), seed=seed)
    loss = model(input_ids, targets).loss
    loss.backward()
    return {"loss": loss.item(), "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()}}


def _jobs_worker(rank: int, world_size: int, jobs: list[dict]) -> list[dict]:
    """Several pipeline steps in one group of processes (saves a torch import per step)."""
    out = []
    for job in jobs:
        out.append(pipeline_worker(rank, world_size, **job))
        dist.barrier()
    return out


def _gather(results: list[dict], num_microbatches: int) -> dict:
    losses, grads = {}, {}
    for r in results:
        losses.update(r["losses"])
        grads.update(r["grads"])
    return {"loss": sum(losses[m] for m in range(num_microbatches)) / num_microbatches,
            "microbatch_losses": [losses[m] for m in range(num_microbatches)], "grads": grads,
            "timelines": [r["timeline"] for r in results], "makespan": max(r["makespan"] for r in results)}


def run_pipelines(jobs: list[dict], world_size: int, timeout: float = 60.0) -> list[dict]:
    """Run several pipeline steps, one after another, in one launch of ``world_size`` processes. Each job
    is a dict of ``pipeline_worker`` keywords: schedule_name, config (a dict), seed, input_ids, targets,
    num_microbatches, and optionally latency and fail. Returns one gathered result per job."""
    from .launcher import launch

    per_rank = launch(_jobs_worker, world_size, args=(jobs,), timeout=timeout)
    return [_gather([r[j] for r in per_rank], job["num_microbatches"]) for j, job in enumerate(jobs)]


def run_pipeline(schedule_name: str, world_size: int, config: ModelConfig, input_ids: torch.Tensor,
                 targets: torch.Tensor, num_microbatches: int, seed: int = 0, latency: float = 0.0,
                 timeout: float = 60.0, fail: dict | None = None) -> dict:
    """Launch one pipeline step on ``world_size`` processes; gather the batch loss (mean over micro-batches),
    all gradients (full-model names) and each rank's timeline [(kind, stage, mb, start, end, waited), ...]
    in seconds (``waited``: the part of the op spent waiting for a transfer). Raises WorkerError if a rank fails."""
    job = dict(schedule_name=schedule_name, config=config.to_dict(), seed=seed, input_ids=input_ids,
               targets=targets, num_microbatches=num_microbatches, latency=latency, fail=fail)
    return run_pipelines([job], world_size, timeout)[0]
