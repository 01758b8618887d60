"""The static decode path (dslearn.model.static_decode) against the eager cached path, the reference.

Models are float64 with weights moved away from the init (``perturbed_model``), so that no two logits tie to
the ~1e-16 precision at which a fused, reordered sum differs: the tokens must then be identical (MoE models
stay float32: grouped_mm has no float64 kernel; the tolerance of their step test says so). The eager
static step is tested on every variant; the traced step with torch.compile's "aot_eager" backend (graph
capture, functionalised in-place cache writes; seconds) on every variant; Inductor's generated code — the
path ``generate(decode="compiled")`` runs — on one (compiling takes tens of seconds on a busy CPU).
"""

import warnings

import pytest
import torch
from helpers import mla_config, moe_config, perturbed_model, tiny_dense_config, v3_config

from dslearn.attention.adaptive_cache import apply_adaptive_cache
from dslearn.generate import generate
from dslearn.model import CausalLM
from dslearn.model import static_decode as sd
from dslearn.model.state import StaticDecodeState

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")

PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4], [200, 100]]  # ragged: left padding in one batch
CONFIGS = {
    "mha": tiny_dense_config(),
    "gqa": tiny_dense_config(num_key_value_heads=2),
    "mqa": tiny_dense_config(num_key_value_heads=1),
    "mla-naive": mla_config(),
    "mla-absorbed": mla_config(mla_impl="absorbed"),
    "moe": moe_config(),
    "moe-v3": v3_config(),
}
SAMPLING = [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.8, top_k=20),
            dict(temperature=1.2, top_p=0.9)]


def model_for(name: str) -> CausalLM:
    """float64, except MoE: grouped_mm has no float64 kernel, and the perturbed weights spread the logits."""
    model = perturbed_model(CONFIGS[name], seed=1)
    return model if CONFIGS[name].is_moe else model.double()


def tokens(model, decode, prompts=PROMPTS, n=24, seed=7, **kw):
    out = generate(model, prompts, n, generator=torch.Generator().manual_seed(seed), decode=decode, **kw)
    return [g.tokens for g in out], [g.finish_reason for g in out]


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("sampling", SAMPLING, ids=["greedy", "t1", "topk", "topp"])
def test_static_generation_equals_eager(name, sampling):
    model = model_for(name)
    assert tokens(model, "static", **sampling) == tokens(model, "eager", **sampling)


@pytest.mark.parametrize("name", ["mha", "mla-absorbed", "moe"])
def test_stop_sequences_and_a_shrinking_batch(name):
    """Rows stop at different steps: the static path keeps finished rows until at most half are alive, then
    shrinks the batch — tokens, finish reasons and random draws stay the eager path's."""
    model = model_for(name)
    prompts = PROMPTS * 2  # 8 rows
    for kw in (dict(temperature=0.0), dict(temperature=0.9, top_k=30)):
        free, _ = tokens(model, "eager", prompts, **kw)
        stops = [free[0][3:5], free[2][8:10], free[5][1:2]]  # rows 0, 2, 5 stop early (maybe others too)
        ref = tokens(model, "eager", prompts, stop=stops, **kw)
        assert "stop" in ref[1] and "length" in ref[1]
        assert tokens(model, "static", prompts, stop=stops, **kw) == ref


@pytest.mark.parametrize("name", list(CONFIGS))
def test_traced_step_equals_eager_step(name):
    """The step torch.compile traces (backend aot_eager: capture and functionalisation, no codegen) gives the
    eager forward's logits at every step of a ragged batch."""
    model = model_for(name)
    step = sd.DecodeStep(model, backend="aot_eager")
    assert step.compiled
    B = len(PROMPTS)
    P = max(len(p) for p in PROMPTS)
    ids = torch.zeros(B, P, dtype=torch.long)
    mask = torch.zeros(B, P, dtype=torch.bool)
    for i, p in enumerate(PROMPTS):
        ids[i, P - len(p):], mask[i, P - len(p):] = torch.tensor(p), True
    tol = dict(rtol=1e-5, atol=1e-5) if model.config.is_moe else dict(rtol=1e-12, atol=1e-12)
    ref_state, state = model.new_decode_state(B, 32), model.new_decode_state(B, 32, static=True)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, state=ref_state, last_only=True).logits[:, -1]
        got = model(ids, attention_mask=mask, state=state, last_only=True).logits[:, -1]
        torch.testing.assert_close(got, ref, **tol)
        for _ in range(6):
            nxt = ref.argmax(-1)[:, None]
            ref = model(nxt, state=ref_state, last_only=True).logits[:, -1]
            got = step(nxt, state)
            torch.testing.assert_close(got, ref, **tol)
    assert state.length == ref_state.length == P + 6
    assert torch.equal(state.next_pos, ref_state.next_pos)


