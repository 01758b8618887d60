"""Cache truncation, MTP drafting, and self-speculative decoding (dslearn/speculative.py).

Greedy identity runs in float64: verifying 2 positions in one forward sums in another order than decoding 1,
and in float32 a near-tie between the top two logits could flip an argmax (see the module docstring). The
sampling test compares against the main model's exact distribution, enumerated on a vocabulary of 8.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import MLA, mla_config, perturbed_model, tiny_dense_config, v3_config

from dslearn.attention.adaptive_cache import AdaptiveLatentCache, apply_adaptive_cache
from dslearn.generate import filter_logits, generate
from dslearn.model import CausalLM
from dslearn.model import static_decode as sd
from dslearn.speculative import SpeculativeResult, expected_tokens_per_step, speculative_generate

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

CACHE_CONFIGS = {
    "mha": tiny_dense_config(),
    "gqa": tiny_dense_config(num_key_value_heads=2),
    "mla-naive": mla_config(mla_impl="naive"),
    "mla-absorbed": mla_config(mla_impl="absorbed"),
}


# --- truncate -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CACHE_CONFIGS))
@pytest.mark.parametrize("keep", [9, 7])  # roll back to the prompt's end, or into the prompt
def test_truncate_then_refeed_equals_recompute(name, keep):
    model = perturbed_model(CACHE_CONFIGS[name], seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 9), generator=g)  # two prompts, the first left-padded to 9
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False
    junk, new = torch.randint(0, 256, (2, 3), generator=g), torch.randint(0, 256, (2, 4), generator=g)
    with torch.no_grad():
        state = model.new_decode_state(2, 20)
        model(ids, attention_mask=mask, state=state)
        model(junk, state=state)  # 3 positions that will be rejected
        state.truncate(keep)
        assert state.length == keep and not state.key_valid[:, keep:].any()
        assert state.next_pos.tolist() == mask[:, :keep].sum(1).tolist()
        got = model(torch.cat([ids[:, keep:], new], 1), state=state).logits[:, -4:]
        full_ids, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones(2, 4, dtype=torch.bool)], 1)
        want = model(full_ids, attention_mask=full_mask).logits[:, -4:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_truncate_zeroes_dropped_positions_and_checks_length():
    model = CausalLM(mla_config())
    state = model.new_decode_state(1, 8)
    with torch.no_grad():
        model(torch.arange(5)[None], state=state)
    state.truncate(3)
    assert not state.caches[0].kv[:, 3:].any() and state.caches[0].kv[:, :3].any()
    for bad in (4, -1, 2.0):
        with pytest.raises(ValueError, match="truncate length"):
            state.truncate(bad)
    with pytest.raises(ValueError, match="truncate length"):
        state.caches[0].truncate(9)


def test_adaptive_cache_cannot_truncate():
    model = CausalLM(mla_config())
    apply_adaptive_cache(model, first_layer=1, window=2)
    state = model.new_decode_state(1, 8)
    assert isinstance(state.caches[1], AdaptiveLatentCache)
    with torch.no_grad():
        model(torch.arange(5)[None], state=state)
    with pytest.raises(NotImplementedError, match="cannot truncate.*evicted"):
        state.truncate(3)


# --- what drafting needs from the model ----------------------------------------------------------------------

def test_hidden_states_are_the_backbone_output_before_the_final_norm():
    model = perturbed_model(tiny_dense_config(num_nextn_predict_layers=1))
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(ids)
        out = model(ids, return_hidden=True)
        last = model(ids, return_hidden=True, last_only=True)
    assert plain.hidden is None and out.hidden.shape == (2, 7, 64)
    torch.testing.assert_close(out.logits, plain.logits, atol=0, rtol=0)
    torch.testing.assert_close(model.head(out.hidden), out.logits)
    torch.testing.assert_close(last.hidden, out.hidden)


@pytest.mark.parametrize("cfg", [tiny_dense_config(num_nextn_predict_layers=2),
                                 mla_config(num_nextn_predict_layers=2, mla_impl="absorbed")], ids=["mha", "mla"])
def test_incremental_drafting_equals_the_training_forward(cfg):
    """Each depth run in chunks with its own cache gives the h^k and P^k of the full (training) MTP pass."""
    model = perturbed_model(cfg)
    T = 11
    x = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(0))
    emb = model.model.embed_tokens
    with torch.no_grad():
        h0 = model(x, return_hidden=True).hidden
        states = model.mtp.new_decode_state(1, T)
        h_prev_full, h_prev_inc = h0, h0
        for k in (1, 2):
            n = T - k
            inputs = model.prepare(1, n, x.device)
            want = model.mtp[k - 1](h_prev_full[:, :n], emb(x[:, k:]), inputs.rope, inputs.attn_mask)
            pieces, lo = [], 0
            for size in (3, 1, n - 4):  # chunks of 3, 1, then the rest
                pieces.append(model.mtp.draft(k, h_prev_inc[:, lo:lo + size], emb(x[:, lo + k:lo + k + size]),
                                              states[k - 1], model.prepare))
                lo += size
            got = torch.cat(pieces, 1)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model.mtp.logits(k, got, model.lm_head),
                                       model.lm_head(model.mtp[k - 1].shared_head.norm(want)), atol=1e-5, rtol=1e-5)
            h_prev_full, h_prev_inc = want, got


# --- greedy: identical to plain greedy decoding --------------------------------------------------------------

GREEDY_CONFIGS = {
    "mha-D1": tiny_dense_config(num_nextn_predict_layers=1),
    "gqa-D2": tiny_dense_config(num_nextn_predict_layers=2, num_key_value_heads=2),
    "mla-D1": mla_config(num_nextn_predict_layers=1, mla_impl="absorbed"),
    "mla-naive-D2": mla_config(num_nextn_predict_layers=2),
    "v3-mla-moe-D1": v3_config(num_nextn_predict_layers=1, moe_impl="loop", **MLA),  # float64 needs the loop
    "v3-mla-moe-D2": v3_config(num_nextn_predict_layers=2, moe_impl="loop", **MLA),
}


def _prompts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(1, 12, (), generator=g)),), generator=g).tolist()
            for _ in range(count)]


def _assert_greedy_identical(model, prompts, new_tokens) -> SpeculativeResult:
    total = SpeculativeResult(tokens=[])
    for prompt in prompts:
        want = generate(model, [prompt], new_tokens, temperature=0.0)[0].tokens
        got = speculative_generate(model, prompt, new_tokens)
        assert got.tokens == want, prompt
        total.drafted += got.drafted
        total.accepted += got.accepted
        total.verify_steps += got.verify_steps
    return total


@pytest.mark.parametrize("name", list(GREEDY_CONFIGS))
def test_greedy_speculative_equals_greedy(name):
    """Untrained MTP: almost every draft is rejected, so this holds the rejection/roll-back path to greedy.
    A vocabulary of 12 makes some drafts right by chance, so acceptances happen too."""
    torch.manual_seed(0)
    cfg = GREEDY_CONFIGS[name].replace(vocab_size=12)
    model = perturbed_model(cfg, seed=3).double()
    stats = _assert_greedy_identical(model, _prompts(20, 12), 24)
    assert 0 < stats.accepted < stats.drafted


def _rule_batches(steps: int, vocab: int, seq: int = 24, batch: int = 16):
    """Arithmetic sequences x_t = (a + s·t) mod vocab, a and s ∈ {1, 2, 3} random per row: after two tokens
    the next ones are determined, so both the main model and the MTP depths learn them in seconds."""
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        step = torch.randint(1, 4, (batch, 1), generator=g)
        x = (start + step * torch.arange(seq + 1)) % vocab
        yield x[:, :-1], x[:, 1:]


@pytest.fixture(scope="module")
def trained_d2():
    """A small D = 2 model trained a few seconds on arithmetic sequences, so the drafts are mostly accepted."""
    torch.manual_seed(0)
    cfg = tiny_dense_config(vocab_size=16, num_nextn_predict_layers=2)
    model = CausalLM(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for x, y in _rule_batches(60, 16):
        opt.zero_grad()
        model(x, targets=y).loss.backward()
        opt.step()
    return model.eval().double()


def test_greedy_identical_with_high_acceptance(trained_d2):
    """Accepted drafts, the bonus token, both depths' drafts and their roll-back all run here."""
    prompts = [[a, (a + s) % 16] for a, s in itertools.product(range(0, 16, 2), range(1, 4))][:14]
    prompts += [[5], [3, 9, 1], [0, 0], [7, 2, 7], [1, 1, 4], [15, 8]]  # off the rule: some rejections
    stats = _assert_greedy_identical(trained_d2, prompts, 30)
    assert stats.accepted / stats.drafted > 0.8
    assert stats.accepted < stats.drafted
    assert stats.verify_steps < 20 * 29 / 2.5  # D = 2: close to 3 tokens per verify step


