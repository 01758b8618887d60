"""Which of chapter 09's tasks can the capstone's law-sized model learn? (why the capstone's post-training uses
2-digit additions only)

Pretrains a model of the mini-v3 family (``dslearn.capstone.sizing.family``) on chapter 09's world alone
(``world.base_corpus``), scores it on held-out problems, gives it chapter 09's cold-start SFT and scores it again.

    python experiments/capstone/task_size.py 32 1500 0.0136 2        # width 32 (the preset), 2-digit problems
    python experiments/capstone/task_size.py 32 1500 0.0136 2,3,4    # width 32, chapter 09's three levels
    python experiments/capstone/task_size.py 64 1000 0.008 2,3,4     # width 64

Arguments: width, pretraining steps (× 16 sequences of 128 tokens), peak learning rate, difficulty levels.
One thread per process; results in task_size.txt.
"""

import sys
import time

import torch

from dslearn.capstone.sizing import family
from dslearn.config import ModelConfig
from dslearn.data import TokenStream
from dslearn.model import CausalLM
from dslearn.rl import recipe
from dslearn.rl.evaluate import evaluate
from dslearn.rl.world import LANGUAGES, base_corpus, mixed_problems
from dslearn.train import TrainConfig, Trainer

torch.set_num_threads(1)
width, steps, lr = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
levels = tuple(int(x) for x in sys.argv[4].split(","))
model = CausalLM(ModelConfig(**family(width, context=192)), seed=0)
print("parameters", sum(p.numel() for p in model.parameters()), flush=True)
t0 = time.time()
cfg = TrainConfig(steps=steps, batch_size=16, seq_len=128, lr=lr, warmup_steps=50, schedule="cosine", eval_every=0,
                  progress=False)
Trainer(model, cfg, TokenStream(base_corpus(40000, levels=levels), "w"), None).fit()
print("pretrain", time.time() - t0, flush=True)
held = mixed_problems(10, levels, LANGUAGES, "held_out", seed=1)
keys = ("pass@1", "greedy", "format", "by_difficulty")
print("base", {k: v for k, v in evaluate(model, held, 2, max_new_tokens=140).items() if k in keys}, flush=True)
recipe.cold_start_sft(model, recipe.cold_start_data(600, levels=levels),
                      recipe.sft_config(steps=150, batch_size=16, seq_len=160, lr=lr * 0.1, warmup_steps=10))
print("cold", time.time() - t0, {k: v for k, v in evaluate(model, held, 2, max_new_tokens=140).items()
                                  if k in keys}, flush=True)
