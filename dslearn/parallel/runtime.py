"""Run a pipeline schedule for real: a dslearn CausalLM cut into stages, one CPU process per rank.

Every rank builds the same model (same config and seed), keeps only the stages it holds
(``split_model``) and walks its op list from ``schedules.py``:

    F(s, m)    x = recv activation (or the token ids at stage 0); y = stage(x); isend y to the next rank
               (the last stage computes the loss of micro-batch m instead, scaled by 1/(M·EP))
    B(s, m)    autograd from y (or the loss) back to x only: dL/dx goes to the previous rank at once;
               every Linear's and routed expert's weight gradient is *deferred* into a queue
               (``WeightGradStore``)
    W(s, m)    run that queue: dL/dW = gyᵀ·x for each of them, added to .grad
    BW(s, m)   B and W together (1F1B, and the backward half of DualPipe's F&B pairs)

The split is the one DeepSeek's DualPipe uses (weightgrad.py): a Linear layer's or a routed
expert's backward computes the input gradient (gy·W) immediately and pushes the weight-gradient
closure (gyᵀ·x) into a store that W drains later. Norm gains, the gate and the embedding are cheap
and keep their gradients in B.

Communication is point to point with ``isend``/``irecv``. Every message has its own tag
(kind, stage, micro-batch), so all receives are posted before the first op and complete in the
background (gloo's threads, or NCCL streams on GPUs); an op waits only for the one it needs, and
sends never block. ``latency`` injects a link delay: a message is not usable until ``latency``
seconds after it was sent (the sender stamps the time).

MoE layers. In V3 each chunk is attention → all-to-all dispatch → experts → all-to-all combine.
With ``expert_parallel`` = EP the world is PP × EP processes (rank = p·EP + e): the EP ranks of a
pipeline rank hold the same stages, each feeds its own slice of the batch, and every MoE layer
dispatches its tokens to the EP ranks holding their experts and combines the results
(``dist.all_to_all_single``, expert_parallel.py). Afterwards the replicated parameters' gradients
are summed over the EP group; each routed expert's gradient is already complete where it lives.
An MoE layer's balance loss joins the gradient where it arises (``AddAuxLoss``), scaled like the loss.

Overlap. ``overlap=True`` runs the two halves of every F&B pair at once, the backward half in a
second thread. Their all-to-alls go to two different process groups (forward, backward), so each
group still sees the same order of collectives on every EP rank, and while one half waits for its
all-to-all the other computes — the overlap DualPipe's pairs exist for (V3 §3.2.1, where it is SMs
and CUDA streams). Two CPU-side details decide whether it works: the new thread calls
``torch.set_num_threads(1)`` itself (part of what it sets is per thread; without it the backward
half's matrix products spread over every core, four processes fight for two, and the overlap is
lost), and Python's GIL switch interval is lowered from 5 ms to 0.1 ms during the
schedule, because the backward half re-enters Python at every custom autograd function and could
otherwise wait up to 5 ms each time.

DualPipe holds every stage on two ranks (i and PP−1−i, one per direction); after the schedule the
two copies' gradients are summed (a point-to-point exchange between the pair), as the optimizer
step would need.

    paper / DualPipe code            code
    ---------------------            ----
    chunk (stage of a rank)          PipelineStage (split_model)
    WeightGradStore                  WeightGradStore, defer_weight_grads, expert_matmul (weightgrad.py)
    AddAuxiliaryLoss                 AddAuxLoss
    EP group, dispatch / combine     expert_parallel.py
    F, B, W, F&B                     the op kinds of schedules.py, executed in pipeline_worker
    PP × EP ranks                    world_size (launcher.launch), expert_parallel

The result of ``pipeline_worker`` (one per rank) carries the micro-batch losses, the balance losses it
added, the gradients of the parameters the rank holds (full-model names; routed experts as this rank's
shard with its first expert index), the measured timeline of its ops and its count of all-to-alls;
``run_pipeline`` gathers them into whole-model results.
"""

