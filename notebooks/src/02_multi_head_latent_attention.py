# %% [markdown]
# # 02 · Multi-head latent attention: from MHA to absorbed MLA
#
# A decoder that generates text keeps, for every earlier token and every layer, whatever later queries
# need to attend to it: the **KV cache**. For long contexts it is the memory that limits batch size and
# speed. DeepSeek-V2 replaced multi-head attention with **multi-head latent attention (MLA)**, which caches
# one small latent vector per token instead of every head's key and value — and DeepSeek-V3 kept it unchanged.
#
# **In this notebook you will**
# 1. count the KV cache of MHA, GQA, MQA and MLA from a config, and reproduce V2's Table 1 and V3's 576 numbers per token per layer;
# 2. build MLA step by step in plain torch — the latent $c^{KV}$, why RoPE blocks the obvious trick, decoupled RoPE — and prove it equals `dslearn`'s;
# 3. derive **weight absorption**, the step that makes a small cache fast, and check it against the naive path;
# 4. measure decode speed and cache size (`bench/attention_decode.py`), and bits per byte against cache size for small trained models;
# 5. meet YaRN, the context extension V3 applies to MLA's rotary key;
# 6. test the overview article's "layer-wise adaptive cache" as a clearly labelled experiment — the V3 report does not describe it;
# 7. play with an explorer of cache memory, then solve four exercises.
#
# **Paper sections.** DeepSeek-V2 (arXiv 2405.04434) §2.1: 2.1.1 standard MHA, 2.1.2 low-rank key-value joint
# compression, 2.1.3 decoupled rotary position embedding, 2.1.4 comparison of KV cache (Table 1); §3.2.3 for
# inference efficiency. DeepSeek-V3 (arXiv 2412.19437) §2.1.1 (MLA, equations 1–11) and §4.3 (long-context
# extension with YaRN).
#
# **`dslearn` homes:** `dslearn.attention.mla` (MLA, both paths, latent cache), `dslearn.attention.cache_accounting`,
# `dslearn.attention.yarn`, `dslearn.attention.adaptive_cache` (the experiment), `dslearn.studies.decode` (the decode measurement).
#
# **Symbols** ($d_c$, $d_h^R$, $W^{UK}$, …) are collected, with their config names, in the [glossary](../docs/glossary.md).

# %%
import json
import math

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

from dslearn.attention import MultiHeadLatentAttention
from dslearn.attention.cache_accounting import (
    attention_variants,
    cache_bytes,
    cache_elements,
    cache_report,
    elements_per_token_per_layer,
    gqa_equivalent_groups,
)
from dslearn.config import ModelConfig, get_preset
from dslearn.layers import apply_rotary
from dslearn.model import CausalLM, with_config
from dslearn.paths import experiments_dir

# Small models: one thread is as fast as two here, and it keeps timings steady on busy shared cores.
torch.set_num_threads(1)
RESULTS = experiments_dir("attention")
print("shipped results:", sorted(p.name for p in RESULTS.glob("*.json")))

# %% [markdown]
# ## 1. What the cache costs
#
# Per token and per layer, each variant caches (V2 Table 1, with $n_h$ heads of $d_h$, $n_g$ KV groups):
#
# | variant | cached per token per layer | what is stored |
# |---|---|---|
# | MHA | $2\,n_h d_h$ | every head's key and value |
# | GQA | $2\,n_g d_h$ | one key and value per group of heads |
# | MQA | $2\,d_h$ | one key and value shared by all heads |
# | MLA | $d_c + d_h^R$ | one latent $c^{KV}$ and one shared rotary key $k^R$ |
#
# `dslearn.attention.cache_accounting` computes these from a `ModelConfig`. Applied to the released models:

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'model':>18} {'variant':>7} {'per token·layer':>16} {'per token':>10} {'KB/token (BF16)':>16} {'GiB at 128K':>12}")
for name in ("deepseek-llm-7b", "deepseek-llm-67b", "deepseek-v2", "deepseek-v3"):
    cfg = get_preset(name)
    r = cache_report(cfg, "bf16")
    print(f"{name:>18} {r.name:>7} {r.elements_per_token_per_layer:>16,} {r.elements_per_token:>10,} "
          f"{r.bytes_per_token / 1000:>16.2f} {cache_bytes(cfg, 128 * 1024, 'bf16') / 2**30:>12.1f}")

# %% [markdown]
# V3's line is the report's figure: $(512 + 64)\cdot 61 = 35{,}136$ elements, 70,272 bytes per token in BF16.
# V2's Table 1 states MLA's cache as $\tfrac92 d_h l$ — "equal to GQA with only 2.25 groups". With V2's
# $d_c = 4d_h$ and $d_h^R = d_h/2$:

# %%
# NBVAL_CHECK_OUTPUT
v2 = get_preset("deepseek-v2")
d_h = v2.qk_nope_head_dim
print("MLA per token·layer / d_h    =", elements_per_token_per_layer(v2) / d_h)
print("equivalent GQA groups        =", gqa_equivalent_groups(v2))
for name, cfg in attention_variants(v2, gqa_groups=8).items():
    print(f"{name}: {elements_per_token_per_layer(cfg):>6,} per token·layer  "
          f"({elements_per_token_per_layer(cfg) / elements_per_token_per_layer(v2):5.2f}× MLA)")

# %% [markdown]
# V2 also reports a **93.3% smaller KV cache than DeepSeek 67B** (§3.2.3). Counting elements alone does not
# give that: MLA's advantage over 67B's GQA (8 KV heads, 95 layers) is smaller. The same section says V2 was
# served with its KV cache quantised to about **6 bits per element**; with 67B at 16 bits, the report's figure
# comes out (the report does not show this arithmetic; this is our reading of it):

# %%
# NBVAL_CHECK_OUTPUT
e67, ev2 = cache_elements(get_preset("deepseek-llm-67b"), 1), cache_elements(v2, 1)
print(f"elements per token: 67B {e67:,}, V2 {ev2:,} -> {1 - ev2 / e67:.1%} smaller")
print(f"bits per token: 67B {e67 * 16:,} (BF16), V2 {ev2 * 6:,} (6-bit) -> {1 - ev2 * 6 / (e67 * 16):.1%} smaller")

# %% [markdown]
# ## 2. MHA → GQA → MQA: one module, three caches
#
# `dslearn`'s `MultiHeadAttention` covers all three through `num_key_value_heads`. Each variant builds its own
# cache type, and the accounting above must agree with the bytes those caches really hold:

# %%
# NBVAL_CHECK_OUTPUT
tiny = ModelConfig.from_preset("tiny")  # d_model 128, 4 layers, 4 heads of 32
variants = attention_variants(tiny, gqa_groups=2)
ids = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(0))
for name, cfg in variants.items():
    model = CausalLM(cfg).eval()
    state = model.new_decode_state(batch=2, max_len=100)
    with torch.no_grad():
        model(ids, state=state)
    measured = state.nbytes()
    print(f"{name}: cache type {type(state.caches[0]).__name__:>13}, {measured:>9,} bytes measured, "
          f"accounting says {cache_bytes(cfg, 100, torch.float32, batch=2):>9,}")

