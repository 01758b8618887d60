"""Run a pipeline schedule for real: a dslearn CausalLM cut into stages, one CPU process per rank (the worker).

    stages.py   the model cut into PipelineStages (the model's own forward pieces) and AddAuxLoss
    p2p.py      tagged point-to-point transfers, all receives posted up front (Mailbox)
    runtime.py  this file: one rank's walk through its schedule, gradients gathered, results returned

Every rank builds the same model (same config and seed), keeps only the stages it holds
(``split_model``) and walks its op list from ``schedules.py``:

    F(s, m)    x = recv activation (or the token ids at stage 0); y = stage(x); isend y to the next rank
               (the last stage computes the loss of micro-batch m instead, scaled by 1/(M·EP))
    B(s, m)    autograd from y (or the loss) back to x only: dL/dx goes to the previous rank at once;
               every Linear's and routed expert's weight gradient is *deferred* into a queue
               (``WeightGradStore``)
    W(s, m)    run that queue: dL/dW = gyᵀ·x for each of them, added to .grad
    BW(s, m)   B and W together (1F1B, and the backward half of DualPipe's F&B pairs)

The split is the one DeepSeek's DualPipe uses (layers/weightgrad.py): a Linear layer's (torch or FP8) or a
routed expert's backward computes the input gradient (gy·W) immediately and pushes the weight-gradient
closure (gyᵀ·x) into a store that W drains later. Each rank builds its model with
``choose_parts(config, weight_grads=store, routed_experts=expert_parallel(comm, store))``, so the split
layers and the expert-parallel experts are there from construction, and loads the whole model's weights
(same config and seed) cut to its expert shard. Norm gains, the gate and the embedding are cheap and keep
their gradients in B.

Communication is point to point (p2p.py): every message has its own tag, all receives are posted before the
first op, an op waits only for the one it needs, and sends never block. ``latency`` injects a link delay.

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
    chunk (stage of a rank)          PipelineStage (stages.split_model)
    WeightGradStore                  WeightGradStore, SplitLinear, expert_matmul (layers/weightgrad.py)
    AddAuxiliaryLoss                 AddAuxLoss (stages.py)
    EP group, dispatch / combine     expert_parallel.py
    F, B, W, F&B                     the op kinds of schedules.py, executed in pipeline_worker
    PP × EP ranks                    world_size (launcher.launch), expert_parallel

The result of ``pipeline_worker`` (one per rank) carries the micro-batch losses, the balance losses it
added, the gradients of the parameters the rank holds (full-model names; routed experts as this rank's
shard with its first expert index), the measured timeline of its ops and its count of all-to-alls;
``run_pipeline`` gathers them into whole-model results.

Failure handling is tested by injecting failures through ``op_hook`` (called before every op; ``fail_at_half``
makes one rank raise, exit or hang halfway), so the op loop itself carries no test code.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time

import torch
import torch.distributed as dist

from ..config import ModelConfig
from ..layers import WeightGradStore
from ..model import CausalLM, choose_parts
from ..moe import DeepSeekMoE
from .expert_parallel import ExpertParallelExperts, ep_groups, expert_parallel, shard_state_dict
from .p2p import Mailbox, sum_with, unflatten
from .schedules import build_schedule
from .stages import AddAuxLoss, PipelineStage, split_model, stage_param_names

__all__ = ["AddAuxLoss", "PipelineStage", "WeightGradStore", "fail_at_half", "pipeline_worker", "reference_step",
           "run_pipeline", "run_pipelines", "split_model", "stage_param_names"]


def fail_at_half(rank: int, i: int, n_ops: int, op, *, target: int, how: str) -> None:
    """An ``op_hook`` for failure tests and demos: rank ``target`` fails halfway through its ops — ``how`` is
    "raise" (an exception), "exit" (the process dies with status 3) or "hang" (sleeps for an hour)."""
    if rank != target or i != n_ops // 2:
        return
    if how == "exit":
        os._exit(3)
    if how == "hang":
        time.sleep(3600)
    raise RuntimeError(f"injected failure on rank {rank} at op {i} ({op})")


def build_rank_model(config: ModelConfig, seed: int, comm, store: WeightGradStore) -> CausalLM:
    """This rank's model: split Linear layers and expert GEMMs (B/W), its share of the routed experts, and the
    whole model's weights (same config and seed) cut to that share."""
    whole = CausalLM(config, seed=seed)
    parts = choose_parts(config, weight_grads=store, routed_experts=expert_parallel(comm, store))
    model = CausalLM(config, seed=seed, parts=parts)
    model.load_state_dict(shard_state_dict(whole.state_dict(), model))
    return model


