import pytest
import torch

from dslearn.generate import filter_logits, generate
from dslearn.model import CausalLM

PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4], [200, 100]]


@pytest.fixture(params=["mha", "gqa"])
def model(request, tiny_config):
    cfg = tiny_config if request.param == "mha" else tiny_config.replace(num_key_value_heads=1)
    return CausalLM(cfg, seed=1).eval()


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0),
                                      dict(temperature=0.7, top_k=20), dict(temperature=1.3, top_p=0.8)])
def test_cached_equals_uncached(model, sampling):
    runs = [generate(model, PROMPTS, 30, generator=torch.Generator().manual_seed(7), use_cache=cache, **sampling)
            for cache in (True, False)]
    for a, b in zip(*runs):
        assert a.tokens == b.tokens
        assert len(a.tokens) == 30 and a.finish_reason == "length"


def test_batched_equals_one_at_a_time(model):
    batch = generate(model, PROMPTS, 20, temperature=0.0)
    for prompt, got in zip(PROMPTS, batch):
        assert generate(model, [prompt], 20, temperature=0.0)[0].tokens == got.tokens
        assert got.prompt == prompt


def test_greedy_is_argmax(model):
    out = generate(model, [PROMPTS[1]], 5, temperature=0.0)[0].tokens
    seq = list(PROMPTS[1])
    for tok in out:
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1]
        assert tok == logits.argmax().item()
        seq.append(tok)


def test_stop_sequences_end_rows_early(model):
    free = generate(model, PROMPTS, 25, temperature=0.0)
    stop = free[1].tokens[6:8]  # a pair of tokens row 1 is known to produce
    out = generate(model, PROMPTS, 25, temperature=0.0, stop=[stop])
    row = out[1]
    assert row.finish_reason == "stop" and row.tokens[-2:] == stop
    assert row.tokens == free[1].tokens[:len(row.tokens)]
    assert len(row.tokens) <= 8
    for f, o in zip(free, out):  # other rows: identical tokens up to their own stop (if any)
        assert o.tokens == f.tokens[:len(o.tokens)]


def test_cached_and_uncached_agree_when_rows_leave_the_batch(model):
    free = generate(model, PROMPTS, 25, temperature=0.0)
    stops = [free[0].tokens[3:5], free[2].tokens[10:12]]
    kw = dict(temperature=0.9, top_k=30, stop=stops)
    a = generate(model, PROMPTS, 25, generator=torch.Generator().manual_seed(3), **kw)
    b = generate(model, PROMPTS, 25, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert [r.finish_reason for r in a] == [r.finish_reason for r in b]


def test_filter_logits_hand_case():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    inf = float("-inf")
    assert filter_logits(logits, top_k=2).isinf().tolist() == [[False, False, True, True]]
    # nucleus: 0.5 + 0.25 reaches 0.7, so the third and fourth tokens go
    assert filter_logits(logits, top_p=0.7).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(logits, top_p=0.76).isinf().tolist() == [[False, False, False, True]]
    assert filter_logits(logits, top_p=0.1).isinf().tolist() == [[False, True, True, True]]
    assert (filter_logits(logits, top_k=1) == torch.tensor([[logits[0, 0], inf, inf, inf]])).all()


def test_generation_keeps_training_mode_and_state(model):
    model.train()
    generate(model, [[1]], 3)
    assert model.training


def test_cache_memory_matches_its_shape(tiny_config):
    model = CausalLM(tiny_config.replace(num_key_value_heads=2))
    state = model.new_decode_state(batch=3, max_len=10)
    with torch.no_grad():
        model(torch.ones(3, 4, dtype=torch.long), state=state)
    cfg = model.config
    per_token = 2 * cfg.num_key_value_heads * cfg.head_dim * cfg.num_hidden_layers * 4  # K and V, fp32
    assert state.nbytes() == 3 * 4 * per_token


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[]), "prompts is empty"),
    (dict(prompts=[[1], []]), "at least one token"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(max_new_tokens=60), "exceeds the model's context"),
])
def test_bad_arguments(model, kwargs, message):
    args = dict(prompts=[[1, 2, 3, 4, 5]], max_new_tokens=5) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(model, **args)