# %% [markdown]
# ## 3. Building MLA, one idea at a time
#
# The symbols, and the names `dslearn` (and Hugging Face's `DeepseekV3Attention`) give the weights:
#
# | paper | meaning | code |
# |---|---|---|
# | $W^{DQ}$, RMSNorm, $W^{UQ}$ / $W^{QR}$ | query down-projection to $c^Q$ ($d_c'$), norm, up-projection to $[q^C; q^R]$ per head | `q_a_proj`, `q_a_layernorm`, `q_b_proj` |
# | $W^{DKV}$ / $W^{KR}$ | down-projection to $c^{KV}$ ($d_c$) / the shared rotary key ($d_h^R$) | `kv_a_proj_with_mqa` rows $[:d_c]$ / $[d_c:]$ |
# | RMSNorm on $c^{KV}$ | | `kv_a_layernorm` |
# | $W^{UK}$ / $W^{UV}$ | up-projections of the latent to per-head keys / values | `kv_b_proj`, per head rows $[d_h$ nope $\mid d_h^v$ value$]$ |
# | $W^O$ | output | `o_proj` |
#
# We take the weights of a small `dslearn` MLA layer and rebuild its computation by hand.

# %%
from dslearn.diagrams.mla import latent_path

latent_path()  # where this section is going: the cached latent, the naive path and the absorbed one
plt.show()

# %%
cfg = ModelConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, attention_type="mla", q_lora_rank=24,
                  kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, rope_interleave=True,
                  max_position_embeddings=64)
n_h, d_h, d_R, d_c, d_v = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                           cfg.kv_lora_rank, cfg.v_head_dim)
mla = MultiHeadLatentAttention(cfg).eval()
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, p in mla.named_parameters():  # random weights, norm gains away from 1
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g) if "norm" in name else 0.2 * torch.randn(p.shape, generator=g))
W = {name: p.detach() for name, p in mla.named_parameters()}
W_DKV, W_KR = W["kv_a_proj_with_mqa.weight"].split([d_c, d_R])              # (d_c, d), (d_R, d)
W_UK, W_UV = W["kv_b_proj.weight"].view(n_h, d_h + d_v, d_c).split([d_h, d_v], dim=1)  # (n_h, d_h, d_c), (n_h, d_v, d_c)

def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

T = 12
h = torch.randn(1, T, cfg.hidden_size, generator=g)                        # the layer's (normed) input
print({k: tuple(v.shape) for k, v in W.items()})

# %% [markdown]
# ### 3.1 The latent (V2 eq. 9–11)
#
# Keys and values are not projected from $h_t$ directly but through one shared bottleneck:
# $c_t^{KV} = W^{DKV} h_t$ (then RMSNorm), $k_t^C = W^{UK} c_t^{KV}$, $v_t^C = W^{UV} c_t^{KV}$. Only
# $c_t^{KV}$ needs caching: every head's key and value can be rebuilt from it.

# %%
c_kv = rms_norm(h @ W_DKV.T, W["kv_a_layernorm.weight"])                    # (1, T, d_c) ← cached
k_C = torch.einsum("hnc,btc->bhtn", W_UK, c_kv)                             # (1, n_h, T, d_h)  rebuilt
v_C = torch.einsum("hvc,btc->bhtv", W_UV, c_kv)                             # (1, n_h, T, d_v)  rebuilt
print("cached per token:", c_kv.shape[-1], "numbers;  rebuilt per token:", n_h * (d_h + d_v), "numbers")

# %% [markdown]
# ### 3.2 Why RoPE blocks the obvious trick
#
# Rebuilding every head's keys from every cached latent at every decode step is expensive. The V2 paper's way out
# is **absorption**: a score $q^C\cdot k^C = q^C\cdot(W^{UK}c) = (W^{UK\top}q^C)\cdot c$, so fold $W^{UK}$ into
# the query once and attend to the latents directly. Without positions this is exact:

# %%
# NBVAL_CHECK_OUTPUT
q_C = torch.randn(1, n_h, T, d_h, generator=g)
scores_naive = q_C @ k_C.transpose(-1, -2)                                  # (1, n_h, T, T)
q_lat = torch.einsum("bhtn,hnc->bhtc", q_C, W_UK)                           # (1, n_h, T, d_c): W^UKᵀ q
scores_absorbed = q_lat @ c_kv[:, None].transpose(-1, -2)                   # no keys built
print("absorbed scores == naive scores:", torch.allclose(scores_absorbed, scores_naive, atol=1e-4))


# %% [markdown]
# Now apply RoPE to the keys and queries the usual way. RoPE multiplies the key at position $j$ by a rotation
# $R_j$, so the score becomes $q_t^\top R_t^\top R_j W^{UK} c_j = q_t^\top R_{j-t}\, W^{UK} c_j$: the matrix
# between query and latent, $R_{j-t} W^{UK}$, **changes with the distance** $j - t$. There is no single matrix
# to fold into the query, so the absorbed query from above gives wrong scores:

# %%
# NBVAL_CHECK_OUTPUT
def rotate(x, positions):                              # RoPE on the last dim, interleaved pairs
    inv = 10000.0 ** (-torch.arange(0, x.shape[-1], 2) / x.shape[-1])
    ang = positions[None, :, None].float() * inv      # (1, T, d/2)
    return apply_rotary(x, ang.cos(), ang.sin(), interleaved=True)

pos = torch.arange(T)
scores_rope = rotate(q_C, pos) @ rotate(k_C, pos).transpose(-1, -2)        # what RoPE attention needs
q_lat_rope = torch.einsum("bhtn,hnc->bhtc", rotate(q_C, pos), W_UK)         # best try: rotate q, then absorb
print("absorption still exact with RoPE on k^C:",
      torch.allclose(q_lat_rope @ c_kv[:, None].transpose(-1, -2), scores_rope, atol=1e-4))
# the matrix between q and c for one head, at two different distances j − t:
M = lambda dist: rotate(W_UK[0].T[None, None], torch.tensor([dist]))[0, 0]   # (d_c, d_h): (R_dist W^UK)ᵀ
print("R_{j-t} W^UK the same at distances 0 and 3:", torch.allclose(M(0), M(3), atol=1e-4))

# %% [markdown]
# **Why interleaved pairs here, when chapter 00 rotated halves?** RoPE rotates coordinates in pairs, and there are
# two conventions for which coordinates pair up. Chapter 00 used *halves*, $(x_i, x_{i+d/2})$: LLaMA's and
# DeepSeek-LLM's layout (Hugging Face's `rotate_half`). MLA's rotary parts use *interleaved* pairs $(x_{2i}, x_{2i+1})$:
# DeepSeek's own V2/V3 inference code treats each pair as one complex number, the released V2/V3 weights were trained
# that way, and Hugging Face's DeepSeek-V3 config marks it with `rope_interleave=True`. The two are the same rotation
# up to a fixed permutation of a head's coordinates (checked below), so neither is better; but a checkpoint works only
# with the layout it was trained with, and we follow the released V2/V3 weights so that they load by renaming alone.

