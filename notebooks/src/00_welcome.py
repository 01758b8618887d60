# %% [markdown]
# # 00 · Welcome: the DeepSeek-LLM baseline, trained on a CPU in minutes
#
# This course rebuilds four DeepSeek technical reports — **DeepSeek-LLM → V2 → V3 → R1** — at a size that
# trains on a laptop CPU. Every idea is code you can run, read and change, backed by the tested `dslearn`
# package and checked against an outside reference where one exists.
#
# **In this notebook you will**
# 1. check that your machine is ready (`dslearn check`);
# 2. see the map of the course;
# 3. meet the corpus (the Python standard library's own source) and byte-level tokens;
# 4. take apart the DeepSeek-LLM baseline — a pre-norm decoder with RMSNorm, RoPE and SwiGLU — build one
#    layer from scratch, and prove it equals `dslearn`'s;
# 5. train it for a few minutes on a CPU, watch the loss, and sample from it with a KV cache;
# 6. turn the sampling knobs (temperature, top-k) in an explorer;
# 7. do your first exercises, with a checker.
#
# **Paper sections:** DeepSeek-LLM (arXiv 2401.02954) §2.2 *Architecture* and §2.3 *Hyperparameters*.
#
# **Symbols** used across the course (and the letters whose meaning changes between chapters, such as $M$) are listed in the [glossary](../docs/glossary.md).

# %% [markdown]
# ## 1. Is this machine ready?
# `dslearn check` (or `python -m dslearn check`) prints the same report in a terminal.

# %%
import math
import tempfile
import time

import matplotlib.pyplot as plt
import torch

from dslearn.envcheck import report

text, ok = report()
print(text)
print("\nready:", ok)

# %% [markdown]
# ## 2. The course map
#
# | # | notebook | what it teaches | `dslearn` home | paper |
# |---|---|---|---|---|
# | 00 | welcome (this one) | the baseline decoder, the corpus, training, sampling | `config`, `data`, `model`, `train`, `generate` | DeepSeek-LLM §2 |
# | 01 | scaling laws | FLOPs/token $M$, $C = M\cdot D$, hyperparameter and allocation laws, IsoFLOP curves | `scaling` | DeepSeek-LLM §3 |
# | 02 | multi-head latent attention | MHA → GQA → MQA → MLA, decoupled RoPE, latent KV cache, absorption | `attention` | V2 §2.1 |
# | 03 | DeepSeekMoE | fine-grained + shared experts, device-limited routing, balance losses, token dropping | `moe` | V2 §2.2 |
# | 04 | V3 load balancing | sigmoid gating, node-limited routing, aux-loss-free bias, sequence-wise loss | `moe` | V3 §2.1 |
# | 05 | FP8 in Triton | E4M3, block scaling, FP32 promotion, an FP8 GEMM and FP8 training | `fp8` | V3 §3.3 |
# | 06 | DualPipe | 1F1B, zero-bubble and DualPipe schedules on real CPU processes | `parallel` | V3 §3.2 |
# | 07 | multi-token prediction | V3's MTP module and loss | `model` | V3 §2.2 |
# | 08 | GRPO / R1-Zero | verifiable rewards, group advantages, the clipped objective with KL | `rl` | R1 §2, DeepSeekMath §4 |
# | 09 | the R1 recipe | cold-start SFT, RL, rejection sampling, DPO | `rl` | R1 §2.3 |
# | 10 | capstone | a complete miniature V3/R1: pretrain → SFT → GRPO → export | everything | all four |
#
# Chapters arrive in this order; each imports the ones before it rather than copying them.

# %% [markdown]
# ## 3. The corpus: Python's standard library, one byte at a time
#
# Nothing in this course downloads anything. Every Python installation ships its standard library as source,
# so that is our corpus: several megabytes of real, varied, well-written text. `dslearn` picks the files
# deterministically, holds out about 5% of them **by file** for validation (so no validation line is ever
# trained on), and records the Python version and a SHA-256 of the content — a different Python ships a
# different library, and results should say which one they were measured on.

# %%
from dslearn.data import ByteTokenizer, TokenStream, bits_per_byte, load_corpus

corpus = load_corpus()
print(corpus.describe())
print("first validation files:", ", ".join(corpus.val_files[:4]))
print()
print(corpus.train[:300].decode())