# --- the static and compiled paths: the eager path's tokens ------------------------------------------------

def _same_as_eager(model, decode: str, prompts, new_tokens, **sampling) -> SpeculativeResult:
    """speculative_generate(decode=...) against decode="eager": the same tokens and the same draft counts
    (seeded sampling: the same generator seed, so the same draws in the same order)."""
    total = SpeculativeResult(tokens=[])
    for i, prompt in enumerate(prompts):
        runs = [speculative_generate(model, prompt, new_tokens, decode=d, **sampling,
                                     generator=torch.Generator().manual_seed(i)) for d in ("eager", decode)]
        ref, got = runs
        assert got.tokens == ref.tokens, (decode, prompt)
        assert (got.drafted, got.accepted, got.verify_steps) == (ref.drafted, ref.accepted, ref.verify_steps)
        total.drafted += got.drafted
        total.accepted += got.accepted
    return total


@pytest.mark.parametrize("sampling", [{}, dict(temperature=0.9, top_k=8)], ids=["greedy", "sampled"])
@pytest.mark.parametrize("name", list(GREEDY_CONFIGS))
def test_static_speculative_equals_eager(name, sampling):
    """decode="static": verify and draft passes on StaticDecodeStates, roll-back by truncate, the tokens of
    the eager path (float64; MLA naive and absorbed, MoE, D = 1 and 2; rejections and acceptances both)."""
    torch.manual_seed(0)
    model = perturbed_model(GREEDY_CONFIGS[name].replace(vocab_size=12), seed=3).double()
    stats = _same_as_eager(model, "static", _prompts(6, 12), 20, **sampling)
    assert 0 < stats.accepted < stats.drafted


