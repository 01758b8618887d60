"""The child of tests/test_ddp.py: pretrain a tiny MLA + DeepSeekMoE (V3 routing, bias update) model, alone or under
``torchrun --nproc-per-node 2`` — the same script, unchanged.

    python tests/ddp_helpers.py RUN_DIR [STOP_AFTER]

With STOP_AFTER the run exits (every rank, status 0) right after the checkpoint of that step is written, as if the
job had been stopped there; rerunning without it resumes from that checkpoint, in either mode.

With ``DDP_SIGINT=RANK:STEP`` in the environment, rank RANK alone gets a SIGINT at the end of step STEP (as when a
signal reaches one worker, or reaches the workers at different moments), and the run checkpoints only when it ends
or stops: every rank must stop after the same step and the checkpoint of that step must be the one saved.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    from resume_helpers import MLA_MOE

    from dslearn.data import TokenStream
    from dslearn.model import CausalLM
    from dslearn.train import TrainConfig, Trainer, ddp, loop

    ddp.init_from_env()
    if len(argv) > 1:
        stop, save = int(argv[1]), loop.TrainingLoop.save

        def save_then_stop(self):
            path = save(self)  # rank 0 writes; every rank waits for it (ddp.barrier)
            if self.step == stop:
                os._exit(0)
            return path

        loop.TrainingLoop.save = save_then_stop
    sigint = os.environ.get("DDP_SIGINT")
    if sigint:
        import signal

        rank, at = map(int, sigint.split(":"))
        run_step = loop.TrainingLoop.run_step

        def run_step_then_signal(self, step_fn):
            out = run_step(self, step_fn)
            if self.step == at and ddp.rank_world()[0] == rank:
                os.kill(os.getpid(), signal.SIGINT)
            return out

        loop.TrainingLoop.run_step = run_step_then_signal
    text = bytes(range(32, 127)) * 40 + ("def add(a, b):\n    return a + b\n\n" * 60).encode()
    cfg = TrainConfig(steps=5, batch_size=8, seq_len=16, grad_accum_steps=4, lr=3e-3, warmup_steps=1,
                      eval_every=0, eval_windows=4, log_every=1, checkpoint_every=0 if sigint else 1,
                      progress=False,
                      batch_ramp_start=4, batch_ramp_steps=2)
    trainer = Trainer(CausalLM(MLA_MOE, seed=0), cfg, TokenStream(text[:4000]), TokenStream(text[4000:]),
                      run_dir=argv[0])
    trainer.fit()


if __name__ == "__main__":
    main(sys.argv[1:])