# %% [markdown]
# Tokens are **bytes**: the vocabulary has 256 entries, needs no training, and round-trips any text exactly.
# The metric we report is **bits per byte** (bpb): the cross-entropy in bits for each byte of text. A model
# that guesses uniformly among 256 bytes pays $\log_2 256 = 8$ bits per byte; the better the model, the fewer.
# DeepSeek-LLM's scaling-law fits used the same kind of metric (bits per byte on held-out text) because it does
# not depend on the tokenizer.

# %%
# NBVAL_CHECK_OUTPUT
tok = ByteTokenizer()
ids = tok.encode("def add(a, b):  # ✓")
print(ids)
print("round trip:", tok.decode(ids) == "def add(a, b):  # ✓")
print(f"uniform guess: {bits_per_byte(math.log(256)):.3f} bits per byte")

# %% [markdown]
# ## 4. The baseline: DeepSeek-LLM's decoder
#
# DeepSeek-LLM follows LLaMA's design (§2.2): a stack of **pre-norm** decoder layers.
#
# $$
# \begin{aligned}
# u &= h + \mathrm{Attn}(\mathrm{RMSNorm}(h)) \\
# h' &= u + \mathrm{FFN}(\mathrm{RMSNorm}(u)), \qquad \mathrm{FFN}(x) = W_{down}\big(\mathrm{SiLU}(W_{gate}x) \odot W_{up}x\big)
# \end{aligned}
# $$
#
# with rotary position embeddings (RoPE) applied to queries and keys. The 7B model uses multi-head attention;
# the 67B uses grouped-query attention with 8 key/value heads. Later chapters replace `Attn` by MLA (V2) and
# `FFN` by DeepSeekMoE (V2/V3) — through the config, without copying the model.
#
# | paper | code (`ModelConfig` field / module name) |
# |---|---|
# | $n_{vocab}$, $d_{model}$, $n_{layer}$ | `vocab_size`, `hidden_size`, `num_hidden_layers` |
# | $n_h$, $d_h$, $n_{kv}$ | `num_attention_heads`, `head_dim`, `num_key_value_heads` |
# | $l_{seq}$ (context) | `max_position_embeddings` |
# | $W^Q, W^K, W^V, W^O$ | `self_attn.q_proj`, `k_proj`, `v_proj`, `o_proj` |
# | $W_{gate}, W_{up}, W_{down}$ | `mlp.gate_proj`, `up_proj`, `down_proj` |
# | the two RMSNorms of a layer | `input_layernorm`, `post_attention_layernorm` |
#
# The names are Hugging Face's, so this model loads into `transformers.LlamaForCausalLM` unchanged — the test
# suite checks that both give the same logits. Here is the `tiny` preset we train below, next to the real 7B:

# %%
from dslearn.diagrams.baseline import decoder_block

decoder_block()  # the whole model at a glance: what section 4 builds, one box at a time
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
from dslearn.config import ModelConfig
from dslearn.model import CausalLM

tiny = ModelConfig.from_preset("tiny")
paper = ModelConfig.from_preset("deepseek-llm-7b")
for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
          "intermediate_size", "max_position_embeddings"):
    print(f"{f:>24}: tiny {getattr(tiny, f):>6}   DeepSeek-LLM 7B {getattr(paper, f):>7}")

# %%
# NBVAL_CHECK_OUTPUT
model = CausalLM(tiny, seed=0)
groups = {"embedding + output head": 0, "attention": 0, "feed-forward": 0, "norms": 0}
for name, p in model.named_parameters():
    key = ("attention" if "self_attn" in name else "feed-forward" if "mlp" in name
           else "norms" if "norm" in name else "embedding + output head")
    groups[key] += p.numel()
for k, v in groups.items():
    print(f"{k:>24}: {v:>8,}  ({v / model.num_parameters():.1%})")
print(f"{'total':>24}: {model.num_parameters():>8,}")


# %% [markdown]
# The same count, written as a formula from the config, checked against the real module and then applied to
# the paper's models:

# %%
# NBVAL_CHECK_OUTPUT
def dense_parameters(c):
    attn = 2 * c.hidden_size * c.num_attention_heads * c.head_dim + 2 * c.hidden_size * c.num_key_value_heads * c.head_dim
    per_layer = attn + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    embed = 2 * c.vocab_size * c.hidden_size            # input embedding + untied output head
    return c.num_hidden_layers * per_layer + c.hidden_size + embed, embed