# %%
# NBVAL_CHECK_OUTPUT
x = torch.randn(1, 1, T, d_R, generator=torch.Generator().manual_seed(5))          # (B, H, T, d_R)
ang = torch.arange(T)[None, :, None].float() * 10000.0 ** (-torch.arange(0, d_R, 2) / d_R)  # (1, T, d_R/2)
perm = torch.cat([torch.arange(0, d_R, 2), torch.arange(1, d_R, 2)])              # (x0, x2, …, x1, x3, …)
interleaved = apply_rotary(x, ang.cos(), ang.sin(), interleaved=True)
halves = apply_rotary(x[..., perm], ang.cos(), ang.sin(), interleaved=False)
print("interleaved RoPE == halves RoPE on permuted coordinates:", torch.allclose(interleaved[..., perm], halves))


# %% [markdown]
# ### 3.3 Decoupled RoPE (V2 eq. 12–19)
#
# MLA's answer: keep the content part position-free, and carry positions in a **separate, small** part.
# Each head gets a rotary query $q_t^R = \mathrm{RoPE}(W^{QR} c_t^Q)$; all heads share **one** rotary key
# $k_t^R = \mathrm{RoPE}(W^{KR} h_t)$ of $d_h^R$ numbers, which is cached beside $c^{KV}$. Scores concatenate
# the two parts and scale by $1/\sqrt{d_h + d_h^R}$:
# $$\text{score}_{t,j} = \frac{[q_t^C; q_t^R]\cdot[k_j^C; k_j^R]}{\sqrt{d_h + d_h^R}}$$
# Queries are compressed too ($c^Q = W^{DQ}h$, $d_c'$ numbers, RMSNorm), which saves activation memory in
# training but nothing in the cache. Here is the whole layer, **naive** (rebuild K and V from the latents):

# %%
def mla_naive(h, W, positions):
    B, T, _ = h.shape
    # 1. queries: compressed, normed, expanded; per head [q^C | q^R]
    c_q = rms_norm(h @ W["q_a_proj.weight"].T, W["q_a_layernorm.weight"])              # (B, T, d_c')
    q = (c_q @ W["q_b_proj.weight"].T).view(B, T, n_h, d_h + d_R).transpose(1, 2)       # (B, n_h, T, d_h+d_R)
    q_C, q_R = q.split([d_h, d_R], dim=-1)
    # 2. what gets cached: the normed latent and ONE rotated key shared by all heads
    c_kv = rms_norm(h @ W_DKV.T, W["kv_a_layernorm.weight"])                             # (B, T, d_c)
    k_R = rotate((h @ W_KR.T)[:, None], positions)                                       # (B, 1, T, d_R)
    # 3. rebuild per-head keys and values from the latent
    k_C = torch.einsum("hnc,btc->bhtn", W_UK, c_kv)                                      # (B, n_h, T, d_h)
    v = torch.einsum("hvc,btc->bhtv", W_UV, c_kv)                                        # (B, n_h, T, d_v)
    k = torch.cat([k_C, k_R.expand(B, n_h, T, d_R)], dim=-1)                             # (B, n_h, T, d_h+d_R)
    q = torch.cat([q_C, rotate(q_R, positions)], dim=-1)
    # 4. causal softmax attention, scale 1/sqrt(d_h + d_R), then W^O
    scores = (q @ k.transpose(-1, -2)) / (d_h + d_R) ** 0.5                               # (B, n_h, T, T)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    o = scores.softmax(-1) @ v                                                           # (B, n_h, T, d_v)
    return o.transpose(1, 2).reshape(B, T, n_h * d_v) @ W["o_proj.weight"].T              # (B, T, d)


# %%
# NBVAL_CHECK_OUTPUT
inv = 10000.0 ** (-torch.arange(0, d_R, 2) / d_R)
ang = pos[None, :, None].float() * inv
rope_tables = (ang.cos(), ang.sin())                                         # what CausalLM passes each layer
with torch.no_grad():
    mla.path = "naive"
    ours_naive = mla(h, rope_tables)
torch.testing.assert_close(mla_naive(h, W, pos), ours_naive, atol=1e-5, rtol=1e-4)
print("hand-built naive MLA == dslearn's MLA (naive path): True")


# %% [markdown]
# ### 3.4 Absorption
#
# With positions out of the content part, absorption works again:
#
# * **into the query**: $q^C\cdot k_j^C = (W^{UK\top} q^C)\cdot c_j^{KV}$ — each head's query becomes a $d_c$-vector;
# * **into the output**: $\sum_j p_j v_j = \sum_j p_j W^{UV} c_j = W^{UV}\big(\sum_j p_j c_j\big)$ — attend over the
#   latents, apply $W^{UV}$ once afterwards (it could even be folded into $W^O$).
#
# Every head then attends over the same keys, $[c^{KV}; k^R]$ ($d_c + d_h^R$ numbers per token) — multi-query
# attention over the cache, with queries of size $d_c + d_h^R$. Nothing per head is ever built for earlier tokens.

# %%
def mla_absorbed(h, W, positions):
    B, T, _ = h.shape
    c_q = rms_norm(h @ W["q_a_proj.weight"].T, W["q_a_layernorm.weight"])
    q = (c_q @ W["q_b_proj.weight"].T).view(B, T, n_h, d_h + d_R).transpose(1, 2)
    q_C, q_R = q.split([d_h, d_R], dim=-1)
    latent = torch.cat([rms_norm(h @ W_DKV.T, W["kv_a_layernorm.weight"]),           # (B, T, d_c+d_R):
                        rotate((h @ W_KR.T)[:, None], positions)[:, 0]], dim=-1)      # the whole cache entry
    # 1. fold W^UK into the query
    q_lat = torch.einsum("bhtn,hnc->bhtc", q_C, W_UK)                                # (B, n_h, T, d_c)
    q_all = torch.cat([q_lat, rotate(q_R, positions)], dim=-1)                       # (B, n_h, T, d_c+d_R)
    # 2. every head attends over the same cached latents
    scores = (q_all @ latent[:, None].transpose(-1, -2)) / (d_h + d_R) ** 0.5        # (B, n_h, T, T)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    o_lat = scores.softmax(-1) @ latent[:, None, :, :d_c]                            # (B, n_h, T, d_c)
    # 3. fold W^UV into the output
    o = torch.einsum("bhtc,hvc->bthv", o_lat, W_UV).reshape(B, T, n_h * d_v)          # (B, T, n_h·d_v)
    return o @ W["o_proj.weight"].T


# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    mla.path = "absorbed"
    ours_absorbed = mla(h, rope_tables)
    mla.path = "naive"
torch.testing.assert_close(mla_absorbed(h, W, pos), mla_naive(h, W, pos), atol=1e-5, rtol=1e-4)
torch.testing.assert_close(ours_absorbed, ours_naive, atol=1e-5, rtol=1e-4)
print("hand-built absorbed == hand-built naive == dslearn absorbed == dslearn naive (fp32, atol 1e-5): True")
print(f"largest difference absorbed vs naive: {(ours_absorbed - ours_naive).abs().max():.0e}")

