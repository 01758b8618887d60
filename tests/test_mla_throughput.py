"""Chapter 02's fixed-memory throughput study (dslearn.studies.decode): batch sizing, cache filling, the V2 sums."""

import pytest
import torch
from helpers import mla_config, tiny_dense_config

from dslearn.attention.cache_accounting import cache_bytes
from dslearn.model import CausalLM
from dslearn.studies.decode import fill_state, max_batch, measure_fixed_memory, v2_throughput_accounting

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def test_each_variant_runs_at_the_largest_batch_its_cache_allows():
    models = {"MHA": CausalLM(tiny_dense_config()), "MLA": CausalLM(mla_config(mla_impl="absorbed"))}
    context, budget = 40, 200_000
    points = measure_fixed_memory(models, context, budget, steps=2, warmup=1)
    for p, model in zip(points, models.values()):
        per_row = cache_bytes(model.config, context, torch.float32, 1)  # the accounting, in fp32
        assert p.cache_bytes_per_row == per_row
        assert p.batch == budget // per_row and p.batch * per_row <= budget < (p.batch + 1) * per_row
        assert p.tokens_per_s > 0
    mha, mla = points
    assert mla.batch > mha.batch  # the smaller cache buys the larger batch: the point of the study


def test_fill_state_makes_a_state_that_decodes_like_a_prefilled_one():
    model = CausalLM(tiny_dense_config(num_key_value_heads=2)).eval()
    state = model.new_decode_state(3, 16)
    fill_state(state, 10, torch.Generator().manual_seed(0))
    assert state.length == 10 and state.key_valid[:, :10].all() and not state.key_valid[:, 10:].any()
    assert (state.next_pos == 10).all() and state.caches[0].k[:, :, :10].abs().sum() > 0
    with torch.no_grad():
        model(torch.ones(3, 1, dtype=torch.long), state=state)
    assert state.length == 11


def test_budget_too_small_for_one_row():
    with pytest.raises(ValueError, match="budget_bytes=10 cannot hold one sequence's cache"):
        max_batch(100, 10)


def test_v2_accounting_reproduces_the_papers_93_percent():
    a = v2_throughput_accounting()
    assert a["bytes_per_token_67b_bf16"] == 2 * 8 * 128 * 95 * 2  # GQA: 8 groups of 128, 95 layers, BF16
    assert a["bytes_per_token_v2_bf16"] == (512 + 64) * 60 * 2  # d_c + d_h^R, 60 layers
    assert round(100 * a["cache_reduction_deployed"], 1) == 93.3  # V2 §3.2.3 with its ~6-bit cache
    assert a["compute_ratio"] < a["reported_throughput_ratio"] < a["max_batch_ratio_same_memory"]