assert dense_parameters(tiny)[0] == model.num_parameters()
for name in ("tiny", "deepseek-llm-7b", "deepseek-llm-67b"):
    total, embed = dense_parameters(ModelConfig.from_preset(name))
    print(f"{name:>17}: {total / 1e9:7.3f} B parameters, embedding + head {embed / total:.1%} of them")


# %% [markdown]
# The embedding and output head matter at our size and at 7B, and shrink as a share as models grow. That is
# why DeepSeek-LLM measures model scale *without* them — chapter 01 builds on exactly this.
#
# ### One layer, from scratch
#
# The lesson in code: RMSNorm, RoPE, causal attention and SwiGLU in a few lines of plain torch, then the proof
# that they compute exactly what `dslearn`'s layer computes with the same weights.

# %%
def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

def rope(x, positions, theta=10000.0):                                  # x: (B, H, T, d)
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)   # θ^(-2i/d)
    angle = (positions.double()[:, None] * inv_freq).float()           # (T, d/2)
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., : d // 2], x[..., d // 2 :]                           # rotate pairs (x_i, x_{i+d/2})
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)

def decoder_layer(h, layer, n_heads):
    B, T, D = h.shape
    dh = D // n_heads
    attn, mlp = layer.self_attn, layer.mlp
    # 1. attention on the normalised input
    x = rms_norm(h, layer.input_layernorm.weight)
    q = (x @ attn.q_proj.weight.T).view(B, T, n_heads, dh).transpose(1, 2)   # (B, H, T, d_h)
    k = (x @ attn.k_proj.weight.T).view(B, T, n_heads, dh).transpose(1, 2)
    v = (x @ attn.v_proj.weight.T).view(B, T, n_heads, dh).transpose(1, 2)
    pos = torch.arange(T)
    q, k = rope(q, pos), rope(k, pos)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)                   # (B, H, T, T)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    u = h + y @ attn.o_proj.weight.T
    # 2. SwiGLU feed-forward on the normalised residual
    x = rms_norm(u, layer.post_attention_layernorm.weight)
    ffn = (torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return u + ffn

h = torch.randn(2, 10, tiny.hidden_size, generator=torch.Generator().manual_seed(0))
layer = model.model.layers[0]
with torch.no_grad():
    ours = decoder_layer(h, layer, tiny.num_attention_heads)
    cos, sin = model.rotary(torch.arange(10).expand(2, 10))
    theirs = layer(h, (cos, sin))
torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
print(f"from-scratch layer == dslearn's DecoderLayer (max |diff| = {(ours - theirs).abs().max():.1e})")

# %% [markdown]
# ## 5. Train it
#
# One trainer serves the whole course (`dslearn.train.Trainer`). It follows DeepSeek-LLM §2.3: AdamW with
# $\beta_1 = 0.9$, $\beta_2 = 0.95$, weight decay 0.1, gradient clipping at 1.0, and the **multi-step** learning-rate
# schedule — warm up, hold the peak until 80% of training, then drop to 31.6% of it, and to 10% after 90%.

# %%
from dslearn.train import TrainConfig, lr_at

steps = 120
schedule = [lr_at(s, steps, 3e-3, warmup_steps=20) for s in range(steps)]
fig, ax = plt.subplots(figsize=(6, 2.5))
ax.plot(schedule)
ax.set(xlabel="optimizer step", ylabel="learning rate", title="DeepSeek-LLM's multi-step schedule (peak 3e-3)")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# Now the real run: the `tiny` preset, 120 steps of 16 sequences × 256 bytes (about 0.5 M bytes), full fp32.
# How long it takes depends on the CPU and on what else it is doing: the cell prints its own wall time and
# throughput (a few minutes on a laptop's two cores; far less on a larger machine).
# Batches are a pure function of `(seed, step)`, so on one machine this cell gives the same numbers every time;
# another CPU or torch thread count adds floats in another order, so the last printed digits may differ there (the
# checked cell below states only claims with wide margins). The run
# directory receives a metrics log and an atomic checkpoint; an interrupted run picks up exactly where it stopped.

# %%
from dslearn.train import Trainer

torch.manual_seed(0)
run_dir = tempfile.mkdtemp(prefix="dslearn-welcome-")
model = CausalLM(tiny, seed=0)
cfg = TrainConfig(steps=steps, batch_size=16, lr=3e-3, warmup_steps=20, eval_every=40, eval_windows=64, seed=0)
trainer = Trainer(model, cfg, TokenStream(corpus.train, "train"), TokenStream(corpus.val, "validation"), run_dir=run_dir)
t0 = time.perf_counter()
result = trainer.fit()
print(f"{result.steps_done} steps in {time.perf_counter() - t0:.0f} s, {result.tokens_per_s:,.0f} tokens/s")
print(f"training loss: {result.losses[0]:.2f} -> {sum(result.losses[-10:]) / 10:.2f} nats per byte")

# %%
# NBVAL_CHECK_OUTPUT
first, last = result.losses[0], sum(result.losses[-10:]) / 10
print(f"started at the uniform guess (ln 256 = {math.log(256):.2f}): {abs(first - math.log(256)) < 0.05}")
print(f"training loss more than halved: {last < first / 2}")
print(f"validation bits per byte below 3.5: {result.final_val_bpb < 3.5}")

# %%
from dslearn.plot import plot_loss_curves

ax = plot_loss_curves({"tiny": run_dir}, title="tiny baseline on the standard library")
plt.show()
for rec in result.val:
    print(f"step {rec['step']:>3}: validation {rec['val_bpb']:.3f} bits per byte")

# %% [markdown]
# In these few steps the model went from 8 bits per byte (the uniform guess) to the validation figure printed above — it has learned Python's indentation,
# keywords and common identifiers, not its meaning. Longer runs and the `small` preset go further:
# `dslearn train --preset small --steps 2000 --out runs/small` (see the README for throughput on this CPU).
#
# ## 6. Sampling, with and without a KV cache
#
# `dslearn.generate` samples a batch of prompts at once (left-padded), with temperature, top-k, top-p, stop
# strings and a token limit. With a **KV cache**, each new token costs one position per layer instead of a pass
# over the whole sequence. Both paths draw the same random numbers, so they must produce the same tokens.

# %%
from dslearn.generate import generate

prompts = ["def ", "import ", "class Http"]
ids = [tok.encode(p) for p in prompts]

def sample(use_cache, max_new_tokens=120):
    return generate(model, ids, max_new_tokens=max_new_tokens, temperature=0.8, top_k=40, stop=[tok.encode("\n\n")],
                    generator=torch.Generator().manual_seed(0), use_cache=use_cache)

for use_cache in (True, False):   # warm-up: the first call of each path pays one-off costs (allocation, caches)
    sample(use_cache, max_new_tokens=8)
timing, outputs = {}, {}
for use_cache in (True, False):
    t0 = time.perf_counter()
    outputs[use_cache] = sample(use_cache)
    timing[use_cache] = time.perf_counter() - t0
for p, g in zip(prompts, outputs[True]):
    print(f"--- {p!r} ({g.finish_reason}, {len(g.tokens)} tokens)")
    print(p + tok.decode(g.tokens))
ratio = timing[False] / timing[True]
print(f"\nafter a warm-up: cached {timing[True]:.2f} s vs uncached {timing[False]:.2f} s on this machine "
      f"(the cache made it {ratio:.1f}x {'faster' if ratio >= 1 else 'slower'}; timings vary with the CPU and its load)")

# %%
# NBVAL_CHECK_OUTPUT
same = [g.tokens for g in outputs[True]] == [g.tokens for g in outputs[False]]
print("cached and uncached generation give the same tokens:", same)

# %% [markdown]
# ## 7. Explorer: temperature and top-k
#
# Sampling turns the model's next-byte distribution into text. **Temperature** divides the logits before the softmax
# (below 1 sharpens the distribution towards the likeliest byte, above 1 flattens it towards the uniform guess);
# **top-k** keeps only the $k$ likeliest bytes. Move the sliders: the sample (same prompt, same random seed) and the
# distribution of the first generated byte change with them. A static comparison of two settings follows, for
# readers without a live kernel.

# %%
import ipywidgets as widgets


def explore_sampling(prompt="def ", temperature=0.8, top_k=40):
    ids = [tok.encode(prompt)]
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits[0, -1] / max(temperature, 1e-3)
    if top_k < 256:
        logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
    p = logits.softmax(-1)
    top = p.topk(5)
    entropy = -(p[p > 0] * p[p > 0].log2()).sum().item()
    print(f"first byte: entropy {entropy:.2f} bits; likeliest: "
          + ", ".join(f"{bytes([i]).decode('latin-1')!r} {v:.0%}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
    g = generate(model, ids, max_new_tokens=80, temperature=temperature, top_k=top_k,
                 generator=torch.Generator().manual_seed(0))[0]
    print(prompt + tok.decode(g.tokens))

widgets.interact(explore_sampling, prompt=widgets.Text("def ", description="prompt"),
                 temperature=widgets.FloatSlider(value=0.8, min=0.1, max=2.0, step=0.1, description="temperature"),
                 top_k=widgets.IntSlider(value=40, min=1, max=256, description="top-k"));

# %%
# Static fallback: a cold and a hot setting, same prompt and seed.
for t, k in [(0.3, 5), (1.5, 256)]:
    print(f"=== temperature {t}, top-k {k}")
    explore_sampling("def ", t, k)

# %% [markdown]
# ## 8. Exercises
#
# Each exercise is a function for you to write. `check(name, your_function)` runs it against `dslearn`'s own
# implementation and prints **PASS**, **FAIL** (with what went wrong and a hint) or **TODO** (not attempted yet).
#
# 1. `rmsnorm(x, weight, eps)` — normalise the last dimension by its root mean square.
# 2. `bits_per_byte(loss_nats_per_token, bytes_per_token)` — convert a loss into the course's metric.
# 3. `rope(x, positions, theta)` — rotate queries/keys by position (halves layout); the checker also tests
#    that scores depend only on *relative* position.

# %%
from dslearn.exercises import check


def my_rmsnorm(x, weight, eps):
    raise NotImplementedError  # your code here

def my_bits_per_byte(loss_nats_per_token, bytes_per_token):
    raise NotImplementedError  # your code here

def my_rope(x, positions, theta):
    raise NotImplementedError  # your code here (x: (B, H, T, d), positions: (B, T))

for name, fn in [("rmsnorm", my_rmsnorm), ("bits_per_byte", my_bits_per_byte), ("rope", my_rope)]:
    print(check(name, fn))

# %% [markdown]
# A wrong answer is caught with a precise message — here, the classic RMSNorm mistake of adding ε *outside*
# the square root:

# %%
# NBVAL_CHECK_OUTPUT
print(check("rmsnorm", lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w))

# %% [markdown]
# ## Recap
#
# - The DeepSeek-LLM baseline is a LLaMA-style pre-norm decoder: RMSNorm, RoPE, (grouped-query) attention, SwiGLU.
#   One `ModelConfig` describes it with Hugging Face's field names; the paper-scale presets describe the real models.
# - The corpus is the Python standard library, split by file, hashed; tokens are bytes; the metric is bits per byte.
# - One trainer — AdamW, warm-up + multi-step schedule, clipping, atomic checkpoints, exact resume, non-finite
#   loss detection — serves every chapter.
# - Generation with a KV cache gives the same tokens as without; each new token costs one position per layer
#   instead of a pass over the whole sequence (the timing above shows what that bought on this machine).
# - Temperature and top-k shape the sampled text without changing the model.
#
# Symbols: see the [glossary](../docs/glossary.md).
#
# **Next:** chapter 01 asks DeepSeek-LLM's question — for a fixed compute budget, how big a model and how much
# data? — and answers it with our own miniature scaling laws.
#
# <details><summary>Solutions to the exercises (open after trying)</summary>
#
# ```python
# def my_rmsnorm(x, weight, eps):
#     return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
#
# def my_bits_per_byte(loss_nats_per_token, bytes_per_token):
#     return loss_nats_per_token / math.log(2) / bytes_per_token
#
# def my_rope(x, positions, theta):
#     d = x.shape[-1]
#     angle = positions.double()[..., None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
#     cos, sin = angle.cos().float()[:, None], angle.sin().float()[:, None]   # (B, 1, T, d/2)
#     a, b = x[..., : d // 2], x[..., d // 2 :]
#     return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
# ```
# </details>
