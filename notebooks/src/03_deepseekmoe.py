# %% [markdown]
# # 03 · DeepSeekMoE: fine-grained experts, shared experts, and V2's balancing
#
# A dense transformer spends the same compute on every token in every feed-forward block. A **mixture of experts**
# (MoE) replaces that block with many smaller feed-forward networks, the *experts*, and a *router* that sends each
# token to a few of them: the model holds far more parameters than any one token uses. DeepSeek-V2 runs
# 236B parameters with 21B activated per token this way. Two problems come with it: which experts a token should use,
# and how to stop the router from sending everything to a handful of them.
#
# **In this notebook you will**
# 1. see why DeepSeekMoE splits experts finely and adds shared experts, and count what that buys;
# 2. build V2's softmax router and device-limited routing in a few lines, then prove it equals `dslearn.moe`;
# 3. build the MoE layer as a per-expert loop and check `dslearn`'s fast sorted/grouped dispatch against it;
# 4. compute V2's three balance losses and its token dropping with a device capacity;
# 5. look at training runs: no balancing vs V2's auxiliary losses (shipped results, plus a reduced live run);
# 6. explore routing interactively, then solve two exercises.
#
# **Paper sections.** DeepSeek-V2 (arXiv 2405.04434) §2.2: 2.2.1 basic architecture (fine-grained and shared experts),
# 2.2.2 device-limited routing, 2.2.3 auxiliary losses for load balance, 2.2.4 token-dropping strategy.
# The architecture comes from DeepSeekMoE (arXiv 2401.06066). Chapter 04 continues with V3's changes.
#
# **Symbols:** in this chapter $M$ is the number of devices a token may reach and $D$ the number of devices (chapter 01 used both letters for compute); see the [glossary](../docs/glossary.md).

# %%
import json
import tempfile

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dslearn.config import ModelConfig, get_preset
from dslearn.data import TokenStream, load_corpus
from dslearn.model import CausalLM
from dslearn.moe import (
    DeepSeekMoE,
    capacity_keep_mask,
    combinations,
    comm_balance_loss,
    device_balance_loss,
    expert_balance_loss,
    fine_grained,
    grouped_dispatch,
    load_metrics,
    loop_dispatch,
    route,
)
from dslearn.paths import experiments_dir
from dslearn.scaling.accounting import ffn_params
from dslearn.train import TrainConfig, Trainer, read_metrics

torch.set_num_threads(1)  # small models: one thread is as fast as two, and steadier on shared cores
RESULTS = experiments_dir("moe")
print("shipped results:", sorted(p.name for p in RESULTS.glob("*.json")))

# %% [markdown]
# ## 1. Fine-grained and shared experts
#
# DeepSeekMoE's layer (V2 §2.2.1), for the token's hidden state $u_t$:
#
# $$h'_t = u_t + \sum_{i=1}^{N_s} \mathrm{FFN}^{(s)}_i(u_t) + \sum_{i=1}^{N_r} g_{i,t}\,\mathrm{FFN}^{(r)}_i(u_t),\qquad
# g_{i,t} = \begin{cases} s_{i,t} & s_{i,t}\in\mathrm{TopK}(\{s_{j,t}\}, K_r)\\ 0 & \text{otherwise}\end{cases},\qquad
# s_{i,t} = \mathrm{Softmax}_i(u_t^\top e_i)$$
#
# Two departures from a conventional top-2 MoE:
#
# * **Fine-grained segmentation**: cut each expert into $m$ narrower ones and route to $m$ times as many. The
#   parameters and the compute per token stay the same, but the number of expert *combinations* a token can
#   choose from explodes, so experts can specialise more narrowly.
# * **Shared experts**: $N_s$ experts see every token and hold what all tokens need, so the routed experts do not
#   each relearn it. They are taken out of the activated budget ($K_r$ drops by $N_s$).

# %%
from dslearn.diagrams.moe import deepseekmoe_layer