# %% [markdown]
# ### What absorption trades: arithmetic for bytes
#
# Absorption is not free. Per head and per cached token, the absorbed path scores against a $(d_c + d_h^R)$-wide key and
# sums $d_c$-wide latents; the expanded path (keys and values rebuilt per head) scores against $d_h + d_h^R$ numbers and
# sums $d_h^v$. With V2/V3's dimensions:

# %%
# NBVAL_CHECK_OUTPUT
v3 = get_preset("deepseek-v3")
n_h3, d_c3, d_R3, d_h3, d_v3 = (v3.num_attention_heads, v3.kv_lora_rank, v3.qk_rope_head_dim, v3.qk_nope_head_dim,
                                v3.v_head_dim)
absorbed, expanded = (d_c3 + d_R3, d_c3), (d_h3 + d_R3, d_v3)    # (score, weighted sum) multiply-adds per head
print(f"absorbed: {absorbed[0]} + {absorbed[1]} = {sum(absorbed)} multiply-adds per head per cached token")
print(f"expanded: {expanded[0]} + {expanded[1]} = {sum(expanded)} multiply-adds per head per cached token "
      f"-> absorption does {sum(absorbed) / sum(expanded):.1f}x the arithmetic")
read_abs, read_exp = d_c3 + d_R3, n_h3 * (d_h3 + d_R3 + d_v3)
print(f"numbers per cached token: absorbed reads {read_abs} (one latent, shared by all {n_h3} heads), "
      f"expanded K and V would hold {read_exp:,} ({read_exp / read_abs:.0f}x more)")
print(f"rebuilding one token's expanded K and V from its latent: {n_h3 * (d_h3 + d_v3) * d_c3:,} multiply-adds")
peak, bandwidth = 989e12, 3.35e12   # assumed H800: dense BF16 FLOP/s, HBM bytes/s
print(f"an H800 (assumed {peak / 1e12:.0f} TFLOP/s, {bandwidth / 1e12:.2f} TB/s) does {peak / bandwidth:.0f} FLOPs "
      "in the time it reads one byte")

# %% [markdown]
# So absorption spends about three times the arithmetic to read a cache that is tens of times smaller. Which side
# wins depends on what limits the step:
#
# * **Decode** (one new query per sequence per step) reads the whole cache to do very little arithmetic on it: it is
#   bound by memory bandwidth, and a GPU has hundreds of FLOPs to spare per byte read (printed above). Absorb.
# * **Prefill** (a whole prompt at once) has many queries per key, so the arithmetic dominates and rebuilding K and V
#   once per token is cheap next to it. Expand, and run ordinary multi-head attention.
#
# That is why serving engines for DeepSeek models (vLLM's and SGLang's MLA backends, for instance) expand for prefill
# and absorb for decode. `dslearn` offers both paths through `mla_impl`; section 5 measures them.

# %% [markdown]
# The two paths agree to rounding, not bit for bit: they add the same products in a different order. The tests
# (`tests/test_attention_mla.py`) hold them together in prefill and in step-by-step decode with a cache, and
# `tests/test_attention_hf_reference.py` checks both against Hugging Face's `DeepseekV3` with the same weights.
#
# ### 3.5 What the cache really holds
#
# The latent cache is one tensor per layer, `(batch, positions, d_c + d_h^R)`. For a layer with V3's exact
# dimensions (built on PyTorch's `meta` device, so no 70M-parameter weights are allocated), its BF16 cache
# tensor for one position of one sequence holds:

# %%
# NBVAL_CHECK_OUTPUT
v3 = get_preset("deepseek-v3")
with torch.device("meta"):
    v3_layer = MultiHeadLatentAttention(v3)
cache = v3_layer.new_cache(batch=1, max_len=4, dtype=torch.bfloat16, device="cpu")
per_layer = cache.nbytes(1)
print("cache tensor shape:", tuple(cache.kv.shape), "-> elements per token per layer:", cache.kv.shape[-1])
print(f"bytes per token: {per_layer} per layer × {v3.num_hidden_layers} layers = {per_layer * v3.num_hidden_layers:,}")

# %% [markdown]
# ## 4. MLA inside the model
#
# `ModelConfig(attention_type="mla", ...)` swaps MLA into the baseline decoder, and `mla_impl="naive"` or
# `"absorbed"` chooses its path — like every implementation choice, in the config. `with_config(model,
# mla_impl="absorbed")` rebuilds a model with the other path and the same weights (both paths cache the same
# latents, so a cache filled on one path would be valid on the other). Cached decoding must give what an uncached forward gives, and sampling with and
# without the cache must give the same tokens:

# %%
# NBVAL_CHECK_OUTPUT
from dslearn.generate import generate

mla_cfg = ModelConfig.from_preset("tiny", attention_type="mla", kv_lora_rank=64, qk_nope_head_dim=32,
                                  qk_rope_head_dim=16, v_head_dim=32, rope_interleave=True)
model = CausalLM(mla_cfg, seed=0).eval()
ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    full = model(ids).logits
    for path in ("naive", "absorbed"):
        m = with_config(model, mla_impl=path)  # the same weights, the path the config names
        state = m.new_decode_state(2, 48)
        steps = [m(ids[:, :16], state=state).logits] + [m(ids[:, t:t + 1], state=state).logits
                                                         for t in range(16, 48)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=1e-4)
        a = generate(m, [[1, 2, 3], [7]], 10, generator=torch.Generator().manual_seed(0))
        b = generate(m, [[1, 2, 3], [7]], 10, generator=torch.Generator().manual_seed(0), use_cache=False)
        print(f"{path:>8}: cached decode == uncached forward: True; cached sampling == uncached:",
              [x.tokens for x in a] == [x.tokens for x in b])

# %% [markdown]
# ## 5. Speed: why absorption matters
#
# `bench/attention_decode.py` times single-token decoding of five variants of one model (d_model 256, 2 layers,
# **32 heads** of 16, the same feed-forward) at contexts 256…4096, all in one run. MLA uses V2's ratios
# ($d_c = 4d_h$, $d_h^R = d_h/2$). The shipped results:

# %%
bench = json.loads((RESULTS / "bench_decode.json").read_text())
pts = bench["points"]
names = list(dict.fromkeys(p["variant"] for p in pts))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for i, name in enumerate(names):
    rows = [p for p in pts if p["variant"] == name]
    ctx = [p["context"] for p in rows]
    ax1.plot(ctx, [p["cache_bytes"] / 2**20 for p in rows], "o-", color=f"C{i}", label=name)
    ax2.plot(ctx, [p["tokens_per_s"] for p in rows], "o-", color=f"C{i}", label=name)
ax1.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="KV cache (MiB, fp32, 2 layers)",
        title="Cache size vs context (measured from the caches)")
ax2.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="decode throughput (tokens/s, batch 1)",
        title=f"Decode speed, {bench['threads']} CPU thread")
for ax in (ax1, ax2):
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xticks(sorted({p["context"] for p in pts}), [str(c) for c in sorted({p["context"] for p in pts})])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
print(f"{'context':>8} {'absorbed/naive speed':>21} {'absorbed/MHA speed':>19} {'MHA/MLA cache':>14}")
for r in bench["ratios"]:
    print(f"{r['context']:>8} {r['absorbed_over_naive_speed']:>21.2f} {r['absorbed_over_mha_speed']:>19.2f} "
          f"{r['mha_over_mla_cache']:>14.2f}")

