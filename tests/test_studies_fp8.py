"""Chapter 05's experiments (dslearn.studies.fp8), small and fast: scaling error with outliers, FP8 training."""

import pytest

from dslearn.studies.fp8 import SCHEMES, relative_gap, scaling_error_study, train_compare

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


def test_fine_grained_scaling_wins_with_outliers():
    rows = scaling_error_study(magnitudes=(1, 1e4), kinds=("sparse", "channel"), T=128, K=512)
    get = {(r["kind"], r["magnitude"], r["scheme"]): r for r in rows}
    tiles, tensor = "1×128 tiles (DeepSeek)", "per tensor"
    assert set(SCHEMES) == {r["scheme"] for r in rows}
    for kind in ("sparse", "channel"):
        no_outliers = [get[(kind, 1.0, s)]["mean_elem_rel_error"] for s in SCHEMES]
        assert max(no_outliers) < 1.1 * min(no_outliers)  # without outliers the schemes tie
        assert get[(kind, 1e4, tiles)]["mean_elem_rel_error"] < 0.5 * get[(kind, 1e4, tensor)]["mean_elem_rel_error"]
        assert get[(kind, 1e4, tiles)]["flushed_to_zero"] < 0.2 * get[(kind, 1e4, tensor)]["flushed_to_zero"]


def test_train_compare_runs_and_reports_gaps():
    res = train_compare(modes=("fp32", "fp8", "fp32@1"), steps=3, batch_size=2, seq_len=32, eval_windows=2,
                        eval_every=0, warmup_steps=1, progress=False, model_overrides={"num_hidden_layers": 1})
    assert set(res) == {"fp32", "fp8", "fp32@1"}
    assert all(len(r["losses"]) == 3 and r["final_val_loss"] > 0 for r in res.values())
    assert res["fp32"]["losses"][0] != res["fp32@1"]["losses"][0]  # another seed: another init and batches
    gap = relative_gap(res, "fp8", "fp32")
    assert gap == pytest.approx(100 * (res["fp8"]["final_val_loss"] / res["fp32"]["final_val_loss"] - 1))
    with pytest.raises(ValueError, match="mode must be"):
        train_compare(modes=("fp16",), steps=1)
