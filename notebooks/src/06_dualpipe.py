# %% [markdown]
# # 06 · DualPipe: pipeline schedules, simulated and run on real CPU processes
#
# A model too big for one device can be cut into **stages** — consecutive layers — placed on **PP** devices.
# Data then flows through them like an assembly line: stage 0 computes a **micro-batch**, passes the
# activations to stage 1, and so on; gradients flow back the other way. The price is the **bubble**: time a
# device sits idle waiting for its neighbour. DeepSeek-V3 trains with 16-way pipeline parallelism and a schedule
# of its own, **DualPipe**, which feeds micro-batches from both ends and pairs a forward with a backward chunk
# so that each one's communication hides behind the other's computation.
#
# **In this notebook you will**
# 1. write the classic 1F1B schedule and a small pipeline simulator yourself, and check them against `dslearn`;
# 2. split the backward pass into *backward for inputs* (B) and *backward for weights* (W) — the zero-bubble idea;
# 3. build DualPipe and DualPipeV, hold the simulator to the V3 report's table of bubbles and memory, and
#    explore schedules with sliders;
# 4. run all four schedules on **real processes** (`torch.distributed`, gloo on CPU) on a real `dslearn` model,
#    check that the losses and gradients equal a single-process run, and cross-check DualPipeV against PyTorch's own;
# 5. measure real timelines, compare the measured bubble with the simulator, and inject link latency;
# 6. put MoE layers inside the stages: experts spread over an expert-parallel group, tokens dispatched and
#    combined by real all-to-alls, and DualPipe's F&B pairs hiding that communication — measured;
# 7. do four exercises.
#
# **Paper sections** — DeepSeek-V3 technical report (arXiv 2412.19437): §3.2.1 *DualPipe and
# computation-communication overlap* (Figure 4: the overlapped chunk pair, Figure 5: the DualPipe schedule,
# Table 2: bubbles and memory), §3.2.2 *cross-node all-to-all communication* (§7 here). Background: Qi et al., *Zero Bubble Pipeline Parallelism* (2023), for ZB1P;
# DeepSeek's open-source DualPipe repository, which also describes DualPipeV.
#
# Symbols used across chapters are listed in the course's [symbol glossary](../docs/glossary.md); careful: here $M$ counts **micro-batches**, while in chapter 01 it is FLOPs per token and in 05 a GEMM dimension.

# %%
import time

import matplotlib.pyplot as plt
import torch

import dslearn
from dslearn.config import ModelConfig
from dslearn.diagrams.dualpipe import fb_chunk_pair
from dslearn.layers import SplitLinear, WeightGradStore
from dslearn.model import CausalLM, choose_parts
from dslearn.parallel import Costs, build_schedule, format_timeline, simulate, table_bubble, with_communication
from dslearn.parallel.runtime import reference_step, run_pipeline, run_pipelines
from dslearn.parallel.timeline import measured_events, plot_timeline, simulated_events
from dslearn.paths import experiments_dir
from dslearn.studies.parallel import measure_schedules

torch.set_num_threads(1)
print(f"dslearn {dslearn.__version__}, torch {torch.__version__}")


# %% [markdown]
# ## 1. Pipeline parallelism from scratch: the 1F1B order
#
# With PP stages and M micro-batches, the simplest schedule (GPipe) runs all M forwards, then all M backwards:
# every stage must keep M micro-batches of activations. **1F1B** (one forward, one backward) keeps at most PP:
# rank $i$ runs $PP-1-i$ *warm-up* forwards, then alternates a forward of the next micro-batch with a backward of
# the oldest, then drains the remaining backwards. Here it is, in a few lines:

# %%
def my_1f1b(rank, pp, m):
    w = min(pp - 1 - rank, m)  # warm-up forwards
    order = [("F", j) for j in range(w)]
    for j in range(m - w):  # steady state: one forward, one backward
        order += [("F", w + j), ("B", j)]
    return order + [("B", j) for j in range(m - w, m)]  # cool-down


# the same as dslearn's schedule data (where a full backward is called "BW")
for pp, m in [(2, 4), (4, 8), (4, 3)]:
    for r in range(pp):
        ours = [("F" if op.kind == "F" else "B", op.mb) for op in build_schedule("1f1b", pp, m).ops[r]]
        assert my_1f1b(r, pp, m) == ours
print("rank 0 of PP=4, M=8:", my_1f1b(0, 4, 8))


# %% [markdown]
# A schedule is just that: each rank's ordered list. To know how long it takes we need a **simulator**. Every
# rank runs its list in order; an op starts when the rank is free *and* its input has arrived:
# $F(s,m)$ waits for $F(s-1,m)$, $B(s,m)$ waits for $B(s+1,m)$. Written small:

# %%
def my_makespan_1f1b(pp, m, F, B):
    done = {}  # ("F"|"B", stage, mb) -> end time
    free = [0.0] * pp
    pos = [0] * pp
    orders = [my_1f1b(r, pp, m) for r in range(pp)]
    while any(pos[r] < len(orders[r]) for r in range(pp)):
        for r in range(pp):
            while pos[r] < len(orders[r]):
                kind, j = orders[r][pos[r]]
                dep = ("F", r - 1, j) if kind == "F" else ("B", r + 1, j)
                if kind == "F" and r == 0 or kind == "B" and r == pp - 1:
                    dep = ("F", r, j) if kind == "B" else None
                if dep is not None and dep not in done:
                    break  # wait for the neighbour
                start = max(free[r], done[dep] if dep else 0.0)
                free[r] = done[(kind, r, j)] = start + (F if kind == "F" else B)
                pos[r] += 1
    return max(free)