# %% [markdown]
# Both MLA paths share one cache, so their lines coincide on the left. The naive path pays for rebuilding $n_h$ keys and values from every cached latent at every step, so its cost
# grows with context at a rate set by $d_c\cdot n_h(d_h+d_h^v)$; the absorbed path only reads the latents. The
# cache ratio against MHA is $2 n_h d_h / (d_c + d_h^R)$, independent of context. A smaller live re-run (timings vary
# with the machine and its load):

# %%
from dslearn.studies.decode import measure_decode

live_base = ModelConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=32,
                        head_dim=16, max_position_embeddings=1024 + 16)
live_variants = attention_variants(live_base, gqa_groups=4)
live = {}
for name, key, path in tqdm([("MHA", "MHA", None), ("MLA-naive", "MLA", "naive"), ("MLA-absorbed", "MLA", "absorbed")],
                            desc="bench"):
    live[name] = measure_decode(CausalLM(live_variants[key]), name, [256, 1024], steps=8, path=path)
for i, c in enumerate([256, 1024]):
    n, a, m = live["MLA-naive"][i], live["MLA-absorbed"][i], live["MHA"][i]
    print(f"context {c:>5}: absorbed/naive {a.tokens_per_s / n.tokens_per_s:5.2f}×, absorbed/MHA "
          f"{a.tokens_per_s / m.tokens_per_s:5.2f}×, MHA/MLA cache {m.cache_bytes / a.cache_bytes:5.2f}×")

# %% [markdown]
# ### 5.1 Throughput at a fixed cache memory: where V2's 5.76× comes from
#
# At batch 1, MLA's small cache buys little: the step reads every weight whatever the cache. V2 claims
# **5.76× the maximum generation throughput of DeepSeek 67B**, and that is a claim about *serving*: a server
# holds the caches of all running sequences in a fixed memory, so a cache 15× smaller lets it run a batch 15× larger,
# and each generated token reads fewer cache bytes. First the arithmetic at full scale, from the presets (V2 deploys
# its cache at about 6 bits per element, §3.2.3):

# %%
# NBVAL_CHECK_OUTPUT
from dslearn.studies.decode import attention_cost_per_cached_token, measure_fixed_memory, v2_throughput_accounting

acc = v2_throughput_accounting()
print(f"cache per token, 67B (GQA, BF16):       {acc['bytes_per_token_67b_bf16']:>9,} bytes")
print(f"cache per token, V2 (MLA, BF16):        {acc['bytes_per_token_v2_bf16']:>9,} bytes "
      f"({acc['cache_ratio_bf16']:.2f}x less)")
print(f"cache per token, V2 (MLA, ~6-bit):      {acc['bytes_per_token_v2_quantised']:>9,.0f} bytes "
      f"({acc['cache_ratio_deployed']:.1f}x less: -{100 * acc['cache_reduction_deployed']:.1f}%)")
print(f"batch that fits in the same memory:     {acc['max_batch_ratio_same_memory']:.1f}x")
print(f"activated parameters per token, 67B/V2: {acc['compute_ratio']:.2f}x")
print(f"reported max throughput ratio:          {acc['reported_throughput_ratio']}x")

# %% [markdown]
# The reported 5.76× sits between the two ratios above: a 15× larger batch would give 15× the tokens per
# step if each step stayed as cheap, but a larger batch means more arithmetic per step, and V2 still does a third of
# 67B's arithmetic per token. The batch buys throughput only while a step is bound by *reading memory*.
#
# `bench/mla_throughput.py` measures this on our bench model (32 heads of 16, 2 layers; MLA with $d_c = 64$,
# $d_h^R = 8$): for a fixed cache budget and a long context, each variant runs at the largest batch whose cache
# fits. The shipped run (256 MiB, 2,048 tokens), and per variant what one cached position costs a generated token:
# the bytes it reads and the FLOPs it does on them:

# %%
fm = json.loads((RESULTS / "mla_throughput.json").read_text())
rows = fm["points"]
names = [r["variant"] for r in rows]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for ax, key, label in zip(axes, ["batch", "cache_read_per_token_bytes", "tokens_per_s"],
                          ["largest batch in the budget", "cache bytes read per generated token (KiB)",
                           "decode throughput (tokens/s)"]):
    vals = [r[key] / (1024 if "bytes" in key else 1) for r in rows]
    ax.bar(names, vals, color=[f"C{i}" for i in range(len(rows))])
    ax.set(ylabel=label, yscale="log" if "bytes" in key or key == "batch" else "linear")
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(alpha=0.3, axis="y")
fig.suptitle(f"Fixed KV-cache memory {fm['budget_mib']:g} MiB, context {fm['context']}, "
             f"{fm['threads']} CPU thread (shared machine)")
plt.tight_layout()
plt.show()


# %%
m = fm["machine"]
print(f"this core when measured: {m['read_bytes_per_s'] / 1e9:.1f} GB/s read, {m['bmm_flops_per_s'] / 1e9:.1f} GFLOP/s "
      f"-> compute-bound above {m['bmm_flops_per_s'] / m['read_bytes_per_s']:.1f} FLOPs per byte")
print(f"{'variant':>13} {'batch':>6} {'tok/s':>7} {'x MHA':>6} {'bytes/pos':>10} {'FLOPs/pos':>10} {'FLOPs/byte':>11} "
      f"{'bound':>8}")
for r in rows:
    print(f"{r['variant']:>13} {r['batch']:>6} {r['tokens_per_s']:>7.0f} {r['speed_over_mha']:>6.2f} "
          f"{r['attention_bytes_per_cached_token']:>10} {r['attention_flops_per_cached_token']:>10} "
          f"{r['flops_per_byte']:>11.1f} {r['bound']:>8}")

# %% [markdown]
# Absorption moves MLA's attention into the $d_c$-wide latent space *for every head*: per cached position it
# reads only $d_c + d_h^R$ numbers but does $2n_h(d_c + d_h^R) + 2n_h d_c$ FLOPs on them — about $n_h$ FLOPs per
# byte, against MHA's half a FLOP per byte. A GPU does hundreds of FLOPs in the time it reads a byte, so there MLA's
# step stays memory-bound and the larger batch turns into throughput, as in V2's serving numbers. One CPU core does
# only a few (printed above), so here absorbed MLA is compute-bound: its larger batch costs arithmetic the core has
# little of, and the speed ratio to MHA falls well short of the batch ratio — the `bound` column says which variants
# pay for arithmetic and which for reading. At a shorter context and a smaller budget, where MHA's batch is tiny and
# its step mostly reads weights, the ratio changes; a smaller live run (16 MiB, 512 tokens; timings vary with the
# machine and its load):

# %%
fm_cfg = ModelConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=32,
                     head_dim=16, max_position_embeddings=512 + 16)
