"""Expert parallelism inside pipeline stages: an MoE layer's dispatch and combine as real all-to-alls.

DeepSeek-V3 trains with 16-way pipeline parallelism *and* 64-way expert parallelism (§3.2): the
routed experts of every MoE layer are spread over the ranks of an expert-parallel (EP) group, and
each token travels to the ranks holding its K experts and back. In the pipeline runtime the world of
PP × EP processes is laid out as

    global rank g = p · EP + e        p: pipeline rank (which stages), e: expert-parallel rank

The EP ranks of one pipeline rank hold the same stages and run the same op list, each on its own
slice of the batch (data parallel for everything but the routed experts). Rank e keeps the routed
experts [e·E/EP, (e+1)·E/EP) of each of its MoE layers; the gate, the shared experts, attention and
norms are replicated, and their gradients are summed over the EP group after the step.

One MoE layer on EP rank e, N local tokens, K experts each (``DeepSeekMoE.forward`` with
``ExpertParallelExperts`` as its routed experts, built in by ``choose_parts(config, routed_experts=...)``):

    1. gate (replicated)           topk_idx, topk_weight (N, K)              (DeepSeekMoE, unchanged)
    2. sort the N·K assignments    by expert id, so rows for EP rank 0 come first, then rank 1, …
    3. exchange counts             all_to_all_single of an (EP, E/EP) table: how many rows each rank
                                   will receive from each sender, per local expert
    4. dispatch                    all_to_all_single of the (A, d) rows            ─┐ the two all-to-alls
    5. local experts               regroup by local expert, grouped matmul          │ that DualPipe's F&B
    6. combine                     all_to_all_single back, the mirror of 4          ─┘ pairs hide
    7. weight and scatter-add      out[t] = Σ_k g_{t,k} · y_{t,k}

Backward runs 6 and 4 mirrored (``AllToAll.backward``): the gradient rows take the reverse route.
The expert weight gradients are deferrable into W like every Linear's (layers/weightgrad.expert_matmul).

Two process groups per EP group: forward all-to-alls use one, backward all-to-alls the other.
Collectives on one group must be issued in the same order on every member; with the two directions
on separate groups, the forward half and the backward half of an F&B pair can run in two threads at
once (``pipeline_worker(overlap=True)``), and one half's all-to-all waits while the other computes.
That is the overlap DualPipe is built for; on GPUs it is SMs and streams, here it is threads.

``latency`` injects a link delay: every dispatch and combine, forward and backward, holds its thread
``latency`` seconds after the data arrived (a sleep releases the GIL, so the other half of an F&B pair
keeps computing meanwhile).

Balancing. The balance losses are computed by DeepSeekMoE on the rank's tokens, and reach the gradients
through ``PipelineStage`` (``AddAuxLoss``). V3's sequence-wise loss is per sequence, so it equals a single-process
run exactly; V2's batch-wise losses (Σ f·P over a batch) come out per micro-batch, as in any micro-batched
training. V3's aux-loss-free bias update happens after the optimizer step, outside the schedule; what it
needs is the step's expert load summed over every replica: each layer counts its local assignments in
``step_load`` and ``run_pipeline`` returns the sums (``expert_load``). V2's token dropping
(``capacity_factor``) is refused: its capacity is a per-device budget that a different batch split would
change, so no single-process run could check it.

    paper / DeepSeek code              code
    ---------------------              ----
    EP group (64 ranks in V3)          ep_group(...), the ranks p·EP + e for e < EP
    dispatch / combine                 AllToAll (forward ↔ backward mirror), steps 4 and 6
    routed experts on a rank           ExpertParallelExperts (E/EP experts, full-model parameter names)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..layers.weightgrad import WeightGradStore, expert_matmul
from ..moe.dispatch import sort_by_expert


@dataclass
class EPComm:
    """How one rank's MoE layers talk: the EP group's size, this rank's place in it, the forward and
    backward process groups (None when EP = 1: no collectives), and the injected latency."""

    size: int = 1
    rank: int = 0
    forward_group: object = None
    backward_group: object = None
    latency: float = 0.0
    forward_calls: int = 0  # all-to-alls of token rows run so far, forward (dispatch, combine) and backward;
    backward_calls: int = 0  # two counters, as the two directions may run in two threads at once

    @property
    def calls(self) -> int:
        return self.forward_calls + self.backward_calls


_GROUPS: dict[tuple[int, int], list] = {}  # (PP, EP) → every EP group's (forward, backward) process groups


def ep_groups(pp: int, ep: int, rank: int, latency: float = 0.0) -> EPComm:
    """This rank's ``EPComm``. The first call for a (PP, EP) layout creates every EP group's two process
    groups — a collective call: every rank of the world makes it, in the same order; later steps in the
    same processes reuse them."""
    p, e = divmod(rank, ep)
    if ep == 1:
        return EPComm(latency=latency)
    if (pp, ep) not in _GROUPS:
        _GROUPS[(pp, ep)] = [(dist.new_group(r), dist.new_group(r))
                             for r in (list(range(q * ep, (q + 1) * ep)) for q in range(pp))]
    fwd, bwd = _GROUPS[(pp, ep)][p]
    return EPComm(ep, e, fwd, bwd, latency)


def _exchange(x: torch.Tensor, out_splits: list[int], in_splits: list[int], comm: EPComm,
              backward: bool) -> torch.Tensor:
    """Send in_splits[j] rows of x to EP rank j; receive out_splits[j] rows from it."""
    out = x.new_empty(sum(out_splits), *x.shape[1:])
    group = comm.backward_group if backward else comm.forward_group
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    if backward:
        comm.backward_calls += 1
    else:
        comm.forward_calls += 1
    if comm.latency > 0:
        time.sleep(comm.latency)
    return out


class AllToAll(torch.autograd.Function):
    """Rows to and from every EP rank. Its backward is the same exchange the other way round."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, comm):
        ctx.splits, ctx.comm = (out_splits, in_splits), comm
        return _exchange(x, out_splits, in_splits, comm, backward=False)

    @staticmethod
    def backward(ctx, gy):
        out_splits, in_splits = ctx.splits
        return _exchange(gy, in_splits, out_splits, ctx.comm, backward=True), None, None, None