for pp, m in [(4, 8), (8, 16)]:
    mine = my_makespan_1f1b(pp, m, 1.0, 2.0)
    assert mine == simulate(build_schedule("1f1b", pp, m), Costs(F=1, B=2, W=1)).makespan
print(format_timeline(simulate(build_schedule("1f1b", 4, 8), Costs(F=1, B=2, W=1))))

# %%
# NBVAL_CHECK_OUTPUT
pp, m, F, B = 4, 8, 1.0, 2.0
makespan = my_makespan_1f1b(pp, m, F, B)
print(f"makespan {makespan:g} = (M + PP − 1)(F + B) = {(m + pp - 1) * (F + B):g}; "
      f"each rank computes M(F + B) = {m * (F + B):g}, so it idles (PP − 1)(F + B) = {makespan - m * (F + B):g}")

# %% [markdown]
# In the picture, digits are forwards of that micro-batch, `BB` a backward (twice as long), `.` idle. The idle
# triangle at the start (ranks waiting for the first activations) and at the end (waiting for the last
# gradients) is the bubble: $(PP-1)(F+B)$ per rank, whatever M is. More micro-batches make it a smaller *share*;
# only a better schedule makes it smaller.
#
# ## 2. Splitting the backward: B and W
#
# A backward chunk does two things. For a Linear layer $y = xW^\top$:
# - **B**, backward for inputs: $\partial L/\partial x = g_y W$ — the previous stage is waiting for it;
# - **W**, backward for weights: $\partial L/\partial W = g_y^\top x$ — nobody needs it until the optimizer step.
#
# Zero-bubble schedules run B at once and postpone W to fill what would have been bubble. Written small:

# %%
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 5, 8, generator=g, requires_grad=True)  # (B, T, d_in)
W = torch.randn(6, 8, generator=g, requires_grad=True)  # (d_out, d_in)
gy = torch.randn(2, 5, 6, generator=g)  # dL/dy arriving from the next stage
(x @ W.T).backward(gy)
gx = gy @ W  # B: (B, T, d_in)
gW = gy.flatten(0, 1).T @ x.flatten(0, 1)  # W: (d_out, d_in), a sum over every token
torch.testing.assert_close(gx, x.grad)
torch.testing.assert_close(gW, W.grad)
print("B and W by hand equal autograd")

# %% [markdown]
# `dslearn.parallel.runtime` does this inside a real decoder layer the way DeepSeek's DualPipe code does: it builds
# its model with `choose_parts(cfg, weight_grads=store)`, so every Linear layer is a `SplitLinear` (or an
# `FP8Linear` holding the store) whose backward returns the input gradient immediately and, while the
# `WeightGradStore` is deferring, queues the $g_y^\top x$ closure instead. After B the layer's input gradient is complete, its Linear
# weights have **no** gradient yet; running the queue (W) supplies them:

# %%
# NBVAL_CHECK_OUTPUT
cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=16)
store = WeightGradStore()
model = CausalLM(cfg, seed=0, parts=choose_parts(cfg, weight_grads=store))  # split B/W from construction
twin = CausalLM(cfg, seed=0)  # the same weights, ordinary Linear layers
layer, ref_layer = model.model.layers[0], twin.model.layers[0]
print("Linear layers with a split backward:", sum(isinstance(m, SplitLinear) for m in layer.modules()))
h = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1))
rope = model.rotary(torch.arange(8).expand(2, 8))
x1, x2 = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
store.deferring = True
layer(x1, rope).square().mean().backward()  # B
store.deferring = False
ref_layer(x2, rope).square().mean().backward()  # the ordinary backward
print("after B: input grad equal:", torch.allclose(x1.grad, x2.grad, atol=1e-7),
      "| q_proj.weight.grad is None:", layer.self_attn.q_proj.weight.grad is None,
      "| queued W closures:", len(store.queue))
for fn in store.take():
    fn()  # W
same = all(torch.allclose(p.grad, q.grad, atol=1e-7) for p, q in zip(layer.parameters(), ref_layer.parameters()))
print("after W: every weight gradient equal:", same)

# %% [markdown]
# With the split, **ZB1P** (the zero-bubble paper's ZB-H1) keeps 1F1B's order and memory but postpones W's
# into the cool-down. `b` is B, `w` is W (here F = B − W = W = 1):

# %%
print(format_timeline(simulate(build_schedule("zb1p", 4, 8), Costs(F=1, B=2, W=1))))

# %% [markdown]
# ## 3. DualPipe and DualPipeV
#
# DualPipe's two ideas (V3 §3.2.1):
# - **Feed micro-batches from both ends.** Rank $i$ holds stage $i$ for micro-batches entering at rank 0 *and*
#   stage $PP-1-i$ for those entering at rank $PP-1$. Both streams fill each other's bubbles. The cost: every
#   stage's parameters live on two ranks (2×), and the two copies' gradients are summed after the step.
# - **Pair a forward chunk with a backward chunk** ("F&B"). In V3 each chunk is attention → all-to-all dispatch →
#   MLP → all-to-all combine; running one micro-batch's forward interleaved with another's backward lets the
#   all-to-all and pipeline transfers of one hide behind the computation of the other.