fm_variants = attention_variants(fm_cfg, gqa_groups=8)
fm_models = {"MHA": CausalLM(fm_variants["MHA"]), "MQA": CausalLM(fm_variants["MQA"]),
             "MLA-absorbed": CausalLM(fm_variants["MLA"].replace(mla_impl="absorbed"))}
live_fm = measure_fixed_memory(fm_models, context=512, budget_bytes=16 * 2**20, steps=3)
for p in live_fm:
    cost = attention_cost_per_cached_token(fm_models[p.variant].config)
    print(f"{p.variant:>13}: batch {p.batch:>4}, {p.tokens_per_s:6.0f} tok/s "
          f"({p.tokens_per_s / live_fm[0].tokens_per_s:4.2f}x MHA), {cost['flops_per_byte']:4.1f} FLOPs per cache byte")

# %% [markdown]
# ## 6. Quality vs cache: what do you give up?
#
# `experiments/attention/train_variants.py` trains the `tiny` model (d_model 128, 4 layers, 4 heads of 32) on the
# standard-library corpus with each attention variant — same batches, steps, schedule and seed — and reports
# validation bits per byte with the cache each model's decode state really holds. MHA runs with two seeds; their
# difference is a single sample of the seed-to-seed noise, not a measured spread (the other variants ran once, with seed 0). With only 4 heads, MLA cannot save as much as at DeepSeek's 128 heads: the cache
# ratio against MHA is $2n_hd_h/(d_c+d_h^R)$.

# %%
# NBVAL_CHECK_OUTPUT
tv = json.loads((RESULTS / "train_variants.json").read_text())
runs = [r for r in tv["runs"] if not r["train_window"]]
print(f"{runs[0]['tokens']:,} training tokens per run; corpus sha256 {tv['corpus_sha256'][:12]}, Python {tv['python']}")
print(f"{'variant':>12} {'cache/token·layer':>18} {'params (non-emb.)':>18} {'val bits/byte':>14}")
for r in runs:
    print(f"{r['name']:>12} {r['elements_per_token_per_layer']:>18} {r['params_non_embedding']:>18,} {r['val_bpb']:>14.3f}")
mha = [r["val_bpb"] for r in runs if r["name"].startswith("MHA")]
print(f"difference between the two MHA seeds: {abs(mha[0] - mha[1]):.3f} bits/byte (2 seeds: one sample of the noise)")

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
for i, r in enumerate(runs):
    ax.scatter(r["elements_per_token_per_layer"], r["val_bpb"], s=60, color=f"C{i}", label=r["name"],
               marker="s" if r["config"]["attention_type"] == "mla" else "o")
ax.set(xscale="log", xlabel="KV cache per token per layer (elements)", ylabel="validation bits per byte",
       title=f"Bits per byte vs cache size, {runs[0]['tokens'] / 1e6:.2f}M training bytes each")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Read the figure with the MHA seed difference in mind: a gap smaller than it is not evidence. Each variant's
# gap to the mean of the two MHA runs, in units of that one seed-to-seed difference (a rough yardstick: with two
# seeds we cannot say how wide the noise really is):

# %%
# NBVAL_CHECK_OUTPUT
mha_mean, spread = sum(mha) / 2, abs(mha[0] - mha[1])
for r in runs:
    gap = r["val_bpb"] - mha_mean
    print(f"{r['name']:>12}: {gap:+.3f} bits/byte vs MHA ({gap / spread:+5.1f}× the MHA seed difference), "
          f"cache {256 / r['elements_per_token_per_layer']:.1f}× smaller than MHA")

# %% [markdown]
# Here MLA comes out *behind* MHA, GQA and MQA, by about ten times the one seed difference we measured — the opposite of V2's ablations, where MLA
# matches or beats MHA on models with billions of parameters. This tiny setup does not reproduce that claim.
# Plausible reasons, none tested here: with only 4 heads MLA's cache is just a few times smaller than MHA's, so its
# bottleneck costs capacity without buying much; positions reach the scores only through 16 shared rotary
# dimensions; and one learning rate, tuned for none of the variants, serves all of them. What the figure shows
# reliably is the *cache* axis: those savings are exact and measured.
#
# A reduced live re-run (four variants, a few seconds each — too short to rank them, but it runs the same code):

# %%
from dslearn.data import TokenStream, load_corpus
from dslearn.train import TrainConfig, Trainer

corpus = load_corpus()
train, val = TokenStream(corpus.train, "train"), TokenStream(corpus.val, "val")
live_cfgs = {"MHA": tiny, "GQA-2": variants["GQA"], "MQA": variants["MQA"], "MLA d_c=64": mla_cfg}
live_models, live_bpb = {}, {}
for name, c in live_cfgs.items():
    live_models[name] = CausalLM(c, seed=0)
    tc = TrainConfig(steps=40, batch_size=8, seq_len=128, lr=2e-3, warmup_steps=10, eval_every=0, eval_windows=32,
                     progress=False)
    live_bpb[name] = Trainer(live_models[name], tc, train, val).fit().final_val_bpb
    print(f"{name:>11}: {elements_per_token_per_layer(c):>4} cached per token·layer, val {live_bpb[name]:.3f} bits/byte")

# %% [markdown]
# ## 7. YaRN: stretching MLA's rotary key (V3 §4.3)
#
# V3 pre-trains with a 4K context, then extends to 32K and 128K in two short phases using **YaRN** on the decoupled
# rotary key — the only place MLA uses RoPE. YaRN keeps the fast-turning rotary pairs (they have already seen every
# distance), divides the frequency of the slow ones by the scale factor $s$ (they have never completed a turn within
# 4K), ramps between the two, and sharpens the softmax by $\mathrm{mscale}^2$ with $\mathrm{mscale} = 0.1\ln s + 1$.
# V3 uses $s = 40$, $\beta_{fast} = 32$, $\beta_{slow} = 1$, $\mathrm{mscale} = \mathrm{mscale\_all\_dim} = 1$
# (its released config). `dslearn.attention.yarn` implements it; the tests check it against Hugging Face.

# %%
# NBVAL_CHECK_OUTPUT
from dslearn.attention.yarn import yarn_get_mscale, yarn_inv_freq

d_rope, theta, s, L = v3.qk_rope_head_dim, v3.rope_theta, 40.0, 4096
plain = theta ** (-torch.arange(0, d_rope, 2) / d_rope)
yarn = yarn_inv_freq(d_rope, theta, s, L)
kept = int(torch.isclose(yarn, plain).sum())
divided = int(torch.isclose(yarn, plain / s).sum())
print(f"of {d_rope // 2} rotary pairs: {kept} kept, {divided} divided by s={s:g}, {d_rope // 2 - kept - divided} on the ramp")
print(f"softmax scale multiplier mscale² = {yarn_get_mscale(s, 1.0) ** 2:.3f}")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(2 * math.pi / plain, "o-", label="RoPE")
ax.plot(2 * math.pi / yarn, "s-", label=f"YaRN, s = {s:g}")
ax.axhline(L, color="gray", ls="--", label=f"original context {L}")
ax.set(yscale="log", xlabel="rotary pair i", ylabel="wavelength (tokens)", title="V3's rotary key: RoPE vs YaRN")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 8. EXPERIMENT: the article's "layer-wise adaptive cache"
#
# The overview article says V3 "prunes older KV entries at deeper layers" to keep 128K contexts in check.
# **The V3 technical report describes no such mechanism**: V3 caches the full latent at every layer and reaches
# 128K with YaRN. So this section is *our experiment*, not DeepSeek's method: what would such pruning save, and
# what would it cost?
#
# The rule we test (`dslearn.attention.adaptive_cache`): layers $l \ge$ `first_layer` keep only the last `window`
# tokens of their latent cache; earlier layers keep everything. The same rule is an attention mask in training,
# so a model can be evaluated with it or trained with it, and its evicting cache decodes exactly what the masked
# forward computes (tested). First, what it would save at V3's scale — pruning the second half of the layers
# to a 4K window at 128K context:

