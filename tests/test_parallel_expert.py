"""Expert parallelism inside pipeline stages: MoE dispatch/combine as real all-to-alls between processes.

The same model and batch in one process is the reference: cross-entropy 1e-5 absolute (a mean of
micro-batch means), balance loss 1e-6, gradients 1e-6 absolute + 1e-4 relative (observed ~2e-8: the
routing weight multiplies after the expert instead of before W2, and fp32 sums run in another order).
The single-process pieces (the layer at EP = 1, the split expert matmul, the aux-loss carrier) are
checked against the plain modules without any process group.
"""

import pytest
import torch
from helpers import assert_same_step, pipeline_moe_config, token_batch

from dslearn.layers import WeightGradStore, expert_matmul
from dslearn.model import CausalLM, choose_parts
from dslearn.moe.layer import DeepSeekMoE
from dslearn.parallel.expert_parallel import EPComm, ExpertParallelExperts, expert_parallel
from dslearn.parallel.launcher import WorkerError
from dslearn.parallel.runtime import AddAuxLoss, reference_step, run_pipeline, run_pipelines

pytestmark = pytest.mark.usefixtures("one_thread_own_rng", "no_orphans")


def _assert_matches(out, ref, label):
    assert_same_step(out, ref, label)
    assert ref["aux_loss"] > 0 and out["aux_loss"] == pytest.approx(ref["aux_loss"], abs=1e-6), label
    # what V3's bias update reads: assignments per expert, every replica's tokens counted once
    assert set(out["expert_load"]) == set(ref["expert_load"]) == {f"model.layers.{i}.mlp" for i in (1, 2, 3)}
    for n, load in ref["expert_load"].items():
        assert torch.equal(out["expert_load"][n], load), f"{label} {n}: load {out['expert_load'][n]} != {load}"


def _jobs(specs, cfg, ids, tg, **kw):
    return [dict(schedule_name=name, config=cfg.to_dict(), seed=0, input_ids=ids, targets=tg, num_microbatches=m,
                 expert_parallel=ep, overlap=overlap, **kw) for name, ep, m, overlap in specs]


# ---------------------------------------------------------------------------------------------------------
# one process: the pieces


def test_layer_at_ep1_equals_deepseek_moe_with_b_and_w_split():
    """EP = 1 runs no collective; output and every gradient equal DeepSeekMoE's, also when the expert weight
    gradients are deferred into the store and run later as W."""
    cfg = pipeline_moe_config()
    ref = DeepSeekMoE(cfg)
    x = torch.randn(2, 8, 32, requires_grad=True)
    y_ref = ref(x)
    y_ref.square().sum().backward()
    store = WeightGradStore()
    ep = DeepSeekMoE(cfg, experts=expert_parallel(EPComm(), store))
    ep.load_state_dict(ref.state_dict())  # at EP = 1 the one shard is every expert: same names, same shapes
    x2 = x.detach().clone().requires_grad_(True)
    y = ep(x2)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ep.aux_loss, ref.aux_loss)
    store.deferring = True
    y.square().sum().backward()
    store.deferring = False
    assert ep.experts.gate_up_proj.grad is None and len(store.queue) == 2  # W deferred: both expert matmuls
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-6, rtol=1e-5)  # B already complete
    for fn in store.take():
        fn()
    for name in ("gate_up_proj", "down_proj"):
        torch.testing.assert_close(getattr(ep.experts, name).grad, getattr(ref.experts, name).grad,
                                   atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ep.gate.weight.grad, ref.gate.weight.grad, atol=1e-6, rtol=1e-5)


def test_expert_matmul_matches_a_per_expert_loop():
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([3, 0, 5, 2])
    x = torch.randn(10, 8, generator=g, requires_grad=True)
    w = torch.randn(4, 12, 8, generator=g, requires_grad=True)  # (E, n, k), a Linear's (out, in) per expert
    y = expert_matmul(x, w, counts)
    ref = torch.cat([xe @ w[e].T for e, xe in enumerate(x.split(counts.tolist()))])
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    (gx, gw) = torch.autograd.grad(y, (x, w), gy)
    (rx, rw) = torch.autograd.grad(ref, (x, w), gy)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    assert gw[1].abs().sum() == 0  # an expert without rows gets a zero gradient


def test_add_aux_loss_passes_x_through_and_gives_the_loss_gradient_one():
    x = torch.randn(3, 4, requires_grad=True)
    p = torch.tensor(2.0, requires_grad=True)
    y = AddAuxLoss.apply(x, p * p)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 4)) and p.grad.item() == 4.0  # d(p²)/dp


def test_expert_parallel_refuses_what_it_cannot_check():
    with pytest.raises(ValueError, match="capacity_factor must be None"):
        ExpertParallelExperts(pipeline_moe_config(capacity_factor=1.0), EPComm())
    with pytest.raises(ValueError, match="n_routed_experts=8 cannot be split evenly over 3"):
        ExpertParallelExperts(pipeline_moe_config(), EPComm(size=3))
    cfg = pipeline_moe_config()
    model = CausalLM(cfg, parts=choose_parts(cfg, routed_experts=expert_parallel(EPComm())))
    assert sum(isinstance(m, ExpertParallelExperts) for m in model.modules()) == 3  # layers 1..3; layer 0 is dense


# ---------------------------------------------------------------------------------------------------------
# real processes