# %% [markdown]
# The pair, drawn after the report's Figure 4 (`dslearn.diagrams.dualpipe`): on one rank, a forward chunk of one
# micro-batch (△) and a backward chunk of another (▲) take turns on the compute units, and each one's all-to-alls and
# pipeline transfers run while the other computes.

# %%
fb_chunk_pair()
plt.show()

# %% [markdown]
# The schedule itself is eight steps per rank (DeepSeek's code; `dslearn.parallel.schedules._dualpipe_steps`).
# Here is rank 0 of DualPipe on PP=4 with 8 micro-batches (0–3 enter at rank 0, 4–7 at rank 3); `FB[...]` is an
# overlapped pair, `BW` a full backward:

# %%
s = build_schedule("dualpipe", 4, 8)
print(" ".join(str(op) for op in s.ops[0]))
print("\nwith the transfers written in (rank 1):")
print(" ".join(str(op) for op in with_communication(s)[1])[:400], "...")

# %% [markdown]
# **DualPipeV** is DualPipe "cut in half": PP/2 devices, rank $i$ holding stages $i$ and $PP-1-i$ of a *single*
# stream, which runs down the ranks and back up in a V. Same schedule, 1× parameters. PyTorch ships it as
# `torch.distributed.pipelining.ScheduleDualPipeV` — our outside check in §5.
#
# The figure draws simulated timelines like the report's Figure 5: one row per rank, a cell per op with its
# micro-batch number, the second direction (DualPipeV: the way back up) in a darker shade. The F&B pair is given a
# cost below F + B (the overlap gain). DualPipeV does the same work as the others on half the devices, so it
# takes longer; its bubble is what to compare.

# %%
costs = Costs(F=1, B=2, W=1, FB=2.5)
fig, axes = plt.subplots(4, 1, figsize=(11, 9))
for ax, (name, ranks) in zip(axes, [("1f1b", 4), ("zb1p", 4), ("dualpipe", 4), ("dualpipev", 2)]):
    sch_ = build_schedule(name, ranks, 8)
    res = simulate(sch_, costs)
    plot_timeline(simulated_events(res), ax, num_ranks=ranks, unit="F units",
                  second_direction=lambda st, mb, sch_=sch_: sch_.direction[mb] == 1 or
                  (sch_.name == "DualPipeV" and st >= sch_.num_ranks),
                  title=f"{sch_.name}: PP stages={sch_.num_stages}, ranks={ranks}, M=8 — makespan {res.makespan:g}, "
                        f"largest idle {res.bubble:g}")
    ax.set_xlim(0, 45)  # one time axis for all four
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The V3 table against the simulator
#
# DeepSeek-V3's Table 2 (F: a forward chunk, B: a *full* backward chunk, W: its weight part, F&B: an overlapped
# pair) gives, per rank: 1F1B $(PP-1)(F+B)$, ZB1P $(PP-1)(F+B-2W)$, DualPipe $(PP/2-1)(F\&B+B-3W)$; parameters
# 1×, 1×, 2×; activations PP, PP, PP+1. The simulator reproduces every entry (tests hold it to this over several
# PP and M). Activations are counted in stage-activations alive at once on a rank, from the start of a forward
# to the end of its W:

# %%
# NBVAL_CHECK_OUTPUT
costs = Costs(F=1, B=2, W=1, FB=2.5)
print(f"{'schedule':>9} {'PP':>3} {'M':>3} {'table bubble':>12} {'simulated':>9} {'params':>6} {'peak act.':>9}")
for name in ("1f1b", "zb1p", "dualpipe"):
    for pp, m in [(4, 8), (8, 16), (8, 32)]:
        s = build_schedule(name, pp, m)
        r = simulate(s, costs)
        print(f"{s.name:>9} {pp:>3} {m:>3} {table_bubble(name, pp, costs):>12.2f} {r.bubble:>9.2f} "
              f"{s.parameter_copies(0):>5.0f}× {max(r.peak_activations):>9d}")

# %% [markdown]
# Two things the table does not say, which the simulator shows:
# - **The formulas assume a regime.** They are exact when a forward costs the same as an input backward
#   ($F = B - W$), $W \le F$ and $B \le F\&B \le F+B$. Outside it they drift: when W is longer than F, ZB1P's
#   postponed W's no longer fit the gaps they were meant to fill.
# - **The bubble does not depend on M** (for M large enough), so its *share* of the step falls as M grows.

# %%
# NBVAL_CHECK_OUTPUT
odd = Costs(F=1.5, B=4, W=2, FB=4.5)
r = simulate(build_schedule("zb1p", 6, 12), odd)
print(f"W > F: ZB1P on PP=6 idles {r.bubble:g}, the formula says {table_bubble('zb1p', 6, odd):g}")
for m in (16, 32, 64, 128):
    print(f"M={m:>3}: DualPipe PP=8 bubble share {simulate(build_schedule('dualpipe', 8, m), costs).bubble_fraction:.3f}, "
          f"1F1B {simulate(build_schedule('1f1b', 8, m), costs).bubble_fraction:.3f}")