def test_static_speculative_with_high_acceptance(trained_d2):
    """Mostly accepted drafts: both depths' chunks grow past one position and the bonus token is taken."""
    prompts = [[a, (a + 1) % 16] for a in range(0, 16, 3)] + [[5], [3, 9, 1]]
    stats = _same_as_eager(trained_d2, "static", prompts, 30)
    assert stats.accepted / stats.drafted > 0.8


def test_compiled_speculative_equals_eager():
    """decode="compiled": Inductor's verify and draft graphs (greedy and seeded sampling, one model: compiling
    takes seconds per graph), and no fallback to the eager step."""
    if not sd.compile_available():
        pytest.skip("torch.compile is not available here (no C++ compiler or unsupported Python)")
    torch.manual_seed(0)
    model = perturbed_model(GREEDY_CONFIGS["mla-D1"].replace(vocab_size=12), seed=3).double()
    prompts = _prompts(3, 12)
    _same_as_eager(model, "compiled", prompts, 16)
    _same_as_eager(model, "compiled", prompts, 16, temperature=0.9, top_k=8)
    assert sd.decode_step(model, kind="verify").compiled and sd.decode_step(model, kind="draft").compiled


# --- sampling: the main model's distribution -----------------------------------------------------------------

SAMPLES = 1500  # a wrong acceptance rule (always keep drafts, or resample from p) fails with p-values < 1e-10