# %%
# NBVAL_CHECK_OUTPUT
n, first, w = 128 * 1024, v3.num_hidden_layers // 2, 4096
windows = {layer: w for layer in range(first, v3.num_hidden_layers)}
full_b, pruned_b = cache_bytes(v3, n, "bf16"), cache_bytes(v3, n, "bf16", layer_windows=windows)
print(f"V3 at {n:,} tokens, BF16: full {full_b / 2**30:.2f} GiB, layers {first}-60 pruned to {w} tokens: "
      f"{pruned_b / 2**30:.2f} GiB ({1 - pruned_b / full_b:.0%} saved)")

# %% [markdown]
# And what it costs, on our small trained MLA model (layers 2–3 of 4 pruned), from the shipped experiment: evaluated
# with pruning it was never trained with, and one model trained with pruning from the start. The cache column
# is measured from real decode states at a 256-token context.

# %%
# NBVAL_CHECK_OUTPUT
base_run = next(r for r in tv["runs"] if "adaptive_eval" in r)
trained_pruned = next(r for r in tv["runs"] if r["train_window"])
print(f"{'setting':>46} {'cache @256 (bytes, fp32)':>25} {'val bits/byte':>14}")
print(f"{'full cache (' + base_run['name'] + ')':>46} {base_run['cache_bytes_fp32_at_256']:>25,} {base_run['val_bpb']:>14.3f}")
for a in base_run["adaptive_eval"]:
    print(f"{'pruned at inference, window ' + str(a['window']):>46} {a['cache_bytes_fp32_at_256']:>25,} {a['val_bpb']:>14.3f}")