# %% [markdown]
# ### Explorer
#
# Pick a schedule, PP, M and the costs; the timeline redraws. (On GitHub, where widgets do not run, the static
# figure below shows DualPipe with link latency 0.5.)

# %%
def explore(schedule="dualpipe", pp=4, m=8, F=1.0, B=2.0, W=1.0, FB=2.5, comm=0.0):
    ranks = pp // 2 if schedule == "dualpipev" else pp
    try:
        s = build_schedule(schedule, ranks, m)
        res = simulate(s, Costs(F=F, B=max(B, W), W=W, FB=FB, comm=comm))
    except ValueError as e:
        print("not a valid setting:", e)
        return
    ax = plot_timeline(simulated_events(res), num_ranks=ranks, unit="F units",
                       second_direction=lambda st, mb: s.direction[mb] == 1 or (s.name == "DualPipeV" and st >= ranks),
                       title=f"{s.name}: makespan {res.makespan:.2f}, largest idle {res.bubble:.2f}, "
                             f"bubble share {res.bubble_fraction:.1%}, peak activations {max(res.peak_activations)}")
    ax.figure.tight_layout()
    plt.show()


explore("dualpipe", 4, 8, comm=0.5)  # the static figure

# %%
try:
    import ipywidgets as widgets
    from IPython.display import display

    ui = widgets.interactive(
        explore,
        schedule=widgets.Dropdown(options=["1f1b", "zb1p", "dualpipe", "dualpipev"], value="dualpipe"),
        pp=widgets.IntSlider(value=4, min=2, max=16, step=2, description="PP"),
        m=widgets.IntSlider(value=8, min=2, max=48, step=2, description="M"),
        F=widgets.FloatSlider(value=1.0, min=0.2, max=3, step=0.1),
        B=widgets.FloatSlider(value=2.0, min=0.2, max=5, step=0.1),
        W=widgets.FloatSlider(value=1.0, min=0.0, max=3, step=0.1),
        FB=widgets.FloatSlider(value=2.5, min=0.5, max=8, step=0.1, description="F&B"),
        comm=widgets.FloatSlider(value=0.0, min=0.0, max=3, step=0.1, description="latency"),
    )
    display(ui)
except ImportError:
    print("ipywidgets is not installed: the static figure above shows the default setting.")

# %% [markdown]
# ## 5. Real processes: the same schedules on `torch.distributed`
#
# `dslearn.parallel.runtime` runs any of these schedules for real. `launch` spawns one Python process per rank
# (so it works from Jupyter), each joins a gloo process group on a free localhost port (NCCL would take the same
# code on GPUs) and builds the same `CausalLM`, keeping only its stages. Activations and gradients travel with
# `isend`/`irecv`: every message has its own tag, all receives are posted up front and complete in the
# background, sends never block. B and W are really separated, as in §2. DualPipe sums the two copies'
# gradients of each stage at the end.
#
# Four schedules on 2 ranks, in one launch (each process's torch import, a few seconds, is paid once), against the whole
# batch in one process:

# %%
cfg2 = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=2,
                   max_position_embeddings=16)
g = torch.Generator().manual_seed(0)
ids, tgt = torch.randint(0, 64, (8, 8), generator=g), torch.randint(0, 64, (8, 8), generator=g)
ref = reference_step(cfg2.to_dict(), 0, ids, tgt)
names = ["1f1b", "zb1p", "dualpipe", "dualpipev"]
jobs = [dict(schedule_name=n, config=cfg2.to_dict(), seed=0, input_ids=ids, targets=tgt, num_microbatches=4)
        for n in names]
t = time.time()
outs = run_pipelines(jobs, world_size=2, timeout=120)
print(f"4 pipeline steps on 2 processes in {time.time() - t:.1f} s (wall clock, startup included)")

# %%
# NBVAL_CHECK_OUTPUT
print(f"one process: loss {ref['loss']:.5f}")
for n, out in zip(names, outs):
    diff = max((out["grads"][k] - v).abs().max().item() for k, v in ref["grads"].items())
    print(f"{n:>9}: loss {out['loss']:.5f}, {len(out['grads'])} gradients, max |Δgrad| < 1e-6: {diff < 1e-6}")

# %% [markdown]
# **The outside check.** PyTorch's `ScheduleDualPipeV`, given the same stages and micro-batches, must produce the
# same per-micro-batch losses and the same gradients as ours:

# %%
# NBVAL_CHECK_OUTPUT
from dslearn.parallel.launcher import launch
from dslearn.parallel.oracle import torch_dualpipev_available, torch_dualpipev_worker

if torch_dualpipev_available():
    theirs = launch(torch_dualpipev_worker, 2, args=(cfg2.to_dict(), 0, ids, tgt, 4), timeout=120)
    tg = {**theirs[0]["grads"], **theirs[1]["grads"]}
    ours = outs[names.index("dualpipev")]
    dl = max(abs(a - b) for a, b in zip(ours["microbatch_losses"], theirs[0]["losses"]))
    dg = max((ours["grads"][k] - v).abs().max().item() for k, v in tg.items())
    print(f"torch ScheduleDualPipeV vs dslearn DualPipeV: losses within 1e-6: {dl < 1e-6}, "
          f"{len(tg)} gradients within 1e-6: {dg < 1e-6}")
