import math

import numpy as np
import pytest

from dslearn.config import ModelConfig, get_preset
from dslearn.model import CausalLM
from dslearn.scaling import (
    M_closed_form,
    fit_isoflop,
    fit_parametric,
    fit_power_law,
    flops_per_token,
    gpu_hours_for,
    mfu,
    optimal_allocation,
    optimal_hyperparameters,
    parameter_counts,
    six_n1,
    six_n2,
    training_cost,
)
from dslearn.scaling.data_quality import degrade
from dslearn.scaling.sweep import MIN_STEPS, RunSpec, isoflop_grid, width_for, with_law_hyperparameters

# DeepSeek-LLM Table 3: (n_layer, d_model) with n_vocab 102400, l_seq 4096 → (6N1/M, 6N2/M) as printed
TABLE_3 = [((8, 512), (0.43, 1.32)), ((12, 768), (0.53, 1.02)), ((24, 1024), (0.60, 0.81)),
           ((24, 2048), (0.75, 0.88)), ((32, 4096), (0.85, 0.91)), ((40, 5120), (0.88, 0.92)),
           ((80, 8192), (0.92, 0.94))]


@pytest.mark.parametrize("shape, ratios", TABLE_3)
def test_table_3_ratios(shape, ratios):
    L, d = shape
    M = M_closed_form(L, d, 4096)
    assert six_n1(L, d) / M == pytest.approx(ratios[0], abs=0.011)
    assert six_n2(L, d, 102400) / M == pytest.approx(ratios[1], abs=0.011)


def test_general_M_reduces_to_the_closed_form_for_standard_layers():
    cfg = ModelConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=6,
                      max_position_embeddings=512)  # FFN 3·d·(8d/3) = 8d², attention 4d²
    assert flops_per_token(cfg) == M_closed_form(3, 384, 512)
    assert flops_per_token(cfg, seq_len=128) == M_closed_form(3, 384, 128)


@pytest.mark.parametrize("preset, lr, batch", [("deepseek-llm-7b", 4.2e-4, 2304), ("deepseek-llm-67b", 3.2e-4, 4608)])
def test_laws_reproduce_the_released_hyperparameters(preset, lr, batch):
    cfg = get_preset(preset)
    C = flops_per_token(cfg, 4096) * 2e12  # both models: 2T tokens
    hp = optimal_hyperparameters(C, seq_len=4096)
    assert hp["lr"] == pytest.approx(lr, rel=0.05)
    assert hp["batch_sequences"] == pytest.approx(batch, rel=0.05)


def test_v3_training_cost():
    cost = training_cost({"pre-training": 2664e3, "context extension": 119e3, "post-training": 5e3}, 2.0)
    assert cost.gpu_hours == 2788e3 and cost.dollars == pytest.approx(5.576e6)
    with pytest.raises(ValueError, match="non-negative"):
        training_cost({"x": -1.0}, 2.0)


def test_cost_helpers():
    assert gpu_hours_for(3600 * 1e15, 1e15, 1.0) == pytest.approx(1.0)
    assert mfu(1e9, 1e5, 1e15) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        gpu_hours_for(1e20, 1e15, 1.5)
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(1.0, 1.0, 0.0)


def test_parameter_counts_match_the_module(tiny_config, gqa_config):
    for cfg in (tiny_config, gqa_config):
        counts = parameter_counts(cfg)
        model = CausalLM(cfg)
        assert counts["total"] == model.num_parameters()
        assert counts["non_embedding"] == model.num_parameters(non_embedding=True)
        assert counts["activated"] == counts["total"]


@pytest.mark.parametrize("preset, total, activated", [("deepseek-v2", 236e9, 21e9), ("deepseek-v3", 671e9, 37e9),
                                                      ("deepseek-llm-7b", 6.9e9, 6.9e9)])
def test_paper_parameter_counts(preset, total, activated):
    counts = parameter_counts(get_preset(preset))
    assert counts["total"] == pytest.approx(total, rel=0.02)
    assert counts["activated"] == pytest.approx(activated, rel=0.03)