@pytest.mark.parametrize("name", ["gqa"])  # one: Inductor takes minutes on a busy CPU (MLA absorbed: ~3)
def test_compiled_generation_equals_eager(name):
    """Inductor's code, as generate(decode='compiled') runs it: ragged batch, sampling, a stop that shrinks it."""
    if not sd.compile_available():
        pytest.skip("torch.compile is not available here (no C++ compiler or unsupported Python)")
    model = model_for(name)
    free, _ = tokens(model, "eager", temperature=0.9, top_k=40)
    kw = dict(temperature=0.9, top_k=40, stop=[free[1][2:4], free[3][4:5]])
    ref = tokens(model, "eager", **kw)
    assert "stop" in ref[1]
    assert tokens(model, "compiled", **kw) == ref
    assert sd.decode_step(model).compiled  # it ran compiled, no fallback


def test_traced_step_reads_the_weights_of_now():
    """GRPO updates the weights between rollouts: a step compiled before the update must use the new weights
    (parameters are inputs of the graph, not constants baked into it)."""
    model = model_for("mha")
    step = sd.DecodeStep(model, backend="aot_eager")
    x = torch.tensor([[5], [6]])
    with torch.no_grad():
        a = step(x, model.new_decode_state(2, 8, static=True))
        for p in model.parameters():
            p.mul_(1.1)
        b = step(x, model.new_decode_state(2, 8, static=True))
        ref = model(x, state=model.new_decode_state(2, 8), last_only=True).logits[:, -1]
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, ref, rtol=1e-12, atol=1e-12)


def test_static_state_bookkeeping():
    model = model_for("gqa")
    dyn, st = model.new_decode_state(2, 16), model.new_decode_state(2, 16, static=True)
    assert isinstance(st, StaticDecodeState) and st.static and not dyn.static
    x = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    with torch.no_grad():
        for s in (dyn, st):
            model(x, state=s)
    assert st.length == dyn.length == 5 and st.nbytes() == dyn.nbytes()
    assert st.caches[0].k.shape == dyn.caches[0].k.shape  # preallocated to max_len alike
    st.truncate(3)
    dyn.truncate(3)
    assert st.length == 3 and torch.equal(st.next_pos, dyn.next_pos) and torch.equal(st.key_valid, dyn.key_valid)
    st.select(torch.tensor([1]))
    assert st.caches[0].k.shape[0] == 1 and st.length == 3
    with pytest.raises(ValueError, match="decode state holds 16 positions; 17 needed"):
        sd.decode_step(model, compile=False)(torch.ones(1, 14, dtype=torch.long), st)


def test_compile_failure_falls_back_to_eager_with_a_warning():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no code for you")

    model = model_for("mha")
    step = sd.DecodeStep(model, backend=broken_backend)
    state = model.new_decode_state(1, 8, static=True)
    ref_state = model.new_decode_state(1, 8, static=True)
    x = torch.tensor([[3, 4]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = step(x, state)
    assert any("torch.compile failed" in str(w.message) for w in caught)
    assert not step.compiled and state.length == 2
    torch.testing.assert_close(got, sd.DecodeStep(model, compile=False)(x, ref_state), rtol=0, atol=0)


def test_compile_unavailable_means_eager(monkeypatch):
    monkeypatch.setattr(sd.shutil, "which", lambda name: None)  # no C++ compiler on PATH
    assert not sd.compile_available()
    assert not sd.DecodeStep(model_for("mha")).compiled


def test_models_without_static_caches_say_so():
    adaptive = CausalLM(CONFIGS["mla-absorbed"])
    apply_adaptive_cache(adaptive, first_layer=1, window=4)
    assert not sd.static_supported(adaptive)
    with pytest.raises(ValueError, match="no static-shape version"):
        adaptive.new_decode_state(1, 8, static=True)


def test_bad_arguments():
    model = model_for("mha")
    with pytest.raises(ValueError, match="decode must be one of"):
        generate(model, [[1]], 2, decode="fast")
    with pytest.raises(TypeError, match="StaticDecodeState"):
        sd.DecodeStep(model, compile=False)(torch.ones(1, 1, dtype=torch.long), model.new_decode_state(1, 4))