else:
    print("this torch has no ScheduleDualPipeV (it needs torch >= 2.6): outside check skipped")

# %% [markdown]
# **When a rank fails**, every rank must stop, with an error naming the culprit, and nothing may keep running.
# Here rank 1 raises halfway through its schedule while rank 0 waits for its activations:

# %%
# NBVAL_CHECK_OUTPUT
from dslearn.parallel.launcher import WorkerError

try:
    run_pipeline("1f1b", 2, cfg2, ids, tgt, 4, timeout=60, fail={"rank": 1, "how": "raise"})
except WorkerError as e:
    print(str(e).splitlines()[0])
    print("rank reported:", e.rank)

# %% [markdown]
# ## 6. Measured timelines
#
# Every real op is timed (start, end, and the part spent waiting for a transfer). Below: a d=128 model, 2 ranks
# (one per core), 8 micro-batches — each schedule run live, the fastest of two repeats. For each run the
# simulator predicts the same schedule from that run's mean op costs; the measured bubble also contains what the
# simulator leaves out (Python overhead between ops, the other process competing for the cores). On a shared 2-core machine timings are noisy; the shipped,
# longer run (`python bench/parallel_timeline.py`, in `experiments/parallel/timeline.json`) follows.

# %%
t = time.time()
live = measure_schedules(microbatches=8, latency=0.05, repeats=2)
print(f"measured in {time.time() - t:.0f} s")
print(f"{'run':>14} {'makespan ms':>11} {'(simulated)':>11} {'bubble':>7} {'(simulated)':>11}")
for key, r in live["runs"].items():
    print(f"{key:>14} {r['measured_makespan'] * 1e3:>11.1f} {r['simulated_makespan'] * 1e3:>11.1f} "
          f"{r['measured_bubble_fraction']:>7.3f} {r['simulated_bubble_fraction']:>11.3f}")

# %%
fig, axes = plt.subplots(2, 1, figsize=(11, 4.8))
for ax, key in zip(axes, ["1f1b@0", "dualpipe@0"]):
    r = live["runs"][key]
    s = build_schedule(r["schedule"], 2, 8)
    ev = [(rk, k, st, mb, a * 1e3, b * 1e3) for rk, k, st, mb, a, b in measured_events(r["timelines"])]
    plot_timeline(ev, ax, num_ranks=2, unit="ms", second_direction=lambda st, mb, s=s: s.direction[mb] == 1,
                  title=f"measured {s.name} on 2 processes: bubble {r['measured_bubble_fraction']:.1%} "
                        f"(simulator {r['simulated_bubble_fraction']:.1%})")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Injected latency.** Each transfer is made usable only a fixed delay after it was sent — several compute ops
# long here. 1F1B waits for almost every transfer; DualPipe's two interleaved streams give each rank other work
# while a transfer is on its way. The simulator, given the same delay as pure link latency and the costs measured
# in the DualPipe run, predicts the ratio of the two makespans. The measured ratio is the median over
# back-to-back pairs of runs; on a shared 2-core machine single op times vary from run to run by tens of percent,
# so expect the direction, not the digits, to agree:

# %%
import json

shipped = json.loads(experiments_dir("parallel", "timeline.json").read_text())
for label, res in [("live", live), ("shipped", shipped)]:
    q, lat = res["dualpipe_over_1f1b"], res["settings"]["latency_s"] * 1e3
    print(f"{label:>8}: DualPipe/1F1B makespan without latency {q['measured_no_latency']:.2f} "
          f"(simulated {q['simulated_no_latency']:.2f}), with {lat:g} ms latency {q['measured']:.2f} "
          f"(simulated {q['simulated']:.2f})")

# %%
# NBVAL_CHECK_OUTPUT
c = Costs(F=1, B=2, W=1, comm=4)  # the simulator alone: latency 4 × F on PP=2, M=8
a, d = (simulate(build_schedule(n, 2, 8), c).makespan for n in ("1f1b", "dualpipe"))
print(f"simulated: 1F1B {a:g}, DualPipe {d:g}, ratio {d / a:.3f}")

# %% [markdown]
# ## 7. MoE inside the stages: dispatch and combine as real all-to-alls
#
# In V3 a chunk is not just "a few layers": every MoE layer sends each token to the devices holding its
# experts (**dispatch**) and brings the results back (**combine**) — two all-to-alls per layer in the forward and
# two more in the backward. V3 spreads its experts over 64 GPUs (8 nodes) with **expert parallelism (EP)** while
# also running 16-way PP, and these all-to-alls are the communication that DualPipe's F&B pairs exist to hide
# (§3.2.1, Figure 4: while one chunk waits for its all-to-all, the other computes).
#
# `dslearn.parallel.expert_parallel` adds this to the runtime. With `expert_parallel=EP` the world is PP × EP
# processes, global rank $g = p\cdot EP + e$:
#
# - the EP ranks of one pipeline rank $p$ hold the same stages and run the same op list, each on its **own slice of
#   the batch** (data parallel for everything except the routed experts);
# - EP rank $e$ keeps only experts $[e\,E/EP, (e+1)\,E/EP)$ of every MoE layer; the gate, the shared expert,
#   attention and norms are replicated, and their gradients are summed over the EP group after the step;
# - one MoE layer: gate → sort the (token, expert) assignments by expert, so they are grouped by the rank that
#   holds it → exchange the counts (a small all-to-all of its own) → **dispatch** (`dist.all_to_all_single`) → the
#   local experts as a grouped matmul → **combine** (the mirror all-to-all) → weight each result by the gate value
#   $g_{i,t}$ of expert $i$ for token $t$ and sum. Autograd runs dispatch and combine backwards the other way round;
# - the sequence-wise balance loss is added where it arises, scaled like the loss (`AddAuxLoss`, the trick
#   DeepSeek's own modeling code uses), so no extra value has to travel down the pipeline;
# - each layer also counts its tokens per expert, and the run returns the counts summed over all replicas
#   (`expert_load`): what V3's bias update reads after the optimizer step.