deepseekmoe_layer()  # the layer this chapter builds: shared experts, many narrow routed experts, a top-K gate
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'layout':<34}{'N_r':>5}{'K_r':>5}{'N_s':>5}{'width':>7}{'active width':>14}{'expert sets':>16}")
for m, n_shared in [(1, 0), (2, 0), (4, 0), (4, 1)]:
    c = fine_grained(16, 2, 1024, m=m, n_shared=n_shared)
    label = "coarse top-2" if m == 1 else f"m={m}" + (f", {n_shared} shared" if n_shared else "")
    active = (c["num_experts_per_tok"] + c["n_shared_experts"]) * c["moe_intermediate_size"]
    print(f"{label:<34}{c['n_routed_experts']:>5}{c['num_experts_per_tok']:>5}{c['n_shared_experts']:>5}"
          f"{c['moe_intermediate_size']:>7}{active:>14}{combinations(c['n_routed_experts'], c['num_experts_per_tok']):>16,}")

# %% [markdown]
# Same active width (2048) in every row; the choices grow from 120 to billions. DeepSeek-V2 takes this far: 160 routed
# experts of width 1536, 6 of them active, plus 2 shared. (V2's released configuration also multiplies the routed experts' gate weights by
# `routed_scaling_factor` = 16; the report does not give that constant, the released `config.json` does.) `dslearn.scaling.accounting` counts what that means for
# the whole model:

# %%
# NBVAL_CHECK_OUTPUT
v2 = get_preset("deepseek-v2")
layer = v2.first_k_dense_replace  # the first MoE layer
total, active = ffn_params(v2, layer), ffn_params(v2, layer, activated=True)
print(f"V2 MoE layer: {total / 1e9:.2f}B parameters, {active / 1e9:.3f}B activated per token ({active / total:.1%})")
print(f"experts a token can combine: C(160, 6) = {combinations(160, 6):.3e}")


# %% [markdown]
# ## 2. The router, built small
#
# The router holds one centroid $e_i$ per routed expert (`gate.weight`, shape $(N_r, d)$). V2 scores experts with a
# softmax and keeps the top $K_r$. With hundreds of experts spread over devices, a token's experts could sit on many
# devices, and each device it touches costs all-to-all traffic. **Device-limited routing** bounds that: score each of
# the $D$ devices by its best expert, keep the top $M$ devices, then choose the top $K_r$ among their experts only
# (V2: $M = 3$ of $D = 8$).

