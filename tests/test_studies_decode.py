"""Chapter 02's decode measurement (dslearn.studies.decode) on a tiny model: the bookkeeping, not the speed."""

import pytest
import torch

from dslearn.attention.cache_accounting import attention_variants, cache_bytes
from dslearn.model import CausalLM
from dslearn.studies.decode import measure_decode

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


@pytest.mark.parametrize("key, path", [("MHA", None), ("MLA", "naive"), ("MLA", "absorbed")])
def test_decode_points_carry_the_accounted_cache(tiny_config, key, path):
    cfg = attention_variants(tiny_config.replace(max_position_embeddings=48))[key]
    model = CausalLM(cfg, seed=0)
    points = measure_decode(model, key, [8, 24], steps=3, batch=2, warmup=1, path=path, prefill_chunk=5)
    assert [p.context for p in points] == [8, 24] and all(p.batch == 2 for p in points)
    for p in points:
        assert p.cache_bytes == cache_bytes(cfg, p.context, torch.float32, 2)  # measured == accounted
        assert p.ms_per_step > 0 and p.tokens_per_s == pytest.approx(2000 / p.ms_per_step)
        assert p.to_dict()["variant"] == key


def test_decode_rejects_contexts_it_cannot_measure(tiny_config):
    model = CausalLM(tiny_config, seed=0)
    with pytest.raises(ValueError, match="ascending"):
        measure_decode(model, "MHA", [16, 8])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        measure_decode(model, "MHA", [60], steps=8)
    with pytest.raises(ValueError, match="MLA path"):
        measure_decode(model, "MHA", [8], steps=2, path="fast")


@pytest.mark.parametrize("built, path, twins", [("naive", "absorbed", ["absorbed"]), ("naive", None, []),
                                                ("absorbed", None, ["naive"]), ("absorbed", "naive", ["naive"])])
def test_prefill_runs_naive_and_the_timed_steps_on_the_path_asked(tiny_config, monkeypatch, built, path, twins):
    """Paths are chosen through the config: a twin with the same weights per path the model was not built with."""
    from dslearn.studies import decode

    made, with_config = [], decode.with_config

    def spy(model, **changes):
        made.append(changes["mla_impl"])
        return with_config(model, **changes)

    monkeypatch.setattr(decode, "with_config", spy)
    cfg = attention_variants(tiny_config.replace(max_position_embeddings=48))["MLA"].replace(mla_impl=built)
    model = CausalLM(cfg, seed=0)
    measure_decode(model, "MLA", [8], steps=2, warmup=1, path=path)
    assert made == twins and model.config.mla_impl == built