# %% [markdown]
# We call the EP ranks' copies of the pipeline **replicas**: replica $e$ is pipeline ranks $0..PP-1$ at EP rank $e$,
# fed with slice $e$ of the batch.
#
# The same model, now with 3 MoE layers, on **4 processes (PP = 2 × EP = 2)** against one process running the
# whole batch:

# %%
from dslearn.studies.parallel import measure_expert_parallel

moe_cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=2,
                      max_position_embeddings=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                      moe_intermediate_size=16, first_k_dense_replace=1, n_group=2, topk_group=2,
                      scoring_func="sigmoid", norm_topk_prob=True, topk_method="noaux_tc", routed_scaling_factor=2.5,
                      seq_aux_loss_alpha=0.01)
g = torch.Generator().manual_seed(0)
ids16, tgt16 = torch.randint(0, 64, (16, 8), generator=g), torch.randint(0, 64, (16, 8), generator=g)
moe_ref = reference_step(moe_cfg.to_dict(), 0, ids16, tgt16)
moe_specs = [("1f1b", False), ("dualpipe", False), ("dualpipe", True)]
moe_jobs = [dict(schedule_name=n, config=moe_cfg.to_dict(), seed=0, input_ids=ids16, targets=tgt16,
                 num_microbatches=4, expert_parallel=2, overlap=ov) for n, ov in moe_specs]
t = time.time()
moe_outs = run_pipelines(moe_jobs, world_size=4, timeout=150)
print(f"3 steps on 4 processes in {time.time() - t:.1f} s (wall clock, startup included)")

# %%
# NBVAL_CHECK_OUTPUT
print(f"one process: cross-entropy {moe_ref['loss']:.4f}, balance loss {moe_ref['aux_loss']:.5f}")
for (n, ov), out in zip(moe_specs, moe_outs):
    diff = max((out["grads"][k] - v).abs().max().item() for k, v in moe_ref["grads"].items())
    same_load = all(torch.equal(out["expert_load"][k], v) for k, v in moe_ref["expert_load"].items())
    print(f"{n + (' + overlap' if ov else ''):>18}: |Δ cross-entropy| < 1e-6: {abs(out['loss'] - moe_ref['loss']) < 1e-6}, "
          f"|Δ balance| < 1e-6: {abs(out['aux_loss'] - moe_ref['aux_loss']) < 1e-6}, {len(out['grads'])} gradients, "
          f"max |Δgrad| < 1e-6: {diff < 1e-6}, same expert load: {same_load}, all-to-alls {out['all_to_alls']}")
print("expert weights, gathered from both EP ranks:", tuple(moe_outs[0]["grads"]["model.layers.1.mlp.experts.down_proj"].shape))
print("expert load of layer 1 (assignments per expert):", moe_outs[0]["expert_load"]["model.layers.1.mlp"].int().tolist())

# %% [markdown]
# The cross-entropy agrees to within 1e-6 but not bit for bit: the pipeline averages 8 means (4 micro-batches in each
# of 2 replicas), one process averages all tokens at once. 96 all-to-alls = 3 MoE layers × 2 (dispatch, combine)
# × 2 (forward, backward) × 4 micro-batches × 2 replicas, each counted once per participating rank (so 48
# collectives; the small count exchanges come on top). Each expert's gradient comes out whole on the rank that holds it: the gradient rows of
# every replica's tokens were sent to it by the backward all-to-all.

# %% [markdown]
# ### Hiding the all-to-all behind the other half of the pair
#
# An F&B pair on one rank is a forward chunk of one micro-batch and a backward chunk of another. Run one after the
# other, each waits for its own all-to-alls. With `overlap=True` the runtime runs the backward half in a second
# thread. Two things make that correct and useful:
#
# - **Two process groups per EP group**, one for forward all-to-alls and one for backward ones. Collectives on a
#   group must be issued in the same order by every member; the two halves now interleave unpredictably, but each
#   half alone is in the same order on both EP ranks, so each group still sees one order.
# - **The CPU details.** The new thread calls `torch.set_num_threads(1)` itself — part of that setting is per
#   thread, and without it the backward half's matrix products spread over both cores while four processes already
#   share them, which ruins the overlap. And Python's GIL switch interval drops from 5 ms to 0.1 ms during the
#   schedule: the backward half re-enters Python at every custom autograd function (the all-to-all, the split
#   matmuls), and each time it may otherwise wait up to 5 ms for the other thread to let go.