from __future__ import annotations

import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..model.transformer import CausalLM
from .expert_parallel import ExpertParallelMoE, ep_groups, shard_experts
from .schedules import build_schedule
from .weightgrad import WeightGradStore, defer_weight_grads


class AddAuxLoss(torch.autograd.Function):
    """y = x, but the backward also gives ``aux`` the gradient 1: an MoE layer's balance loss joins the
    training loss without being passed down the pipeline (the device DeepSeek's modeling code uses)."""

    @staticmethod
    def forward(ctx, x, aux):
        ctx.aux_dtype = aux.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, gy):
        return gy, torch.ones((), dtype=ctx.aux_dtype, device=gy.device)


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
        self.aux_scale = 1.0  # the runtime sets 1/(micro-batches · replicas), the loss's own scale
        self.aux_added = 0.0  # the scaled balance losses the last forward attached

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """x: token ids (B, T) at the first stage, else hidden states (B, T, d). The last stage returns
        the mean cross-entropy when given targets, else logits."""
        if self.is_first:
            x = self.embed_tokens(x)  # (B, T, d)
        B, T = x.shape[:2]
        rope = self.rotary(torch.arange(T).expand(B, T))
        self.aux_added = 0.0
        for layer in self.layers:
            x = layer(x, rope)  # (B, T, d)
            aux = getattr(layer.mlp, "aux_loss", None)  # an MoE layer's balance loss (training only)
            if aux is not None:
                x = AddAuxLoss.apply(x, aux * self.aux_scale)
                self.aux_added += aux.item() * self.aux_scale
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
                    latency: float = 0.0, fail: dict | None = None, expert_parallel: int = 1,
                    a2a_latency: float = 0.0, overlap: bool = False) -> dict:
    """One rank of a pipeline step (run it with ``launch``). ``fail`` = {"rank": r, "how": "raise"|"exit"|"hang"}
    makes rank r fail halfway through its ops (for the failure-handling tests and demos).

    ``expert_parallel`` = EP: the world is PP × EP ranks (rank = p·EP + e, expert_parallel.py); the batch is
    split into EP equal slices, slice e feeding the pipeline of EP rank e, and MoE layers dispatch to and
    combine from the EP group with ``a2a_latency`` injected per all-to-all. ``overlap``: run the two halves
    of each F&B pair in two threads, so that one's communication waits while the other computes."""
    torch.manual_seed(seed)
    EP = expert_parallel
    if not isinstance(EP, int) or EP < 1 or world_size % EP:
        raise ValueError(f"expert_parallel={EP!r} must be a positive divisor of the {world_size} ranks "
                         "(pipeline ranks × expert-parallel ranks)")
    sched = build_schedule(schedule_name, world_size // EP, num_microbatches)
    S, M = sched.num_stages, num_microbatches
    if input_ids.shape[0] % (EP * M) or input_ids.shape != targets.shape:
        raise ValueError(f"a batch of {tuple(input_ids.shape)} ids and {tuple(targets.shape)} targets cannot be cut "
                         f"into {EP} expert-parallel slices of {M} equal micro-batches")
    p, e = divmod(rank, EP)  # pipeline rank, expert-parallel rank

    def peer(q: int) -> int:  # global rank of pipeline rank q in this rank's replica
        return q * EP + e

    comm = ep_groups(sched.num_ranks, EP, rank, a2a_latency)
    model = CausalLM(ModelConfig.from_dict(config), seed=seed)
    stages = split_model(model, S)
    mine = sched.stages_on(p)
    store = WeightGradStore()
    for s in mine:
        shard_experts(stages[s], comm, store)
        defer_weight_grads(stages[s], store)
        stages[s].aux_scale = 1.0 / (M * EP)
    ids_mb, tgt_mb = input_ids.chunk(EP)[e].chunk(M), targets.chunk(EP)[e].chunk(M)
    b, T = ids_mb[0].shape
    d = model.config.hidden_size

    # 1. post every receive this rank will need, up front (each has its own tag)
    recvs: dict[tuple[str, int, int], tuple] = {}
    for op in sched.ops[p]:
        for c in op.parts():
            if c.kind == "F" and c.stage > 0 and (src := sched.rank_of(c.stage - 1, c.mb)) != p:
                key = ("act", c.stage - 1, c.mb)
            elif c.kind in ("B", "BW") and c.stage < S - 1 and (src := sched.rank_of(c.stage + 1, c.mb)) != p:
                key = ("grad", c.stage + 1, c.mb)
            else:
                continue
            buf, stamp = torch.empty(b, T, d), torch.zeros(1, dtype=torch.float64)
            work = dist.irecv(buf, peer(src), tag=_tag(key[0], key[1], key[2], S, M))
            work_t = dist.irecv(stamp, peer(src), tag=_tag(key[0] + "_t", key[1], key[2], S, M))
            recvs[key] = (buf, work, stamp, work_t)
    sends = []

    def send(kind, stage, mb, tensor, dst):
        t = tensor.detach().contiguous()
        stamp = torch.tensor([time.time()], dtype=torch.float64)
        sends.append((t, stamp, dist.isend(t, peer(dst), tag=_tag(kind, stage, mb, S, M)),
                      dist.isend(stamp, peer(dst), tag=_tag(kind + "_t", stage, mb, S, M))))

    local: dict[tuple[str, int, int], torch.Tensor] = {}  # transfers between two stages of this rank

    def fetch(kind, stage, mb, waited):
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

    saved: dict[tuple[int, int], tuple] = {}  # (stage, mb) → (input, output) for the backward
    wqueue: dict[tuple[int, int], list] = {}
    losses: dict[int, float] = {}  # global micro-batch e·M + m → its cross-entropy
    aux = [0.0]  # the balance losses this rank's forwards added, scaled as the loss is

    def run(c, waited):
        s, m = c.stage, c.mb
        if c.kind == "F":
            x = ids_mb[m] if s == 0 else fetch("act", s - 1, m, waited).detach().requires_grad_(True)
            if stages[s].is_last:
                y = stages[s](x, tgt_mb[m])
                losses[e * M + m] = y.item()
                y = y / (M * EP)  # the batch loss is the mean over all micro-batches of all replicas
            else:
                y = stages[s](x)
                nxt = sched.rank_of(s + 1, m)
                if nxt == p:
                    local[("act", s, m)] = y.detach()
                else:
                    send("act", s, m, y, nxt)
            aux[0] += stages[s].aux_added
            saved[(s, m)] = (x, y)
        elif c.kind in ("B", "BW"):
            x, y = saved.pop((s, m))
            gy = None if stages[s].is_last else fetch("grad", s + 1, m, waited)
            store.deferring = c.kind == "B"
            torch.autograd.backward(y, gy)
            store.deferring = False
            if c.kind == "B":
                wqueue[(s, m)] = store.take()
            if s > 0:
                prev = sched.rank_of(s - 1, m)
                if prev == p:
                    local[("grad", s, m)] = x.grad
                else:
                    send("grad", s, m, x.grad, prev)
        elif c.kind == "W":
            for fn in wqueue.pop((s, m)):
                fn()

    def run_pair(op, waited):
        """F&B with overlap: the backward half in a second thread. Its all-to-alls use the backward process
        group, the forward half's the forward group, so each group still sees one fixed order of collectives."""
        if op.pair[1].kind != "BW":  # the store's `deferring` flag is shared; only a full backward may run here
            raise ValueError(f"an overlapped pair's backward half must be a full backward, got {op}")
        errors, w2 = [], [0.0]

        def backward_half():
            torch.set_num_threads(1)  # partly a per-thread setting: a new thread would use every core
            try:
                run(op.pair[1], w2)
            except BaseException as exc:  # re-raised in the main thread, which names the rank
                errors.append(exc)

        th = threading.Thread(target=backward_half, name=f"rank{rank}-backward")
        th.start()
        try:
            run(op.pair[0], waited)
        finally:
            th.join()
        if errors:
            raise errors[0]
        waited[0] = max(waited[0], w2[0])

    # 2. walk the schedule
    timeline = []
    dist.barrier()
    t0 = time.time()
    n_ops = len(sched.ops[p])
    switch = sys.getswitchinterval()
    if overlap:  # a thread waiting for the GIL gets it after this long (default 5 ms); the backward half
        sys.setswitchinterval(1e-4)  # re-enters Python at every custom autograd op, so 5 ms would add up
    try:
        for i, op in enumerate(sched.ops[p]):
            if fail and fail.get("rank") == rank and i == n_ops // 2:
                if fail.get("how") == "exit":
                    import os
                    os._exit(3)
                if fail.get("how") == "hang":
                    time.sleep(3600)
                raise RuntimeError(f"injected failure on rank {rank} at op {i} ({op})")
            start = time.time() - t0
            waited = [0.0]  # seconds the op spent waiting for data
            if op.kind == "FB" and overlap:
                run_pair(op, waited)
            else:
                for c in op.parts():
                    run(c, waited)
            timeline.append((op.kind, op.parts()[0].stage, op.parts()[0].mb, start, time.time() - t0, waited[0]))
    finally:
        sys.setswitchinterval(switch)
    for _, _, w, w_t in sends:
        w.wait()
        w_t.wait()
    if recvs or wqueue or saved:
        raise RuntimeError(f"rank {rank}: schedule left work undone: {list(recvs)[:3]} {list(wqueue)[:3]}")
    makespan = time.time() - t0
    # 3. DualPipe: both copies of a stage hold half the gradient; sum them across the pair
    names = {}
    for s in mine:
        names.update(stage_param_names(model, stages[s]))
    grads = {n: (q.grad if q.grad is not None else torch.zeros_like(q)).detach().clone() for n, q in names.items()}
    if len(sched.stage_rank) == 2:
        _sum_with(grads, peer(sched.num_ranks - 1 - p))
    # 4. expert parallelism: replicated parameters saw only this replica's tokens; sum over the EP group.
    #    A routed expert's gradient already holds every replica's tokens (they came to it).
    first_of = {id(q): mod.experts.first for s in mine for mod in stages[s].modules()
                if isinstance(mod, ExpertParallelMoE) for q in mod.experts.parameters()}  # routed-expert shards
    dense = [n for n in grads if id(names[n]) not in first_of]
    if EP > 1 and dense:
        flat = torch.cat([grads[n].flatten() for n in dense])
        dist.all_reduce(flat, group=comm.forward_group)
        _unflatten(flat, dense, grads)
    shards = {n: (first_of[id(names[n])], grads.pop(n)) for n in list(grads) if id(names[n]) in first_of}
    load = {f"model.layers.{mod.layer_idx}.mlp": mod.step_load.clone() for s in mine for mod in stages[s].modules()
            if isinstance(mod, ExpertParallelMoE)}  # this rank's tokens only
    return {"rank": rank, "losses": losses, "aux_loss": aux[0], "grads": grads if e == 0 else {},
            "expert_shards": shards, "expert_load": load, "timeline": timeline, "stages": mine,
            "makespan": makespan, "all_to_alls": comm.calls}


def _unflatten(flat: torch.Tensor, names: list[str], into: dict) -> None:
    i = 0
    for n in names:
        into[n] = flat[i:i + into[n].numel()].view_as(into[n]).clone()
        i += into[n].numel()


def _sum_with(grads: dict, partner: int) -> None:
    """Add a partner rank's gradients of the same parameters (in place; both ranks end bitwise equal)."""
    names = list(grads)
    flat = torch.cat([grads[n].flatten() for n in names])
    other = torch.empty_like(flat)
    works = [dist.isend(flat, partner, tag=999_999), dist.irecv(other, partner, tag=999_999)]
    for w in works:
        w.wait()
    _unflatten(flat + other, names, grads)  # fp addition commutes: the same sum on both ranks



def reference_step(config: dict, seed: int, input_ids: torch.Tensor, targets: torch.Tensor) -> dict:
    """The same model and batch in one process: ``loss`` (the cross-entropy, mean over tokens), ``aux_loss`` (the
    MoE balance losses, 0 for a dense model), every parameter's gradient of their sum, and each MoE layer's
    ``expert_load`` (assignments per expert, what V3's bias update reads)."""
    model = CausalLM(ModelConfig.from_dict(config), seed=seed)
    out = model(input_ids, targets)
    out.loss.backward()
    ce = out.metrics.get("ce_loss", out.loss.item())
    load = {n: m.step_load.clone() for n, m in model.named_modules() if hasattr(m, "step_load")}
    return {"loss": ce, "aux_loss": out.loss.item() - ce, "expert_load": load,
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()}}


