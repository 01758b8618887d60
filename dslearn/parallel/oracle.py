"""The outside check: the same model split run by ``torch.distributed.pipelining.ScheduleDualPipeV``.

PyTorch (2.6 and later) ships a DualPipeV schedule ported from DeepSeek's code. Given the same
stages (``stages.split_model``: rank r holds stages r and 2R−1−r) and micro-batches, its loss and
gradients must equal dslearn's own DualPipeV run (``runtime.run_pipeline("dualpipev", ...)``).
Run ``torch_dualpipev_worker`` with ``launcher.launch``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..config import ModelConfig
from ..layers import cross_entropy
from ..model import CausalLM
from .runtime import pipeline_worker
from .stages import split_model, stage_param_names


def torch_dualpipev_available() -> bool:
    try:
        from torch.distributed.pipelining import ScheduleDualPipeV  # noqa: F401
    except ImportError:
        return False
    return True


def torch_dualpipev_worker(rank: int, world_size: int, config: dict, seed: int, input_ids: torch.Tensor,
                           targets: torch.Tensor, num_microbatches: int) -> dict:
    """One rank of torch's ScheduleDualPipeV on dslearn's stages: micro-batch losses (rank 0, which holds
    the first and the last stage) and the gradients of this rank's parameters (full-model names)."""
    from torch.distributed.pipelining import PipelineStage, ScheduleDualPipeV

    model = CausalLM(ModelConfig.from_dict(config), seed=seed)
    S = 2 * world_size
    stages = split_model(model, S)
    mine = [rank, S - 1 - rank]
    pipe = [PipelineStage(stages[s], stage_index=s, num_stages=S, device=torch.device("cpu")) for s in mine]
    schedule = ScheduleDualPipeV(pipe, n_microbatches=num_microbatches, loss_fn=cross_entropy)
    losses: list = []
    if rank == 0:
        schedule.step(input_ids, target=targets, losses=losses)
    else:
        schedule.step()
    names = {}
    for s in mine:
        names.update(stage_param_names(model, stages[s]))
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone() for n, p in names.items()}
    return {"losses": [float(x.detach()) for x in losses], "grads": grads}


def compare_dualpipev_worker(rank: int, world_size: int, config: dict, seed: int, input_ids: torch.Tensor,
                             targets: torch.Tensor, num_microbatches: int) -> dict:
    """Both runs in one group of processes (one torch import per rank): {"torch": ..., "dslearn": ...}."""
    theirs = torch_dualpipev_worker(rank, world_size, config, seed, input_ids, targets, num_microbatches)
    dist.barrier()
    ours = pipeline_worker(rank, world_size, "dualpipev", config, seed, input_ids, targets, num_microbatches)
    return {"torch": theirs, "dslearn": ours}