# %% [markdown]
# **The timing experiment.** To make the all-to-all the thing that matters, as in V3 (where it costs about as much as the computation), each
# dispatch and combine (not the count exchange) is held for an injected latency of 20 ms. The timing model
# (`dslearn.studies.parallel.MOE_CONFIG`) is smaller than the one above: 2 layers, one MoE layer per stage, $d = 64$, 8 micro-batches of
# 2 × 32 tokens per replica. So a forward chunk is 2 all-to-alls × 20 ms plus a few milliseconds of computation,
# and the schedule, not the 4 processes' competition for 2 cores, decides the timeline. Three runs in one launch
# (after a warm-up run of each): 1F1B, DualPipe with its pairs serial, and DualPipe with its pairs overlapped. In the
# table, "sim." is the simulator replaying each run from that run's own op costs. The real test is the prediction
# printed further down: DualPipe's makespan *before* it runs, from 1F1B's measured F and B (plus the small W, which
# 1F1B never runs on its own; it comes from the serial DualPipe run): a serial pair costs $F + B$, a perfectly overlapped one $\max(F, B)$.

# %%
t = time.time()
ep_live = measure_expert_parallel(a2a_latency=0.02, repeats=1)
print(f"measured in {time.time() - t:.0f} s")
print(f"{'run':>17} {'makespan ms':>11} {'(sim.)':>7} {'F ms':>5} {'B ms':>5} {'F&B ms':>6}")
for key, r in ep_live["runs"].items():
    c = r["costs"]
    pair = f"{c['FB'] * 1e3:>6.1f}" if r["schedule"] == "dualpipe" else f"{'—':>6}"  # 1F1B has no F&B op
    print(f"{key:>17} {r['measured_makespan'] * 1e3:>11.1f} {r['simulated_makespan'] * 1e3:>7.1f} "
          f"{c['F'] * 1e3:>5.1f} {c['B'] * 1e3:>5.1f} {pair}")

# %%
fig, axes = plt.subplots(3, 1, figsize=(11, 7.5))
for ax, key in zip(axes, ["1f1b", "dualpipe serial", "dualpipe overlap"]):
    r = ep_live["runs"][key]
    s = build_schedule(r["schedule"], ep_live["settings"]["pipeline_ranks"], ep_live["settings"]["microbatches"])
    ev = [(rk, k, st, mb, a * 1e3, b * 1e3) for rk, k, st, mb, a, b in measured_events(r["timelines"])]
    plot_timeline(ev, ax, num_ranks=4, unit="ms", second_direction=lambda st, mb, s=s: s.direction[mb] == 1,
                  title=f"measured {key}, PP=2 × EP=2 (ranks 0,1: pipeline rank 0; 2,3: pipeline rank 1): "
                        f"{r['measured_makespan'] * 1e3:.0f} ms")
fig.tight_layout()
plt.show()

# %% [markdown]
# In the overlapped run each F&B cell is about as long as a single F or B: the forward half's all-to-alls wait
# while the backward half computes and vice versa. The two EP ranks of a pipeline rank (rows 0 and 1, rows 2 and 3)
# move in lockstep — every all-to-all is a meeting point. The ratios to 1F1B, live and from the shipped longer run
# (`python bench/parallel_alltoall.py`, five repeats, in `experiments/parallel/alltoall.json`):

# %%
shipped_ep = json.loads(experiments_dir("parallel", "alltoall.json").read_text())
for label, res in [("live", ep_live), ("shipped", shipped_ep)]:
    for key, q in res["over_1f1b"].items():
        print(f"{label:>8}: {key:>16} / 1F1B makespan {q['measured']:.2f} (simulator's prediction {q['predicted']:.2f})")

# %% [markdown]
# DualPipe's ordering alone buys little at PP = 2 (the serial pairs); the overlap is what pays, and it pays about
# what the simulator said it would from 1F1B's costs. The measured overlap falls a little short of the perfect
# $\max(F, B)$: the two halves' computation still shares one core.

# %% [markdown]
# **What this chapter does not reproduce (article vs report).** V3's overlap rests on more than the schedule. The report
# (§3.2.2) dedicates **20 of the H800's 132 SMs** (streaming multiprocessors) to communication, routes each token over
# InfiniBand to the *same-index* GPU of each target node and **forwards it over NVLink** inside the node (so a token
# reaches at most 4 nodes), and uses **warp specialisation** — separate warps for IB sending, IB-to-NVLink forwarding and
# NVLink receiving, their numbers tuned to the load — plus custom PTX instructions and an auto-tuned chunk size. None of
# that exists on CPU processes talking over gloo: here the "communication units" are a second thread and injected
# latency, and every rank sits on one flat network. The overview article calls the partitioned units "Streaming
# Microcontrollers"; they are Streaming Multiprocessors.

