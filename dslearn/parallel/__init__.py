"""Pipeline parallelism the DeepSeek-V3 way (§3.2): schedules, a simulator, and a real multi-process runtime.

    schedules.py   1F1B, ZB1P, DualPipe, DualPipeV as plain data (each rank's ordered ops)
    simulator.py   a discrete-event simulator: timelines, bubbles, peak activations
    launcher.py    spawn N CPU processes in a gloo group, collect results, stop all on any failure
    stages.py      a CausalLM cut into pipeline stages, built from the model's own forward pieces
    p2p.py         tagged point-to-point transfers, every receive posted up front
    runtime.py     run a schedule on those stages (one rank's worker): B and W separated (the split layers
                   of layers/weightgrad.py), F&B halves overlapped in two threads
    expert_parallel.py  routed experts across an expert-parallel group: dispatch and combine as all-to-alls
    oracle.py      the same stages under torch.distributed.pipelining.ScheduleDualPipeV (the outside check)
    timeline.py    reading a measured timeline: bubble, per-op costs, the schedule figure

The stages, p2p, runtime, expert_parallel, launcher and oracle modules import torch.distributed or the model;
import them by name. The timing experiments that run them (and their model configs) are a study:
``dslearn.studies.parallel``.
"""

from .schedules import (
    SCHEDULES,
    Op,
    Schedule,
    ScheduleError,
    build_schedule,
    check_complete,
    dualpipe,
    dualpipev,
    one_f_one_b,
    with_communication,
    zb1p,
)
from .simulator import Costs, Event, SimResult, format_timeline, simulate, table_bubble

__all__ = [
    "SCHEDULES", "Costs", "Event", "Op", "Schedule", "ScheduleError", "SimResult", "build_schedule",
    "check_complete", "dualpipe", "dualpipev", "format_timeline", "one_f_one_b", "simulate", "table_bubble",
    "with_communication", "zb1p",
]