def _jobs_worker(rank: int, world_size: int, jobs: list[dict]) -> list[dict]:
    """Several pipeline steps in one group of processes (saves a torch import per step)."""
    out = []
    for job in jobs:
        out.append(pipeline_worker(rank, world_size, **job))
        dist.barrier()
    return out


def _gather(results: list[dict]) -> dict:
    losses, grads, shards, load = {}, {}, {}, {}
    for r in results:
        losses.update(r["losses"])
        grads.update(r["grads"])
        for n, v in r["expert_load"].items():  # every micro-batch's forward ran on exactly one rank
            load[n] = load[n] + v if n in load else v
        for n, (first, g) in r["expert_shards"].items():  # the same shard may come from both DualPipe copies
            shards.setdefault(n, {})[first] = g
    for n, parts in shards.items():
        grads[n] = torch.cat([parts[k] for k in sorted(parts)])
    mbs = [losses[m] for m in range(len(losses))]
    return {"loss": sum(mbs) / len(mbs), "microbatch_losses": mbs, "aux_loss": sum(r["aux_loss"] for r in results),
            "grads": grads, "expert_load": load, "timelines": [r["timeline"] for r in results],
            "makespan": max(r["makespan"] for r in results), "all_to_alls": sum(r["all_to_alls"] for r in results)}