# %% [markdown]
# ## Recap
#
# - A pipeline schedule is data: each rank's ordered ops. Its bubble follows from dependencies alone, which a
#   few-line simulator computes.
# - 1F1B idles $(PP-1)(F+B)$ per rank. Splitting the backward into B (urgent) and W (deferrable) lets ZB1P fill
#   the cool-down: $(PP-1)(F+B-2W)$ at the same memory.
# - DualPipe feeds both ends and overlaps a forward with a backward chunk: $(PP/2-1)(F\&B+B-3W)$, at the price of
#   2× parameters and PP+1 activations; DualPipeV gets the same schedule with 1× parameters on PP/2 devices.
# - The same schedules run on real processes and give exactly the gradients of a single-process step; DualPipeV
#   agrees with PyTorch's implementation.
# - Measured timelines on a CPU are noisy but move the way the simulator says when latency is injected.
# - With MoE layers inside the stages, PP × EP processes dispatch and combine tokens with real all-to-alls and still
#   give the single-process gradients; running the two halves of DualPipe's F&B pairs at once hides one half's
#   all-to-all behind the other's work, by about as much as the simulator predicts.
#
# ## Exercises
#
# 1. `one_f_one_b_order(rank, num_ranks, num_microbatches)` → `[("F", 0), ..., ("B", 0), ...]`, without looking at §1.
# 2. `linear_backward_split(x, weight, gy)` → `(gx, gw)` for $y = x W^\top$, $x$ of any leading shape.
# 3. `makespan_1f1b(num_ranks, num_microbatches, F, B)` → when the last op of 1F1B ends.
# 4. `ep_send_counts(topk_idx, n_experts, ep_size)`, with `topk_idx` the (N, K) int64 experts chosen per token →
#    the dispatch's send table, an int64 tensor of shape `(ep_size, n_experts // ep_size)`: how many token rows go to
#    EP rank $j$ for its local expert $i$ (§7).

# %%
import dslearn.exercises.parallel  # noqa: F401  (registers this chapter's exercises)
from dslearn.exercises import check


def my_one_f_one_b_order(rank, num_ranks, num_microbatches):
    raise NotImplementedError  # your code here


def my_linear_backward_split(x, weight, gy):
    raise NotImplementedError  # your code here: return (gx, gw)


def my_makespan_1f1b(num_ranks, num_microbatches, F, B):
    raise NotImplementedError  # your code here


def my_ep_send_counts(topk_idx, n_experts, ep_size):
    raise NotImplementedError  # your code here


for name, fn in [("one_f_one_b_order", my_one_f_one_b_order), ("linear_backward_split", my_linear_backward_split),
                 ("makespan_1f1b", my_makespan_1f1b), ("ep_send_counts", my_ep_send_counts)]:
    print(check(name, fn))

# %%
# NBVAL_CHECK_OUTPUT
print(check("makespan_1f1b", lambda p, m, F, B: (m + p - 1) * (F + B)))


# %% [markdown]
# <details>
# <summary><b>Solutions</b> (click to open)</summary>
#
# ```python
# def my_one_f_one_b_order(rank, num_ranks, num_microbatches):
#     w = min(num_ranks - 1 - rank, num_microbatches)                 # warm-up forwards
#     order = [("F", j) for j in range(w)]
#     for j in range(num_microbatches - w):                           # steady state: one forward, one backward
#         order += [("F", w + j), ("B", j)]
#     return order + [("B", j) for j in range(num_microbatches - w, num_microbatches)]  # cool-down
#
#
# def my_linear_backward_split(x, weight, gy):
#     gx = gy @ weight                                                # B: (..., d_in), what the previous stage needs
#     gw = gy.reshape(-1, gy.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # W: (d_out, d_in), summed over every token
#     return gx, gw
#
#
# def my_makespan_1f1b(num_ranks, num_microbatches, F, B):
#     return (num_microbatches + num_ranks - 1) * (F + B)             # M(F + B) of work plus the (PP − 1)(F + B) bubble
#
#
# def my_ep_send_counts(topk_idx, n_experts, ep_size):
#     per_expert = torch.bincount(topk_idx.flatten(), minlength=n_experts)  # (E,) assignments per expert
#     return per_expert.view(ep_size, n_experts // ep_size)           # expert e → rank e // (E/EP), local e % (E/EP)
# ```
#
# Exercise 3 in closed form holds because every rank of 1F1B computes $M(F+B)$ and idles $(PP-1)(F+B)$ (§1); the simulator of §1 gives the same number by walking the schedule. The cell below runs these solutions through the checkers.
# </details>

# %%
# NBVAL_CHECK_OUTPUT
def solution_one_f_one_b_order(rank, num_ranks, num_microbatches):
    w = min(num_ranks - 1 - rank, num_microbatches)                 # warm-up forwards
    order = [("F", j) for j in range(w)]
    for j in range(num_microbatches - w):                           # steady state: one forward, one backward
        order += [("F", w + j), ("B", j)]
    return order + [("B", j) for j in range(num_microbatches - w, num_microbatches)]  # cool-down


def solution_linear_backward_split(x, weight, gy):
    gx = gy @ weight                                                # B: (..., d_in), what the previous stage needs
    gw = gy.reshape(-1, gy.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # W: (d_out, d_in), summed over every token
    return gx, gw


def solution_makespan_1f1b(num_ranks, num_microbatches, F, B):
    return (num_microbatches + num_ranks - 1) * (F + B)             # M(F + B) of work plus the (PP − 1)(F + B) bubble


def solution_ep_send_counts(topk_idx, n_experts, ep_size):
    per_expert = torch.bincount(topk_idx.flatten(), minlength=n_experts)  # (E,) assignments per expert
    return per_expert.view(ep_size, n_experts // ep_size)           # expert e → rank e // (E/EP), local e % (E/EP)


for name in ("one_f_one_b_order", "linear_backward_split", "makespan_1f1b", "ep_send_counts"):
    print(check(name, globals()[f"solution_{name}"]))
