"""A reduced capstone plan for the tests, and a child process that runs it (optionally killing itself).

``python tests/capstone_helpers.py OUT UNTIL [KILL_STAGE KILL_STEP]`` runs the reduced pipeline into OUT up to
stage UNTIL with one thread; with a kill point it SIGKILLs itself right after the checkpoint of step KILL_STEP
of stage KILL_STAGE is written — no ``finally``, no flush, the way a preempted job dies. The same script runs
unchanged under ``torchrun --nproc-per-node 2`` (tests/test_capstone_ddp.py).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_plan() -> dict:
    from dslearn.capstone.pipeline import reduced_plan

    return reduced_plan(seq_len=32, steps=12, long_steps=4)


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    from dslearn.capstone import run
    from dslearn.train import ddp, loop

    ddp.init_from_env()

    out, until = argv[0], argv[1]
    if len(argv) == 4:
        stage, kill_step = argv[2], int(argv[3])
        save = loop.TrainingLoop.save

        def save_then_die(self):
            path = save(self)
            if self.run_dir is not None and self.run_dir.name == stage and self.step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        loop.TrainingLoop.save = save_then_die
    run(out, until=until, progress=False, plan=tiny_plan(), echo=lambda s: None)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(sys.argv[1:])