class ExpertParallelExperts(nn.Module):
    """The routed experts of one DeepSeekMoE layer on the ranks of an EP group: this rank keeps experts
    [first, first + count) under the full layer's parameter names (``gate_up_proj``, ``down_proj``), and its
    forward — the drop-in for ``RoutedExperts.forward`` — sends every assignment to the rank holding its
    expert and brings the result back. Gate, shared experts and balance stay in ``DeepSeekMoE``: the same
    outputs and gradients as the whole layer in one process, to float rounding (the gate weight multiplies
    after the expert, not before W2 as in ``grouped_dispatch``)."""

    def __init__(self, config, comm: EPComm, store: WeightGradStore | None = None):
        super().__init__()
        if config.capacity_factor is not None:
            raise ValueError("expert parallelism here runs without token dropping (capacity_factor must be None): "
                             "a per-device capacity depends on how the batch is split, so no single-process run "
                             "could check it")
        if config.n_routed_experts % comm.size:
            raise ValueError(f"n_routed_experts={config.n_routed_experts} cannot be split evenly over {comm.size} "
                             "expert-parallel ranks")
        self.n_experts, self.comm, self.store = config.n_routed_experts, comm, store
        self.count = config.n_routed_experts // comm.size
        self.first = comm.rank * self.count
        d, inner = config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.count, 2 * inner, d))  # (E_l, 2I, d)
        self.down_proj = nn.Parameter(torch.empty(self.count, d, inner))  # (E_l, d, I)

    def _local(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x (R, d) sorted by local expert, counts (E_l,) → (R, d)."""
        g, u = expert_matmul(x, self.gate_up_proj, counts, self.store).chunk(2, dim=-1)  # (R, I) each
        return expert_matmul(nn.functional.silu(g) * u, self.down_proj, counts, self.store)  # (R, d)

    def forward(self, x, topk_idx, topk_weight, keep=None):
        """x (N, d), topk_idx/topk_weight (N, K) → Σ_k g·FFN (N, d), the experts living across the EP group."""
        if keep is not None:
            raise ValueError("expert-parallel experts take no token-dropping mask")
        comm = self.comm
        # 2. assignments in expert order = grouped by the EP rank that holds the expert
        token, pos, counts = sort_by_expert(topk_idx, None, self.n_experts)  # (A,), (A,), (E,)
        rows = x[token]  # (A, d)
        if comm.size == 1:
            y = self._local(rows, counts)  # (A, d): already sorted by (local) expert
        else:
            # 3. how many rows arrive from each rank, per local expert
            send = counts.view(comm.size, self.count)  # (EP, E_l) rows to rank j for its expert i
            recv = torch.empty_like(send)
            dist.all_to_all_single(recv, send, group=comm.forward_group)  # (EP, E_l): from rank j for expert i
            in_splits, out_splits = send.sum(1).tolist(), recv.sum(1).tolist()
            # 4. dispatch
            got = AllToAll.apply(rows, out_splits, in_splits, comm)  # (R, d), by sender, then local expert
            # 5. the local experts, on rows regrouped by expert
            expert_of_row = torch.arange(self.count).repeat(comm.size).repeat_interleave(recv.flatten())
            order = expert_of_row.argsort(stable=True)  # (R,)
            out = self._local(got[order], recv.sum(0))  # (R, d) in expert order
            back = torch.empty_like(out).index_copy(0, order, out)  # (R, d) in arrival order
            # 6. combine: every row goes home, in the order it left
            y = AllToAll.apply(back, in_splits, out_splits, comm)  # (A, d)
        # 7. weight by g_{t,k} and sum over each token's K experts
        return torch.zeros_like(x).index_add(0, token, y * topk_weight.flatten()[pos, None].to(y.dtype))


def expert_parallel(comm: EPComm, store: WeightGradStore | None = None):
    """The routed-experts factory for ``choose_parts(config, routed_experts=...)``: every MoE layer built with it
    keeps this rank's share of the experts and dispatches over ``comm``."""
    return lambda config: ExpertParallelExperts(config, comm, store)


def shard_state_dict(state: dict, model: nn.Module) -> dict:
    """A whole model's state dict cut to fit ``model`` (built with ``expert_parallel``): each
    ExpertParallelExperts keeps rows [first, first + count) of its layer's full expert tensors."""
    out = dict(state)
    for name, m in model.named_modules():
        if isinstance(m, ExpertParallelExperts):
            for p in ("gate_up_proj", "down_proj"):
                key = f"{name}.{p}"
                out[key] = state[key][m.first:m.first + m.count].clone()
    return out