def test_allocation_laws_spend_the_budget():
    for C in (1e18, 1e21, 1e24):
        alloc = optimal_allocation(C)
        assert alloc["M"] * alloc["D"] == pytest.approx(C, rel=1e-3)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="compute budget"):
            optimal_allocation(bad)


def test_power_law_fit():
    x = np.array([1e10, 1e11, 1e12, 1e13])
    law = fit_power_law(x, 3.0 * x**-0.125 * np.exp([0.01, -0.01, 0.005, 0.0]))
    assert law.exponent == pytest.approx(-0.125, abs=0.01) and law.exponent_std < 0.02
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [1, 2])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2, -3], [1, 2, 3])
    with pytest.raises(ValueError, match="differ in length"):
        fit_power_law([1, 2, 3], [1, 2])


# The synthetic truth: L(M, D) = E + A/M^α + B/D^β, whose optimum under M·D = C is M_opt = G·C^a with
# G = (αA/(βB))^(1/(α+β)) and a = β/(α+β) (set dL/dM = 0 with D = C/M); D_opt = C/M_opt = C^(1−a)/G.
E, A, B, ALPHA, BETA = 1.8, 400.0, 2000.0, 0.35, 0.37
TRUE_A = BETA / (ALPHA + BETA)  # 0.5139
TRUE_G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))


def _true_loss(M, D):
    return E + A / M**ALPHA + B / D**BETA


def _true_M_opt(C):
    return TRUE_G * C**TRUE_A


def _synthetic_runs(noise=0.002, budgets=(1e17, 1e18, 1e19)):
    """5 model sizes per budget, spread e^±1.5 around the true optimum; the loss carries log-normal noise."""
    rng = np.random.default_rng(0)
    rows = []
    for C in budgets:
        m_opt = _true_M_opt(C)
        for k in np.linspace(-1.5, 1.5, 5):
            M = m_opt * math.exp(k)
            D = C / M
            rows.append((C, M, D, _true_loss(M, D) * math.exp(rng.normal(0, noise))))
    return [np.array(col) for col in zip(*rows)], TRUE_A


def test_isoflop_fit_recovers_the_allocation_exponent():
    """Against the known optimum, not against the fit's own D = C/M. Tolerances: a parabola in ln M is not
    exactly the true curve (noise-free, every vertex sits 0.6% low); with 0.2% noise on each loss the
    vertices scatter by a few percent (bootstrap std of the exponent ≈ 0.015) — 10% on M_opt and D_opt at
    each budget, 0.03 (2 std) on the exponents."""
    (C, M, D, L), a = _synthetic_runs()
    fit = fit_isoflop(C, M, L, n_bootstrap=100)
    assert fit.M_law.exponent == pytest.approx(a, abs=0.03)
    assert fit.D_law.exponent == pytest.approx(1 - a, abs=0.03)
    assert all(fit.in_range) and 0 < fit.M_law.exponent_std < 0.1
    for m, d, c in zip(fit.M_opt, fit.D_opt, fit.budgets):
        assert m == pytest.approx(_true_M_opt(c), rel=0.1)
        assert d == pytest.approx(c / _true_M_opt(c), rel=0.1)
        assert fit.M_law(c) == pytest.approx(_true_M_opt(c), rel=0.1)
        assert fit.D_law(c) == pytest.approx(c / _true_M_opt(c), rel=0.1)


def test_isoflop_fit_rejects_bad_grids():
    (C, M, D, L), _ = _synthetic_runs()
    with pytest.raises(ValueError, match="at least 3 distinct model sizes"):
        fit_isoflop(C[:12], M[:12], L[:12])  # the last budget keeps only 2 sizes
    with pytest.raises(ValueError, match="at least 3 budgets"):
        fit_isoflop(C[:10], M[:10], L[:10])
    with pytest.raises(ValueError, match="no minimum"):
        fit_isoflop(C, M, -L)
    with pytest.raises(ValueError, match="finite"):
        fit_isoflop(C, M, np.where(np.arange(15) == 3, np.nan, L))