def test_two_ranks_moe_pipeline_and_pure_expert_parallel_equal_one_process():
    """PP = 2 × EP = 1 (MoE layers inside stages, balance loss carried through the backward) and
    PP = 1 × EP = 2 (experts split over two processes, each with half the batch)."""
    cfg, (ids, tg) = pipeline_moe_config(), token_batch(16)
    ref = reference_step(cfg.to_dict(), 0, ids, tg)
    specs = [("1f1b", 1, 4, False), ("zb1p", 1, 4, False), ("dualpipe", 1, 4, True), ("1f1b", 2, 4, False)]
    outs = run_pipelines(_jobs(specs, cfg, ids, tg), 2, timeout=120)
    for (name, ep, m, overlap), out in zip(specs, outs):
        _assert_matches(out, ref, f"{name} EP={ep} overlap={overlap}")
        # 3 MoE layers × (dispatch + combine) × (forward + backward) per micro-batch of each replica
        assert out["all_to_alls"] == (3 * 4 * m * ep if ep > 1 else 0)


def test_four_ranks_pipeline_times_expert_parallel_equal_one_process():
    """PP = 2 × EP = 2 with every schedule; DualPipe(V) also with its F&B halves in two threads, and with an
    injected all-to-all latency (which must not change a single number)."""
    cfg, (ids, tg) = pipeline_moe_config(), token_batch(16)
    ref = reference_step(cfg.to_dict(), 0, ids, tg)
    specs = [("1f1b", 2, 4, False), ("zb1p", 2, 4, False), ("dualpipe", 2, 4, False), ("dualpipe", 2, 4, True),
             ("dualpipev", 2, 4, True)]
    late = _jobs([("dualpipe", 2, 4, True)], cfg, ids, tg, a2a_latency=0.05)  # last: first-touch costs paid
    *outs, late = run_pipelines(_jobs(specs, cfg, ids, tg) + late, 4, timeout=150)
    for (name, ep, m, overlap), out in zip(specs + [("dualpipe", 2, 4, True)], outs + [late]):
        _assert_matches(out, ref, f"{name} EP={ep} overlap={overlap}")
        assert out["all_to_alls"] == 3 * 4 * m * ep
    # 24 all-to-alls on every rank, 50 ms each: even perfectly overlapped in pairs that is >= 0.6 s
    # (the same step without the delay takes < 0.1 s here, so the bound does tell an injected delay)
    assert late["makespan"] >= 24 * 0.05 / 2


def test_the_capstones_model_with_mtp_through_pipeline_times_expert_parallel_equals_one_process():
    """The model `dslearn capstone` trains (mini-v3: MLA, sigmoid-gated node-limited DeepSeekMoE with the bias, the
    sequence-wise loss, MTP D = 1 with λ) takes one step on PP = 2 × EP = 2 processes as in one: MTP runs on the
    last stage with the first stage's embedding, which DualPipe(V) keep on the same rank (V3 §3.2); PP = 1 × EP = 4
    holds every stage on each rank. The MTP block's routed experts dispatch over the EP group too."""
    from dslearn.capstone import make_plan
    from dslearn.config import ModelConfig

    cfg = ModelConfig.from_dict(make_plan()["model"])
    assert cfg.num_nextn_predict_layers == 1 and cfg.topk_group < cfg.n_group
    ids, tg = token_batch(16, seq_len=32, vocab=cfg.vocab_size)
    ref = reference_step(cfg.to_dict(), 0, ids, tg)
    mtp_moe = {n for n in ref["expert_load"] if n.startswith("mtp.")}
    assert mtp_moe and ref["aux_loss"] > 0.1  # λ·L_MTP: far above the balance losses alone
    specs = [("dualpipev", 2, 4, True), ("dualpipe", 2, 4, False), ("1f1b", 4, 4, False)]
    outs = run_pipelines(_jobs(specs, cfg, ids, tg), 4, timeout=150)
    for (name, ep, _, overlap), out in zip(specs, outs):
        label = f"{name} EP={ep} overlap={overlap}"
        assert_same_step(out, ref, label)
        assert out["aux_loss"] == pytest.approx(ref["aux_loss"], abs=1e-6), label
        assert set(out["expert_load"]) == set(ref["expert_load"]), label
        for n, load in ref["expert_load"].items():
            assert torch.equal(out["expert_load"][n], load), f"{label} {n}"


def test_mtp_under_a_schedule_that_splits_embedding_and_head_is_refused():
    from dslearn.capstone import make_plan
    from dslearn.config import ModelConfig

    cfg = ModelConfig.from_dict(make_plan()["model"])
    ids, tg = token_batch(16, seq_len=32, vocab=cfg.vocab_size)
    with pytest.raises(WorkerError, match=r"under 1f1b: multi-token prediction runs on the last stage .* pipeline "
                                          r"rank 1 holds the last stage without the first; use dualpipe or dualpipev"):
        run_pipeline("1f1b", 4, cfg, ids, tg, 4, expert_parallel=2)


def test_bad_layouts_are_refused():
    cfg, (ids, tg) = pipeline_moe_config(), token_batch(16)
    with pytest.raises(WorkerError, match=r"expert_parallel=3 must be a positive divisor of the 2 ranks"):
        run_pipeline("1f1b", 2, cfg, ids, tg, 4, expert_parallel=3)
    with pytest.raises(WorkerError, match=r"cannot be cut into 2 expert-parallel slices of 3 equal micro-batches"):
        run_pipeline("1f1b", 2, cfg, ids, tg, 3, expert_parallel=2)


def test_a_failing_rank_inside_an_expert_parallel_group_stops_everyone():
    """Rank 3 raises halfway; its EP peer (rank 2) is then stuck in an all-to-all and its pipeline peers in
    receives: all are stopped, and the error names rank 3."""
    cfg, (ids, tg) = pipeline_moe_config(), token_batch(16)
    with pytest.raises(WorkerError, match=r"rank 3 failed: RuntimeError: injected failure on rank 3") as info:
        run_pipeline("1f1b", 4, cfg, ids, tg, 4, timeout=60, expert_parallel=2, fail={"rank": 3, "how": "raise"})
    assert info.value.rank == 3