def _exact_joint(model, prompt, n, temperature, top_k) -> torch.Tensor:
    """P(t_1..t_n | prompt) under plain sampling, enumerated: (V,)*n tensor."""
    V = model.config.vocab_size
    joint = torch.ones(())
    for i in range(n):
        prefixes = list(itertools.product(range(V), repeat=i))
        ids = torch.tensor([prompt + list(p) for p in prefixes])
        with torch.no_grad():
            logits = model(ids).logits[:, -1].double()
        probs = filter_logits(logits / temperature, top_k).softmax(-1).view(*([V] * i), V)
        joint = joint[..., None] * probs
    return joint


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit; cells expected below 5 pooled into one."""
    counts, probs = counts.flatten().double(), probs.flatten()
    expected = probs * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))  # chi2 survival function


@pytest.mark.parametrize("depth, temperature, top_k", [(1, 1.0, None), (2, 0.8, 5)])
def test_sampling_keeps_the_main_models_distribution(depth, temperature, top_k):
    """SAMPLES speculative samples of n = D + 2 tokens (so a step with D drafts happens) against the exact joint
    distribution of plain sampling: chi-square on each consecutive pair (t_i, t_{i+1}), each at p > 1e-3 (a
    correct sampler fails one of them with probability < 3e-3; the seeds are fixed, so the test is
    deterministic). The first draft's distribution q is far from p (checked), so a sampler that kept drafts
    without the min(1, p/q) rule, or resampled from p instead of norm(max(0, p − q)), would fail by a wide margin."""
    torch.manual_seed(0)
    cfg = tiny_dense_config(vocab_size=8, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                            num_attention_heads=2, num_nextn_predict_layers=depth)
    model = perturbed_model(cfg, seed=5)
    with torch.no_grad():  # give p some shape: larger logits, far from uniform
        model.lm_head.weight.mul_(4)
    prompt, n = [1, 2, 3], depth + 2
    exact = _exact_joint(model, prompt, n, temperature, top_k)  # (8,)*n
    # power: the first draft's distribution q(t2 | t1) differs from p(t2 | t1) in total variation
    with torch.no_grad():
        out = model(torch.tensor([prompt + [t] for t in range(8)]), return_hidden=True)
        emb = model.model.embed_tokens(torch.tensor([[2, 3, t] for t in range(8)]))
        inputs = model.prepare(8, 3, emb.device)
        h1 = model.mtp[0](out.hidden[:, :3], emb, inputs.rope, inputs.attn_mask)[:, -1]
        q = filter_logits(model.mtp.logits(1, h1, model.lm_head).double() / temperature, top_k).softmax(-1)
    first2 = exact.sum(tuple(range(2, n)))  # (t1, t2)
    p2 = first2 / first2.sum(1, keepdim=True).clamp(min=1e-300)  # p(t2 | t1) (rows top-k never reaches: 0)
    tv = 0.5 * (p2 - q).abs().sum(1)
    assert float((first2.sum(1) * tv).sum()) > 0.3
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(*([8] * n))
    steps_with_all_drafts = 0
    for _ in range(SAMPLES):
        r = speculative_generate(model, prompt, n, temperature=temperature, top_k=top_k, generator=g)
        counts[tuple(r.tokens)] += 1
        steps_with_all_drafts += r.drafted >= depth
    assert steps_with_all_drafts == SAMPLES
    for i in range(n - 1):
        others = tuple(j for j in range(n) if j not in (i, i + 1))
        assert _chi2_pvalue(counts.sum(others), exact.sum(others)) > 1e-3, f"(t{i + 1}, t{i + 2})"


# --- the speed-up model and bad input -------------------------------------------------------------------------

def test_expected_tokens_per_step():
    assert expected_tokens_per_step(0.0) == 1.0
    assert expected_tokens_per_step(0.85) == pytest.approx(1.85)  # V3's acceptance: ~1.8× tokens per step
    assert expected_tokens_per_step(1.0, depth=2) == 3.0
    assert expected_tokens_per_step(0.5, depth=2) == pytest.approx(1.75)
    assert expected_tokens_per_step(0.3, depth=0) == 1.0
    for bad in (dict(acceptance=1.5), dict(acceptance=-0.1), dict(acceptance=0.5, depth=-1)):
        with pytest.raises(ValueError):
            expected_tokens_per_step(**bad)


def test_result_counts_and_training_mode_kept():
    model = perturbed_model(tiny_dense_config(num_nextn_predict_layers=1)).train()
    r = speculative_generate(model, [1, 2, 3], 10)
    assert model.training
    assert len(r.tokens) == 10
    # D = 1: one draft per verify step, but none when only one token is left to make
    assert r.verify_steps - 1 <= r.drafted <= r.verify_steps
    assert r.verify_steps + r.accepted == 9  # the prefill gives the first token, each step 1 + accepted
    assert r.acceptance_rate == r.accepted / r.drafted
    assert speculative_generate(model, [1, 2, 3], 1).verify_steps == 0


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(prompt=[[1, 2], [3, 4]]), ValueError, "batch 1"),
    (dict(prompt=[]), ValueError, "at least one token"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(max_new_tokens=62), ValueError, "exceeds the model's context"),
    (dict(decode="fast"), ValueError, "decode must be one of"),
])
def test_bad_arguments(kwargs, error, message):
    model = CausalLM(tiny_dense_config(num_nextn_predict_layers=1))
    args = dict(model=model, prompt=[1, 2, 3], max_new_tokens=5) | kwargs
    with pytest.raises(error, match=message):
        speculative_generate(**args)


def test_model_without_mtp_is_refused():
    with pytest.raises(ValueError, match="multi-token prediction"):
        speculative_generate(CausalLM(tiny_dense_config()), [1, 2], 4)