def run_pipelines(jobs: list[dict], world_size: int, timeout: float = 60.0) -> list[dict]:
    """Run several pipeline steps, one after another, in one launch of ``world_size`` processes. Each job
    is a dict of ``pipeline_worker`` keywords: schedule_name, config (a dict), seed, input_ids, targets,
    num_microbatches, and optionally latency, fail, expert_parallel, a2a_latency and overlap. Returns one
    gathered result per job (see ``run_pipeline``)."""
    from .launcher import launch

    per_rank = launch(_jobs_worker, world_size, args=(jobs,), timeout=timeout)
    return [_gather([r[j] for r in per_rank]) for j in range(len(jobs))]


def run_pipeline(schedule_name: str, world_size: int, config: ModelConfig, input_ids: torch.Tensor,
                 targets: torch.Tensor, num_microbatches: int, seed: int = 0, timeout: float = 60.0,
                 **options) -> dict:
    """Launch one pipeline step on ``world_size`` processes (``options``: latency, fail, expert_parallel,
    a2a_latency, overlap; see ``pipeline_worker``). Gathers the cross-entropy (mean over all micro-batches),
    ``aux_loss`` (the MoE balance losses, scaled the same way), all gradients (full-model names, expert shards
    joined), each MoE layer's ``expert_load`` summed over all replicas, and each rank's timeline
    [(kind, stage, mb, start, end, waited), ...] in seconds (``waited``: the part of the op spent waiting for a
    transfer). Raises WorkerError if a rank fails."""
    job = dict(schedule_name=schedule_name, config=config.to_dict(), seed=seed, input_ids=input_ids,
               targets=targets, num_microbatches=num_microbatches, **options)
    return run_pipelines([job], world_size, timeout)[0]
