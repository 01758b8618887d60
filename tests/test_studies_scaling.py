"""Chapter 01's experiments (dslearn.studies.scaling): M against torch's FLOP counter, the cached sweep runner."""

import pytest

from dslearn.config import get_preset
from dslearn.scaling import flops_per_token
from dslearn.scaling.sweep import RunSpec
from dslearn.studies import scaling as scaling_study
from dslearn.studies.scaling import measured_flops_per_token, run_sweep


def test_M_equals_the_flops_torch_counts(tiny_config, gqa_config):
    """torch's FlopCounterMode on a real forward+backward step: everything but the output head is M."""
    for cfg, seq in ((tiny_config, 64), (gqa_config, 32), (tiny_config.replace(intermediate_size=40), 16)):
        measured = measured_flops_per_token(cfg, seq)
        assert measured["non_embedding"] == flops_per_token(cfg, seq)
    with pytest.raises(ValueError, match="more than"):
        measured_flops_per_token(get_preset("deepseek-llm-7b"))


def test_sweep_caches_and_resumes(tmp_path, monkeypatch):
    calls = []

    def fake_run_one(spec):
        calls.append(spec.key())
        return {"key": spec.key(), "val_bpb": float(spec.hidden_size)}

    monkeypatch.setattr(scaling_study, "run_one", fake_run_one)
    specs = [RunSpec(budget=1e10, hidden_size=d) for d in (8, 16, 24)]
    out = tmp_path / "results.jsonl"
    run_sweep(specs[:2], out, workers=1, progress=False)
    rows = run_sweep(specs, out, workers=1, progress=False)
    assert [r["val_bpb"] for r in rows] == [8.0, 16.0, 24.0]
    assert len(calls) == 3, "finished runs must not run again"


def test_a_real_run_trains_to_its_budget():
    spec = RunSpec(budget=2e9, hidden_size=16, seq_len=32, batch_size=4)
    row = scaling_study.run_one(spec)
    assert row["steps"] == spec.steps and row["tokens"] == spec.steps * 4 * 32
    assert not row["diverged"] and 0 < row["val_bpb"] < 8.5
    assert len(row["corpus_sha256"]) == 64