# %%
def my_router(logits, k, n_devices=1, m=1):
    s = logits.softmax(dim=-1)                                            # (N, E) affinities s_{i,t}
    N, E = s.shape
    choice = s
    if m < n_devices:
        device_score = s.view(N, n_devices, E // n_devices).amax(dim=-1)  # (N, D) best expert per device
        keep = torch.zeros_like(device_score, dtype=torch.bool)
        keep.scatter_(1, device_score.topk(m, dim=-1).indices, True)      # (N, D) the top-M devices
        choice = s.masked_fill(~keep.repeat_interleave(E // n_devices, dim=1), float("-inf"))
    idx = choice.topk(k, dim=-1).indices                                  # (N, K)
    return idx, s.gather(1, idx)                                          # g_{i,t} = s_{i,t} at the chosen

# The hand case of tests/test_moe_router.py: experts {0,1} on device 0, {2,3} on device 1.
logits = torch.tensor([[3.0, -2.0, 2.0, 2.5]])
print("greedy top-2:       ", my_router(logits, 2)[0].tolist())
print("device-limited, M=1:", my_router(logits, 2, n_devices=2, m=1)[0].tolist())

# %% [markdown]
# Greedy routing takes experts 0 and 3, on two devices. With $M=1$ the token's best expert (0) decides the device,
# and its second expert becomes 1, although experts 2 and 3 score higher: a little quality traded for bounded
# communication. Now the same on random logits against `dslearn.moe.route`:

# %%
# NBVAL_CHECK_OUTPUT
logits = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
for D, M, K in [(1, 1, 4), (4, 1, 2), (4, 2, 4), (8, 3, 6)]:
    idx, w = my_router(logits, K, D, M)
    r = route(logits, top_k=K, topk_method="group_limited_greedy", n_group=D, topk_group=M)
    assert torch.equal(idx, r.topk_idx) and torch.allclose(w, r.topk_weight)
    devices_touched = (r.topk_idx // (16 // D)).sort(dim=-1).values.diff(dim=-1).ne(0).sum(-1).add(1)
    print(f"D={D} M={M} K={K}: same as dslearn; devices per token: max {devices_touched.max().item()}")


# %% [markdown]
# ## 3. Running the experts: the loop, and the fast path
#
# After routing, each token needs the weighted sum of its $K_r$ experts' outputs. The simplest correct code loops over
# the experts, gathers each one's tokens, runs it, and scatter-adds the weighted result back. That loop is the
# specification; `dslearn.moe.loop_dispatch` is exactly this:

# %%
def my_moe(x, idx, w, gate_up, down):
    # x (N, d) tokens; idx, w (N, K) chosen experts and gate weights; gate_up (E, 2I, d) = [W1; W3]; down (E, d, I) = W2
    out = torch.zeros_like(x)                                    # (N, d)
    for e in range(gate_up.shape[0]):
        token, slot = (idx == e).nonzero(as_tuple=True)          # (n_e,), (n_e,): which tokens chose e, in which slot
        if len(token) == 0:
            continue
        g, u = (x[token] @ gate_up[e].T).chunk(2, dim=-1)        # (n_e, I) each: W1 u, W3 u
        y = (F.silu(g) * u) @ down[e].T                          # (n_e, d): W2 (SiLU(W1 u) ⊙ W3 u)
        out.index_add_(0, token, y * w[token, slot, None])       # (n_e, d) rows added back: g_{i,t} · FFN_i(u_t)
    return out

cfg = ModelConfig(hidden_size=32, num_attention_heads=2, n_routed_experts=16, num_experts_per_tok=4,
                  moe_intermediate_size=16, n_shared_experts=2, n_group=4, topk_group=2,
                  topk_method="group_limited_greedy", routed_scaling_factor=1.0)
layer = DeepSeekMoE(cfg).eval()
x = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    flat = x.view(-1, 32)
    r = layer.gate(flat)                                         # topk_idx, topk_weight: (100, 4)
    mine = my_moe(flat, r.topk_idx, r.topk_weight, layer.experts.gate_up_proj, layer.experts.down_proj)
    mine = mine + layer.shared_experts(flat)                     # the shared experts see every token
    print("max |mine - DeepSeekMoE| =", f"{(mine.view_as(x) - layer(x)).abs().max().item():.1e}")

# %% [markdown]
# The loop runs one small matrix multiply per expert, forward and backward. `dslearn`'s fast path,
# `grouped_dispatch`, instead **sorts the $N\cdot K_r$ (token, expert) assignments by expert** so each expert's rows
# are contiguous, and runs all experts in one *grouped* matmul (`torch.nn.functional.grouped_mm`, given where each
# expert's block ends) for $W_1;W_3$ and one for $W_2$: one gather before, one `index_add` after. The same values
# and gradients, up to float rounding:

# %%
g = torch.Generator().manual_seed(2)
N, d, E, K, inter = 300, 32, 16, 4, 16
xs = torch.randn(N, d, generator=g)                                       # (N, d) tokens
idx = torch.rand(N, E, generator=g).topk(K, dim=-1).indices                # (N, K) expert ids
w = torch.rand(N, K, generator=g)                                         # (N, K) gate weights
gu = torch.randn(E, 2 * inter, d, generator=g) / 5                        # (E, 2I, d): W1; W3 per expert
dn = torch.randn(E, d, inter, generator=g) / 4                            # (E, d, I): W2 per expert
outs = {}
for name, fn in [("loop", loop_dispatch), ("grouped", grouped_dispatch)]:
    leaves = [t.clone().requires_grad_() for t in (xs, w, gu, dn)]
    y = fn(leaves[0], idx, leaves[1], leaves[2], leaves[3])                # (N, d)
    y.square().sum().backward()
    outs[name] = [y.detach()] + [t.grad for t in leaves]
for what, a, b in zip(["output", "dL/dx", "dL/dg", "dL/dW13", "dL/dW2"], outs["loop"], outs["grouped"]):
    print(f"{what:>8}: max |loop - grouped| = {(a - b).abs().max().item():.1e}")

# %% [markdown]
# How much faster? `bench/moe_dispatch.py` times a whole MoE layer forward+backward (2048 tokens, $d=256$, 32 experts,
# $K_r=4$) for the loop, the grouped path and Hugging Face's `DeepseekV3MoE` on the same weights. The shipped run:

# %%
bench = json.loads((RESULTS / "bench_dispatch.json").read_text())
for name, v in sorted(bench["tokens_per_s"].items(), key=lambda kv: -kv[1]):
    print(f"{name:<16} {v:>8.0f} tokens/s   {bench['ratio_vs_dslearn_grouped'][name]:.2f}x of dslearn_grouped")

# %% [markdown]
# Two things make the fast path faster here: every expert's rows are contiguous, so the gathers, SiLU and scatter run
# once over all assignments instead of once per expert; and the gate weight $g_{i,t}$ multiplies the narrow
# $(A, I)$ activation before $W_2$ instead of the wide $(A, d)$ output (the same number, since $W_2$ is linear). On a
# CPU, torch's grouped matmul still loops over experts inside C++, so the matmuls themselves cost about the same in
# every variant. Ratios move with machine load (the shipped run shared its two cores with other work); rerun
# `python bench/moe_dispatch.py` to measure on your machine.
#
# ## 4. Keeping the load balanced: V2's three losses
#
# A router trained only on the language-model loss can **collapse**: experts that happen to be chosen more early on
# train more, get better, and are chosen even more. V2 adds three small losses, each $\sum f\cdot P$ with $f$ a hard
# count of where tokens went (scaled so that balance gives $f=1$) and $P$ a mean affinity (differentiable). For $T$
# tokens, $D$ devices $\mathcal{E}_1..\mathcal{E}_D$ and $M$ devices per token:
#
# | loss | $f$ | $P$ | V2's $\alpha$ |
# |---|---|---|---|
# | expert $\mathcal{L}_{ExpBal}=\alpha_1\sum_i f_iP_i$ | $f_i=\frac{N_r}{K_rT}\sum_t \mathbb 1(t\text{ selects }i)$ | $P_i=\frac1T\sum_t s_{i,t}$ | 0.003 |
# | device $\mathcal{L}_{DevBal}=\alpha_2\sum_d f'_dP'_d$ | $f'_d=\text{mean}_{i\in\mathcal E_d} f_i$ | $P'_d=\sum_{i\in\mathcal E_d}P_i$ | 0.05 |
# | communication $\mathcal{L}_{CommBal}=\alpha_3\sum_d f''_dP''_d$ | $f''_d=\frac{D}{MT}\sum_t\mathbb 1(t\text{ sent to }d)$ | $P''_d=\sum_{i\in\mathcal E_d}P_i$ | 0.02 |
#
# With softmax affinities each sum is exactly 1 at perfect balance, and the expert-level one climbs to $N_r/K_r$ when
# all tokens go to the same $K_r$ experts:

# %%
# NBVAL_CHECK_OUTPUT
T, E, K, D, M = 512, 16, 2, 4, 2
balanced_idx = torch.stack([torch.arange(T) % E, (torch.arange(T) + E // 2) % E], dim=1)  # 2T/E each, 2 devices
uniform = torch.full((T, E), 1 / E)
collapsed_idx = torch.tensor([[0, 1]]).expand(T, 2)
peaked = torch.zeros(T, E).index_fill(1, torch.tensor([0, 1]), 0.5)
for name, s, i in [("balanced", uniform, balanced_idx), ("collapsed onto 2", peaked, collapsed_idx)]:
    print(f"{name:<17} expert {expert_balance_loss(s, i).item():5.2f}   device {device_balance_loss(s, i, D).item():5.2f}"
          f"   comm {comm_balance_loss(s, i, D, M).item():5.2f}")

# %% [markdown]
# ## 5. Token dropping with a device capacity
#
# Balance losses balance load *on average*. A single batch can still overflow a device. V2 gives every device a
# capacity of `capacity_factor` × the mean number of assignments per device, drops the **lowest-affinity** overflow
# (the token keeps its residual path and the shared experts), and never drops the tokens of about 10% of the training
# sequences (§2.2.4). That exemption is what lets inference choose: because training also saw undropped
# computation, a deployment may drop tokens or not, as efficiency demands, and stay consistent with training. How much gets dropped depends
# on the capacity factor and on how skewed the router is:

# %%
g = torch.Generator().manual_seed(3)
N, E, K, D = 4096, 16, 4, 4
factors = [0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0]
fig, ax = plt.subplots(figsize=(7, 3.5))
for skew in [0.0, 0.5, 1.0]:
    logits = torch.randn(N, E, generator=g) + skew * torch.linspace(1, -1, E)  # larger skew: early experts favoured
    r = route(logits, top_k=K)
    dropped = [1 - capacity_keep_mask(r.topk_idx, r.topk_weight, E, D, cf).float().mean().item() for cf in factors]
    ax.plot(factors, [100 * v for v in dropped], "o-", label=f"router skew {skew}")
ax.set(xlabel="device capacity factor", ylabel="assignments dropped (%)", title="V2 token dropping: 16 experts on 4 devices")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ## 6. Training with and without balancing
#
# `experiments/moe/train_balance.py` trains small MoE models (d_model 64, 3 layers of which 2 are MoE with 32 routed
# experts of width 32, 7 active, plus 1 shared; byte tokens; seq 128) on the standard-library corpus, same batches,
# steps, schedule and seed. Chapter 03's runs: `none` (softmax, greedy top-K, nothing to balance) and `v2_aux`
# (softmax, device-limited routing with 4 devices and $M=2$, the three losses at V2's $\alpha$, capacity factor 1.0
# with 10% of sequences exempt). The trainer logs every MoE layer's MaxVio, $\max_i \text{load}_i/\overline{\text{load}}-1$
# (0 = perfectly balanced; $N_r/K_r - 1 = 32/7 - 1$ when every token goes to the same 7 experts).

# %%
# NBVAL_CHECK_OUTPUT
shipped = json.loads((RESULTS / "train_balance.json").read_text())
runs = {r["name"]: r for r in shipped["runs"]}
print(f"{shipped['runs'][0]['steps']} steps × {shipped['meta']['batch_size']} × {shipped['meta']['seq_len']} bytes each")
print(f"{'run':<12}{'val bits/byte':>14}{'MaxVio (last 20%)':>19}{'peak MaxVio':>13}{'dropped: max':>14}{'mean':>7}"
      f"{'dead experts':>14}")
for name in ["none", "v2_aux"]:
    r = runs[name]
    dead = sum(x * len(v) < 0.05 for v in r["final_load"].values() for x in v)  # < 5% of a fair share
    n_exp = sum(len(v) for v in r["final_load"].values())
    print(f"{name:<12}{r['final_val_bpb']:>14.3f}{r['final_maxvio']:>19.2f}{max(r['maxvio']):>13.2f}"
          f"{max(r['dropped_frac']):>14.1%}{sum(r['dropped_frac']) / len(r['dropped_frac']):>7.1%}{f'{dead} of {n_exp}':>14}")
print(f"MaxVio if every token used the same experts: {32 / 7 - 1:.2f}")

# %%
fig = plt.figure(figsize=(12, 6.5), layout="constrained")
grid = fig.add_gridspec(2, 2)
ax = fig.add_subplot(grid[0, :])
for name in ["none", "v2_aux"]:
    ax.plot(runs[name]["step"], runs[name]["maxvio"], label=name)
ax.set(xlabel="step", ylabel="MaxVio (batch, mean of MoE layers)", title="load imbalance during training")
ax.grid(alpha=0.3)
ax.legend()
for col, name in enumerate(["none", "v2_aux"]):
    ax = fig.add_subplot(grid[1, col])
    loads = torch.tensor(list(runs[name]["final_load"].values()))  # (layers, E) share of assignments
    im = ax.imshow(loads * loads.shape[1], aspect="auto", cmap="viridis", vmin=0, vmax=4)
    ax.set(xlabel="expert", yticks=range(len(loads)), yticklabels=[f"MoE {k}" for k in runs[name]["final_load"]],
           title=f"{name}: load / mean load, last 20% of steps")
fig.colorbar(im, ax=ax, label="load / mean load")
plt.show()

# %% [markdown]
# Without balancing, the router's load reaches the worst possible MaxVio early in training and many experts end up
# dead (the count above): they receive (almost) no tokens, so they hold parameters that do nothing. V2's losses keep
# every expert in use. On quality this run says nothing either way: the two validation figures differ by less than a
# hundredth of a bit per byte, each setting ran once with one seed, and a rerun of the same experiment moved single
# settings by up to a few hundredths (`experiments/moe/README.md`). In particular the unbalanced model, with its dead
# experts, was **not** worse here. What balancing bought at this scale is the load itself (MaxVio, no dead experts) —
# the thing that decides how well a real expert-parallel deployment uses its devices. The reduced live run below
# repeats both settings with three seeds. Chapter 04 compares V3's answer on the same budget.

# %% [markdown]
# ### A reduced live run, three seeds
#
# The same two settings for a few dozen steps, right here, each with three seeds (every run takes seconds; the
# progress bar shows how far along it is). The numbers differ from the shipped ones (fewer steps), and 40 steps are
# far too few to compare bits per byte; the question is whether the MaxVio curves separate by more than the seeds
# scatter.

# %%
corpus = load_corpus()
train, val = TokenStream(corpus.train, "train"), TokenStream(corpus.val, "val")
BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=128, first_k_dense_replace=1, n_group=4, topk_group=2, n_routed_experts=32,
            num_experts_per_tok=7, moe_intermediate_size=32, n_shared_experts=1)
LIVE = {"none": dict(topk_method="greedy"),
        "v2_aux": dict(topk_method="group_limited_greedy", aux_loss_alpha=0.003, device_aux_loss_alpha=0.05,
                       comm_aux_loss_alpha=0.02, capacity_factor=1.0, drop_exempt_fraction=0.1)}

SEEDS = (0, 1, 2)

def live_run(changes, seed, steps=40):
    model = CausalLM(ModelConfig(**(BASE | changes)), seed=seed)
    with tempfile.TemporaryDirectory() as d:
        tc = TrainConfig(steps=steps, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=10, eval_every=0,
                         eval_windows=16, log_every=2, progress=False, seed=seed)
        res = Trainer(model, tc, train, val, run_dir=d).fit()
        return res, read_metrics(d, "train")

live = {(name, s): live_run(LIVE[name], s) for name, s in tqdm([(n, s) for n in LIVE for s in SEEDS], desc="live runs")}
fig, ax = plt.subplots(figsize=(7, 3.6))
for i, name in enumerate(LIVE):
    curves = torch.tensor([[r["moe/maxvio"] for r in live[name, s][1]] for s in SEEDS])   # (seeds, logged steps)
    steps_logged = [r["step"] for r in live[name, SEEDS[0]][1]]
    ax.plot(steps_logged, curves.mean(0), color=f"C{i}", label=f"{name}: mean of {len(SEEDS)} seeds")
    ax.fill_between(steps_logged, curves.min(0).values, curves.max(0).values, color=f"C{i}", alpha=0.2)
ax.set(xlabel="step", ylabel="MaxVio", title="live: load imbalance (band = min–max over seeds)")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
for name in LIVE:
    late = torch.tensor([sum(r["moe/maxvio"] for r in rows[-5:]) / 5 for _, rows in (live[name, s] for s in SEEDS)])
    bpb = torch.tensor([live[name, s][0].final_val_bpb for s in SEEDS])
    print(f"{name:<7} MaxVio over the last 10 steps {late.mean():.2f} ± {late.std():.2f}, "
          f"val {bpb.mean():.3f} ± {bpb.std():.3f} bits/byte (mean ± std over {len(SEEDS)} seeds)")

# %% [markdown]
# ## 7. Explorer: routing
#
# Pick the number of experts, devices $D$, devices per token $M$, experts per token $K_r$ and how skewed the router
# is; the left chart shows how many of 2048 random tokens each expert receives (coloured by device), the right one how
# many devices each token touches. Below, a static version for V2-like settings, so the notebook reads well where
# widgets do not run.

# %%
import ipywidgets as widgets


def draw_routing(experts=16, devices=4, m=2, k=4, skew=0.5, axes=None):
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(11, 3.4))[1]
    m, k = min(m, devices), min(k, m * experts // devices)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2048, experts, generator=g) + skew * torch.linspace(1.5, -1.5, experts)
    method = "group_limited_greedy" if m < devices else "greedy"
    r = route(logits, top_k=k, topk_method=method, n_group=devices, topk_group=m)
    stats = load_metrics(r.topk_idx, r.scores, experts, devices)
    per = experts // devices
    axes[0].bar(range(experts), stats["load"], color=[f"C{e // per}" for e in range(experts)])
    axes[0].axhline(stats["load"].mean(), color="k", lw=1, ls="--")
    axes[0].set(xlabel="expert (colour = device)", ylabel="tokens", title=f"MaxVio {stats['maxvio']:.2f}")
    touched = (r.topk_idx // per).sort(dim=-1).values.diff(dim=-1).ne(0).sum(-1) + 1
    axes[1].hist(touched, bins=torch.arange(0.5, devices + 1.5), rwidth=0.8)
    axes[1].set(xlabel="devices a token is sent to", ylabel="tokens", title=f"N_r={experts}, D={devices}, M={m}, K_r={k}")
    return axes

controls = dict(experts=widgets.Dropdown(options=[8, 16, 32, 64], value=16, description="experts"),
                devices=widgets.Dropdown(options=[1, 2, 4, 8], value=4, description="devices D"),
                m=widgets.IntSlider(2, 1, 8, description="M"),
                k=widgets.IntSlider(4, 1, 16, description="K_r"),
                skew=widgets.FloatSlider(value=0.5, min=0.0, max=3.0, step=0.25, description="skew"))
out = widgets.interactive_output(lambda **kw: (draw_routing(**kw), plt.show()), controls)
display(widgets.VBox([widgets.HBox(list(controls.values())[:3]), widgets.HBox(list(controls.values())[3:]), out]))

# %%
# Static fallback: 64 experts on 8 devices, K_r = 6, with and without device-limited routing (M = 3).
fig, axes = plt.subplots(2, 2, figsize=(11, 6.5))
draw_routing(64, 8, 8, 6, 0.5, axes[0])
draw_routing(64, 8, 3, 6, 0.5, axes[1])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 8. The article vs the report
#
# The overview article says V2 dropped tokens and V3 does not: true. V2 drops with a **device-level** capacity factor
# (1.0 in training) and exempts about 10% of training sequences; V3 drops nothing in training or inference (chapter 04).
# The article does not mention the device and communication losses: V2 uses all three, with
# $\alpha_1 = 0.003$, $\alpha_2 = 0.05$, $\alpha_3 = 0.02$.
#
# ## Recap
#
# * DeepSeekMoE = many narrow routed experts (fine-grained segmentation) + a few shared experts, at the same
#   activated compute as a coarse MoE; V2: 160 routed (6 active) + 2 shared per layer.
# * V2's router: softmax affinities, top-$K_r$ restricted to the $M$ best devices (device-limited routing).
# * The fast dispatch sorts assignments by expert and runs grouped matmuls; the per-expert loop is its reference.
# * V2 balances load with three $\sum f\cdot P$ losses (expert, device, communication) and a device capacity that
#   drops the lowest-affinity overflow.
# * At our scale, balancing bought balance (no dead experts), not bits per byte: one seed of the shipped run
#   cannot separate the two settings' quality.
#
# ## Exercises

# %%
import dslearn.exercises.moe  # noqa: F401  (registers this chapter's exercises)
from dslearn.exercises import check


# Exercise 1. V2's device-limited routing: logits (N, E) -> (indices (N, k), weights (N, k)).
# Softmax affinities; a device's score is its best expert's affinity; keep the top-m of n_devices devices.
def device_limited_topk(logits, k, n_devices, m):
    raise NotImplementedError

print(check("device_limited_topk", device_limited_topk))


# %%
# Exercise 2. The expert-level balance loss without α1: scores (T, E) affinities, topk_idx (T, K) -> Σ_i f_i P_i.
def expert_balance_loss_mine(scores, topk_idx):
    raise NotImplementedError

print(check("expert_balance_loss", expert_balance_loss_mine))

# %% [markdown]
# <details><summary><b>Solutions</b> (click to open)</summary>
#
# ```python
# def device_limited_topk(logits, k, n_devices, m):
#     s = logits.softmax(dim=-1)                                                  # (N, E) affinities
#     N, E = s.shape
#     best = s.view(N, n_devices, E // n_devices).amax(dim=-1)                    # (N, D) best expert per device
#     keep = torch.zeros_like(best, dtype=torch.bool).scatter(1, best.topk(m, dim=-1).indices, True)  # (N, D)
#     idx = s.masked_fill(~keep.repeat_interleave(E // n_devices, dim=1), float("-inf")).topk(k, dim=-1).indices
#     return idx, s.gather(1, idx)                                                # (N, k) each
#
#
# def expert_balance_loss_mine(scores, topk_idx):
#     T, E = scores.shape
#     K = topk_idx.shape[-1]
#     f = torch.bincount(topk_idx.flatten(), minlength=E).float() * E / (K * T)  # 1 at perfect balance
#     return (f * scores.mean(0)).sum()
# ```
# </details>