print(f"{'trained with window ' + str(trained_pruned['train_window']):>46} "
      f"{trained_pruned['cache_bytes_fp32_at_256']:>25,} {trained_pruned['val_bpb']:>14.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
xs = [a["cache_bytes_fp32_at_256"] / 1024 for a in base_run["adaptive_eval"]]
ax.plot(xs, [a["val_bpb"] for a in base_run["adaptive_eval"]], "o-", label="pruned at inference (layers 2-3)")
for a, x in zip(base_run["adaptive_eval"], xs):
    ax.annotate(f"w={a['window']}", (x, a["val_bpb"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.scatter([base_run["cache_bytes_fp32_at_256"] / 1024], [base_run["val_bpb"]], marker="*", s=150, color="C2",
           label="full cache", zorder=3)
ax.scatter([trained_pruned["cache_bytes_fp32_at_256"] / 1024], [trained_pruned["val_bpb"]], marker="s", s=70,
           color="C3", label=f"trained with window {trained_pruned['train_window']}", zorder=3)
ax.set(xlabel="KV cache at 256 tokens (KiB, fp32, batch 1)", ylabel="validation bits per byte",
       title="EXPERIMENT (not in the V3 report): layer-wise pruned cache")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
full_cache = base_run["cache_bytes_fp32_at_256"]
for a in base_run["adaptive_eval"]:
    print(f"window {a['window']:>3}: {a['val_bpb'] - base_run['val_bpb']:+.4f} bits/byte, "
          f"{1 - a['cache_bytes_fp32_at_256'] / full_cache:.0%} less cache at 256 tokens")
print(f"trained with window {trained_pruned['train_window']}: {trained_pruned['val_bpb'] - base_run['val_bpb']:+.4f} "
      f"bits/byte vs the full-cache MLA, {1 - trained_pruned['cache_bytes_fp32_at_256'] / full_cache:.0%} less cache")
closed = (base_run["val_bpb"] - trained_pruned["val_bpb"]) / (base_run["val_bpb"] - mha_mean)
print(f"share of the full-cache MLA's gap to MHA that training with the window closes: {closed:.0%}")

# %% [markdown]
# Pruning a model at inference that never saw pruning costs more the smaller the window; at 256 tokens the larger
# windows barely prune anything, which is also why their saving is small here — at V3's 128K the saving would be the
# large one computed above. In this one run (one seed), the model *trained* with pruning ended better than the full-cache MLA and closed much
# of its gap to MHA; a second seed could move it by about as much as the MHA seeds differed (section 6). If it
# holds, at this scale and budget a forced locality bias would help a tiny MLA model learn faster — a hint about
# section 6's result (positions reach MLA's scores through only a few shared rotary dimensions), not a test of it. Neither result says anything about what pruning
# would do to a 671B model at 128K tokens — and the V3 report gives no evidence that DeepSeek does it.
#
# Live, on the (barely trained) MLA model from section 6: the evicting cache holds at most `window` tokens in the
# pruned layers — measured from its tensors — next to the loss with each window:

# %%
from dslearn.attention.adaptive_cache import apply_adaptive_cache

live_mla = live_models["MLA d_c=64"].eval()
probe = torch.tensor(list(corpus.val[:200]), dtype=torch.long)[None]
for window in (None, 64, 16):
    apply_adaptive_cache(live_mla, first_layer=2, window=window)
    state = live_mla.new_decode_state(1, 200)
    with torch.no_grad():
        loss = live_mla(probe[:, :-1], probe[:, 1:]).loss.item()
        live_mla(probe, state=state)
    print(f"window {str(window):>4}: cache {state.nbytes():>7,} bytes, loss on 200 validation bytes {loss / math.log(2):.3f} bits/byte")
_ = apply_adaptive_cache(live_mla, first_layer=0, window=None)

# %% [markdown]
# ## 9. Explorer: cache memory
#
# Move the sliders (heads, head dim, $d_c$, $d_h^R$, layers, context, dtype) or pick a preset; the chart shows the KV
# cache of one sequence for MHA, GQA (8 groups), MQA and MLA with those dimensions. Below it, a static version of the
# same chart for V3's dimensions, so the notebook reads well where widgets do not run.

# %%
PRESETS = {"DeepSeek-V3": dict(n_h=128, d_h=128, d_c=512, d_R=64, layers=61),
           "DeepSeek-V2": dict(n_h=128, d_h=128, d_c=512, d_R=64, layers=60),
           "tiny (this course)": dict(n_h=4, d_h=32, d_c=64, d_R=16, layers=4)}

def explorer_configs(n_h, d_h, d_c, d_R, layers):
    dense = ModelConfig(num_attention_heads=n_h, head_dim=d_h, num_hidden_layers=layers, hidden_size=n_h * d_h)
    groups = 8 if n_h % 8 == 0 else 1
    mla = dense.replace(attention_type="mla", kv_lora_rank=d_c, qk_rope_head_dim=d_R, qk_nope_head_dim=d_h,
                        v_head_dim=d_h)
    return {"MHA": dense, f"GQA-{groups}": dense.replace(num_key_value_heads=groups),
            "MQA": dense.replace(num_key_value_heads=1), "MLA": mla}

def draw_cache(n_h, d_h, d_c, d_R, layers, context, dtype, ax=None):
    ax = ax or plt.subplots(figsize=(8, 3.8))[1]
    ctx = [2 ** k for k in range(8, 18) if 2 ** k <= context] + [context]
    for i, (name, c) in enumerate(explorer_configs(n_h, d_h, d_c, d_R, layers).items()):
        gib = [cache_bytes(c, n, dtype) / 2**30 for n in ctx]
        ax.plot(ctx, gib, "o-", ms=3, color=f"C{i}",
                label=f"{name}: {elements_per_token_per_layer(c):,}/token·layer, {gib[-1]:.3g} GiB at {context:,}")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel=f"KV cache of one sequence (GiB, {dtype})",
           title=f"n_h={n_h}, d_h={d_h}, d_c={d_c}, d_h^R={d_R}, {layers} layers")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax



# %%
import ipywidgets as widgets

sliders = dict(n_h=widgets.IntSlider(128, 1, 256, description="heads"),
               d_h=widgets.IntSlider(128, 8, 256, 8, description="head dim"),
               d_c=widgets.IntSlider(512, 16, 2048, 16, description="d_c"),
               d_R=widgets.IntSlider(64, 2, 256, 2, description="d_h^R"),
               layers=widgets.IntSlider(61, 1, 128, description="layers"),
               context=widgets.IntSlider(131072, 256, 262144, 256, description="context"),
               dtype=widgets.Dropdown(options=["bf16", "fp32", "fp8"], value="bf16", description="dtype"))
preset = widgets.Dropdown(options=list(PRESETS), value="DeepSeek-V3", description="preset")

def apply_preset(change):
    for k, v in PRESETS[change["new"]].items():
        sliders[k].value = v

preset.observe(apply_preset, names="value")
out = widgets.interactive_output(lambda **kw: (draw_cache(**kw), plt.show()), sliders)
display(widgets.VBox([preset, widgets.HBox([widgets.VBox(list(sliders.values())[:4]),
                                            widgets.VBox(list(sliders.values())[4:])]), out]))

# %%
# Static fallback: the same chart for V3's dimensions at 128K context.
draw_cache(**PRESETS["DeepSeek-V3"], context=131072, dtype="bf16")
plt.show()

# %% [markdown]
# ## 10. The article vs the reports
#
# * The article credits V3 with **"joint KV storage"** and a **"decoupled shared key"** as refinements of V2's MLA.
#   Both are V2's MLA itself: keys and values are jointly compressed into one $c^{KV}$ (V2 §2.1.2), and the
#   shared rotary key $k^R$ is V2 §2.1.3. V3 §2.1.1 restates MLA unchanged (same $d_c = 512$, $d_h^R = 64$).
# * Its **"layer-wise adaptive cache"** (pruning older entries at deeper layers) is **not in the V3 report**.
#   Section 8 built it as an experiment and measured what it saves and costs; it is not DeepSeek's method.
# * **YaRN** context extension (V3 §4.3), which *is* how V3 reaches 128K, is not in the article.
# * V2's **93.3%** KV-cache reduction versus DeepSeek 67B involves 6-bit cache quantisation as well as MLA
#   (section 1 computes both readings).
#
# ## Recap
#
# * The KV cache costs $2n_hd_h$ numbers per token per layer in MHA; GQA and MQA shrink it by sharing K/V heads.
# * MLA caches a latent $c^{KV}$ ($d_c$) and one shared rotary key $k^R$ ($d_h^R$): 576 numbers per token per layer
#   in V2 and V3, the size of GQA with 2.25 groups, while every one of the 128 heads keeps its own keys and values.
# * RoPE on the content keys would make $R_{j-t}W^{UK}$ depend on distance, which blocks absorption; decoupling RoPE
#   into a small separate part fixes it.
# * Absorption folds $W^{UK}$ into the query and $W^{UV}$ into the output: decode attends over the cached latents
#   directly (multi-query attention with $d_c + d_h^R$-dimensional keys), which is what makes the small cache fast.
# * YaRN stretches the rotary key for long contexts; layer-wise pruning is an article claim we tested, not V3.
#
# ## Exercises
#
# Each exercise has a function to complete and a checker that prints PASS or FAIL with a hint (TODO while the
# function still raises `NotImplementedError`).

# %%
import dslearn.exercises.mla  # noqa: F401  (registers this chapter's exercises)
from dslearn.exercises import check


# Exercise 1. Elements cached per token per layer, for any ModelConfig (MHA, GQA, MQA or MLA).
def cache_per_token(config):
    raise NotImplementedError

print(check("kv_cache_per_token", cache_per_token))


# %%
# Exercise 2. Absorb W^UK into the query: q_nope (B, H, T, d_h), w_uk (H, d_h, d_c) -> q_lat (B, H, T, d_c)
# such that q_lat · c^KV equals q^C · (W^UK c^KV) for every latent.
def absorb_query(q_nope, w_uk):
    raise NotImplementedError

print(check("absorb_query", absorb_query))


# %%
# Exercise 3. Absorb W^UV into the output: o_lat (B, H, T, d_c) = attention over the latents,
# w_uv (H, d_v, d_c) -> the heads' outputs merged to (B, T, H·d_v), ready for o_proj.
def absorb_output(o_lat, w_uv):
    raise NotImplementedError

print(check("absorb_output", absorb_output))


# %%
# Exercise 4 (the experiment). Elements of one sequence's cache saved when layers >= first_layer keep only the
# last `window` tokens, at a given context.
def adaptive_cache_saving(config, context, first_layer, window):
    raise NotImplementedError

print(check("adaptive_cache_saving", adaptive_cache_saving))

# %% [markdown]
# <details><summary><b>Solutions</b> (click to open)</summary>
#
# ```python
# def cache_per_token(config):
#     if config.attention_type == "mla":
#         return config.kv_lora_rank + config.qk_rope_head_dim      # one latent + one shared rotary key
#     return 2 * config.num_key_value_heads * config.head_dim         # a key and a value per KV head
#
#
# def absorb_query(q_nope, w_uk):
#     return torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)             # W^UK[h]ᵀ q^C per head
#
#
# def absorb_output(o_lat, w_uv):
#     B, H, T, _ = o_lat.shape
#     return torch.einsum("bhtc,hvc->bthv", o_lat, w_uv).reshape(B, T, H * w_uv.shape[1])
#
#
# def adaptive_cache_saving(config, context, first_layer, window):
#     pruned_layers = max(0, config.num_hidden_layers - first_layer)
#     return pruned_layers * max(0, context - window) * (config.kv_lora_rank + config.qk_rope_head_dim)
# ```
# </details>