def test_parametric_fit_recovers_the_exponent():
    """Checked against the true law: the fitted curve stays within 3× the 0.1% noise of the noise-free loss
    at every run (observed 0.14%), and its optimum at C = 1e18 is the true one within 5% (observed 0.9%)."""
    (C, M, D, L), a = _synthetic_runs(noise=0.001)
    small_grid = {"a": [0.0, 6.0], "b": [6.0, 12.0], "e": [0.0, 1.0], "alpha": [0.3, 0.6], "beta": [0.3, 0.6]}
    fit = fit_parametric(M, D, L, n_bootstrap=4, grid=small_grid)
    assert fit.a == pytest.approx(a, abs=0.02)
    assert fit.E == pytest.approx(E, rel=0.05)
    assert np.max(np.abs(fit.loss(M, D) / _true_loss(M, D) - 1)) < 3 * 0.001
    m_opt, d_opt = fit.optimal(1e18)
    assert m_opt == pytest.approx(_true_M_opt(1e18), rel=0.05)
    assert d_opt == pytest.approx(1e18 / _true_M_opt(1e18), rel=0.05)
    assert fit.loss(m_opt, d_opt) <= min(fit.loss(m_opt * 2, d_opt / 2), fit.loss(m_opt / 2, d_opt * 2))
    with pytest.raises(ValueError, match="at least 6 runs"):
        fit_parametric(M[:5], D[:5], L[:5])


def test_run_spec_accounting():
    spec = RunSpec(budget=1e11, hidden_size=32, seq_len=128, batch_size=8)
    cfg = spec.config()  # d = 32 in heads of 8 → 4 heads; SwiGLU width 8/3·32 = 85.3 → 80 (a multiple of 16)
    assert (cfg.num_attention_heads, cfg.intermediate_size, cfg.num_hidden_layers) == (4, 80, 2)
    # by hand: 6 × 2 layers × (attention 4·32² + FFN 3·32·80 matrix parameters)
    #        + scores and weighted sum: 6 × 2 layers × 128 positions × 4 heads × (8 + 8)
    assert spec.M == 6 * 2 * (4 * 32 * 32 + 3 * 32 * 80) + 6 * 2 * 128 * 4 * 16 == 239_616
    assert spec.tokens == 417_334  # 1e11 / 239 616 = 417 334.4
    assert spec.steps == 407  # 417 334 tokens // (8 sequences × 128 tokens)
    assert spec.key() == RunSpec(budget=1e11, hidden_size=32, seq_len=128, batch_size=8).key()
    assert spec.key() != RunSpec(budget=1e11, hidden_size=32, seq_len=128, batch_size=8, data="degraded").key()
    with pytest.raises(ValueError, match="multiple of head_dim"):
        RunSpec(budget=1e11, hidden_size=30).config()


def test_width_grid_is_symmetric_in_log_M():
    d = width_for(M_closed_form(2, 64, 128), 2, 128, multiple=8)
    assert d == 64
    specs = isoflop_grid([1e12], lambda C: M_closed_form(2, 64, 128), n_sizes=5, spread=4.0)
    logs = np.log([s.M for s in specs])
    assert len(specs) == 5 and specs[2].hidden_size == 64
    assert logs[2] - logs[0] == pytest.approx(logs[4] - logs[2], rel=0.2)
    with pytest.raises(ValueError, match="at least 3 sizes"):
        isoflop_grid([1e12], lambda C: 1e5, n_sizes=2)


def test_law_hyperparameters_keep_enough_steps():
    spec = with_law_hyperparameters(RunSpec(budget=3e11, hidden_size=64))
    assert spec.steps >= MIN_STEPS
    assert spec.lr == pytest.approx(optimal_hyperparameters(3e11)["lr"])


def test_degrade_is_seeded_and_keeps_length():
    data = bytes(range(256)) * 200
    a, b = degrade(data, seed=1), degrade(data, seed=1)
    assert len(a) == len(data) and bool((a == b).all())
    assert not bool((a == degrade(data, seed=2)).all())
    clean = np.frombuffer(data, dtype=np.uint8)
    noisy = degrade(data, dup_fraction=0.0, noise_rate=0.1, seed=0).numpy()
    assert 0.07 < (noisy != clean).mean() < 0.11  # 10% replaced, 1/256 of those by the same byte
    with pytest.raises(ValueError, match="dup_fraction"):
        degrade(data, dup_fraction=1.0)
