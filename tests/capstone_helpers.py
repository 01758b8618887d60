"""A reduced capstone plan for the tests, and a child process that runs it (optionally killing itself).

``python tests/capstone_helpers.py OUT [KILL_STAGE KILL_STEP]`` runs the reduced pipeline into OUT with one
thread; with a kill point it SIGKILLs itself right after the checkpoint of step KILL_STEP of stage KILL_STAGE
is written — no ``finally``, no flush, the way a preempted job dies.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_plan() -> dict:
    from dslearn.capstone import make_plan
    from dslearn.config import ModelConfig

    plan = copy.deepcopy(make_plan(quick=True))
    seq, steps = 32, 12
    plan["model"] = ModelConfig.from_dict(plan["model"]).replace(
        max_position_embeddings=seq, bias_update_until=10, mtp_weight_switch_step=6).to_dict()
    plan["pretrain"] |= dict(steps=steps, batch_size=4, seq_len=seq, warmup_steps=2, batch_ramp_start=2,
                             batch_ramp_steps=3, eval_every=6, eval_windows=4, log_every=1, checkpoint_every=3)
    lc = plan["long_context"]
    lc |= dict(context=2 * seq, eval_windows=4)
    lc["rope_scaling"] |= dict(factor=2.0, original_max_position_embeddings=seq)
    lc["train"] |= dict(steps=4, batch_size=2, seq_len=2 * seq, eval_windows=4, log_every=1, checkpoint_every=2)
    plan["evaluate"] = dict(windows=4, mtp_prompts=1, prompt_bytes=8, mtp_new_tokens=6)
    plan["export"] |= dict(prompts=3, prompt_bytes=8, new_tokens=6)
    plan["report"] = dict(sample_tokens=6)
    return plan


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    from dslearn.capstone import run
    from dslearn.train import loop

    out = argv[0]
    if len(argv) == 3:
        stage, kill_step = argv[1], int(argv[2])
        save = loop.TrainingLoop.save

        def save_then_die(self):
            path = save(self)
            if self.cfg.desc == stage and self.step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        loop.TrainingLoop.save = save_then_die
    run(out, until="long_context", progress=False, plan=tiny_plan(), echo=lambda s: None)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(sys.argv[1:])