def pipeline_worker(rank: int, world_size: int, schedule_name: str, config: dict, seed: int,
                    input_ids: torch.Tensor, targets: torch.Tensor, num_microbatches: int,
                    latency: float = 0.0, op_hook=None, expert_parallel: int = 1,
                    a2a_latency: float = 0.0, overlap: bool = False) -> dict:
    """One rank of a pipeline step (run it with ``launch``). ``op_hook(rank, i, n_ops, op)``, if given, is called
    before each op (tests inject failures with ``fail_at_half``).

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
    apart = [q for q in range(sched.num_ranks) if S - 1 in sched.stages_on(q) and 0 not in sched.stages_on(q)]
    if config.get("num_nextn_predict_layers") and apart:
        raise ValueError(f"num_nextn_predict_layers > 0 under {schedule_name}: multi-token prediction runs on the last "
                         f"stage with the first stage's embedding, but pipeline rank {apart[0]} holds the last stage "
                         "without the first; use dualpipe or dualpipev, which put both on one rank (V3 §3.2)")
    if input_ids.shape[0] % (EP * M) or input_ids.shape != targets.shape:
        raise ValueError(f"a batch of {tuple(input_ids.shape)} ids and {tuple(targets.shape)} targets cannot be cut "
                         f"into {EP} expert-parallel slices of {M} equal micro-batches")
    p, e = divmod(rank, EP)  # pipeline rank, expert-parallel rank

    def peer(q: int) -> int:  # global rank of pipeline rank q in this rank's replica
        return q * EP + e

    comm = ep_groups(sched.num_ranks, EP, rank, a2a_latency)
    store = WeightGradStore()
    model = build_rank_model(ModelConfig.from_dict(config), seed, comm, store)
    stages = split_model(model, S)
    mine = sched.stages_on(p)
    for s in mine:
        stages[s].aux_scale = 1.0 / (M * EP)
    ids_mb, tgt_mb = input_ids.chunk(EP)[e].chunk(M), targets.chunk(EP)[e].chunk(M)
    b, T = ids_mb[0].shape

    # 1. post every receive this rank will need, up front (each has its own tag)
    box = Mailbox(peer, (b, T, model.config.hidden_size), S, M, latency)
    for op in sched.ops[p]:
        for c in op.parts():
            if c.kind == "F" and c.stage > 0 and (src := sched.rank_of(c.stage - 1, c.mb)) != p:
                box.expect("act", c.stage - 1, c.mb, src)
            elif c.kind in ("B", "BW") and c.stage < S - 1 and (src := sched.rank_of(c.stage + 1, c.mb)) != p:
                box.expect("grad", c.stage + 1, c.mb, src)

    saved: dict[tuple[int, int], tuple] = {}  # (stage, mb) → (input, output) for the backward
    wqueue: dict[tuple[int, int], list] = {}
    losses: dict[int, float] = {}  # global micro-batch e·M + m → its cross-entropy
    aux = [0.0]  # the balance losses this rank's forwards added, scaled as the loss is

    def run(c, waited):
        s, m = c.stage, c.mb
        if c.kind == "F":
            x = ids_mb[m] if s == 0 else box.fetch("act", s - 1, m, waited).detach().requires_grad_(True)
            if stages[s].is_last:
                y = stages[s](x, tgt_mb[m], ids_mb[m])  # the ids: what MTP embeds (the tokens ahead)
                losses[e * M + m] = stages[s].ce_loss
                y = y / (M * EP)  # the batch loss is the mean over all micro-batches of all replicas
            else:
                y = stages[s](x)
                box.send("act", s, m, y, sched.rank_of(s + 1, m), p)
            aux[0] += stages[s].aux_added
            saved[(s, m)] = (x, y)
        elif c.kind in ("B", "BW"):
            x, y = saved.pop((s, m))
            gy = None if stages[s].is_last else box.fetch("grad", s + 1, m, waited)
            store.deferring = c.kind == "B"
            torch.autograd.backward(y, gy)
            store.deferring = False
            if c.kind == "B":
                wqueue[(s, m)] = store.take()
            if s > 0:
                box.send("grad", s, m, x.grad, sched.rank_of(s - 1, m), p)
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
            if op_hook is not None:
                op_hook(rank, i, n_ops, op)
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
    box.flush()
    if box.pending or wqueue or saved:
        raise RuntimeError(f"rank {rank}: schedule left work undone: {list(box.pending)[:3]} {list(wqueue)[:3]}")
    makespan = time.time() - t0
    # 3. DualPipe: both copies of a stage hold half the gradient; sum them across the pair
    names = {}
    for s in mine:
        names.update(stage_param_names(model, stages[s]))
    grads = {n: (q.grad if q.grad is not None else torch.zeros_like(q)).detach().clone() for n, q in names.items()}
    if len(sched.stage_rank) == 2:
        sum_with(grads, peer(sched.num_ranks - 1 - p))
    # 4. expert parallelism: replicated parameters saw only this replica's tokens; sum over the EP group.
    #    A routed expert's gradient already holds every replica's tokens (they came to it).
    first_of = {id(q): mod.first for s in mine for mod in stages[s].modules()
                if isinstance(mod, ExpertParallelExperts) for q in mod.parameters()}  # routed-expert shards
    dense = [n for n in grads if id(names[n]) not in first_of]
    if EP > 1 and dense:
        flat = torch.cat([grads[n].flatten() for n in dense])
        dist.all_reduce(flat, group=comm.forward_group)
        unflatten(flat, dense, grads)
    shards = {n: (first_of[id(names[n])], grads.pop(n)) for n in list(grads) if id(names[n]) in first_of}
    module_names = {id(mod): n for n, mod in model.named_modules()}
    load = {module_names[id(mod)]: mod.step_load.clone() for s in mine for mod in stages[s].modules()
            if isinstance(mod, DeepSeekMoE)}  # this rank's tokens only (MTP's blocks included)
    return {"rank": rank, "losses": losses, "aux_loss": aux[0], "grads": grads if e == 0 else {},
            "expert_shards": shards, "expert_load": load, "timeline": timeline, "stages": mine,
            "makespan": makespan, "all_to_alls": comm.calls}


def reference_step(config: dict, seed: int, input_ids: torch.Tensor, targets: torch.Tensor) -> dict:
    """The same model and batch in one process: ``loss`` (the cross-entropy, mean over tokens), ``aux_loss`` (the
    MoE balance losses, 0 for a dense model), every parameter's gradient of their sum, and each MoE layer's
    ``expert_load`` (assignments per expert, what V3's bias update reads)."""
    model = CausalLM(ModelConfig.from_dict(config), seed=seed)
    out = model(input_ids, targets)
    out.loss.backward()
    aux = 0.0 if out.aux_loss is None else out.aux_loss.item()
    load = {n: m.step_load.clone() for n, m in model.named_modules() if isinstance(m, DeepSeekMoE)}
    return {"loss": out.metrics.get("ce_loss", out.loss.item()), "aux_loss": aux, "expert_load": load,
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
    num_microbatches, and optionally latency, op_hook, expert_parallel, a2a_latency and overlap. Returns one
    gathered result per job (see ``run_pipeline``)."""
    from .launcher import launch

    per_rank = launch(_jobs_worker, world_size, args=(jobs,), timeout=timeout)
    return [_gather([r[j] for r in per_rank]) for j in range(len(jobs))]


def run_pipeline(schedule_name: str, world_size: int, config: ModelConfig, input_ids: torch.Tensor,
                 targets: torch.Tensor, num_microbatches: int, seed: int = 0, timeout: float = 60.0,
                 **options) -> dict:
    """Launch one pipeline step on ``world_size`` processes (``options``: latency, expert_parallel, a2a_latency,
    overlap, op_hook — see ``pipeline_worker`` — and ``fail={"rank": r, "how": "raise"|"exit"|"hang"}``, shorthand
    for ``op_hook=fail_at_half`` on rank r). Gathers the cross-entropy (mean over all micro-batches),
    ``aux_loss`` (the MoE balance losses, scaled the same way), all gradients (full-model names, expert shards
    joined), each MoE layer's ``expert_load`` summed over all replicas, and each rank's timeline
    [(kind, stage, mb, start, end, waited), ...] in seconds (``waited``: the part of the op spent waiting for a
    transfer). Raises WorkerError if a rank fails."""
    fail = options.pop("fail", None)
    if fail is not None:
        options["op_hook"] = functools.partial(fail_at_half, target=fail["rank"], how=fail["how"])
    job = dict(schedule_name=schedule_name, config=config.to_dict(), seed=seed, input_ids=input_ids,
               targets=targets, num_microbatches=num_microbatches, **options)
    return run_pipelines([job], world_size, timeout)[0]
