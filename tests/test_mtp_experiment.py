"""Chapter 07's experiment (experiments/mtp/run_mtp.py): the runner on a 3-step budget, and the shipped files."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dslearn.export import from_hf

HERE = Path(__file__).resolve().parents[1] / "experiments" / "mtp"


@pytest.fixture(scope="module")
def run_mtp():
    spec = importlib.util.spec_from_file_location("run_mtp", HERE / "run_mtp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_one_trains_measures_and_exports(run_mtp, tmp_path):
    rec = run_mtp.run_one(depth=1, seed=0, steps=3, eval_windows=8, export_dir=str(tmp_path / "m"), accept_windows=4)
    assert rec["same_main_init_as_d0"]  # same seed → the D = 0 model's main weights: only MTP differs
    assert rec["export_roundtrip_identical"]
    assert rec["main_parameters"] < rec["parameters"]
    assert len(rec["train"]["mtp_loss1"]) == len(rec["train"]["ce_loss"]) > 0
    assert rec["train"]["mtp_lambda"][-1] == 0.1  # switched at round(2/3 · 3) = 2 steps
    acc = rec["acceptance"]
    assert acc["positions"] == 4 * 255 and 0 <= acc["vs_true_token"] <= 1 and 0 <= acc["vs_main_greedy"] <= 1
    assert rec["val"][-1]["step"] == 3 and rec["final_val_bpb"] > 0
    summary = run_mtp.summarize([rec, {**rec, "depth": 0, "final_val_bpb": rec["final_val_bpb"] + 0.5}])
    assert summary["1"]["val_bpb_minus_d0"]["mean"] == pytest.approx(-0.5)


def test_shipped_results_and_model_load():
    res = json.loads((HERE / "results.json").read_text())
    runs = res["runs"]
    assert {(r["depth"], r["seed"]) for r in runs} == {(d, s) for d in (0, 1, 2) for s in (0, 1, 2)}
    assert all(r["same_main_init_as_d0"] for r in runs)
    assert {"0", "1", "2"} <= set(res["summary"])
    info = json.loads((HERE / "run_info.json").read_text())
    assert info["corpus_sha256"] and info["torch"]
    model = from_hf(HERE / "model_d1")
    assert model.config.num_nextn_predict_layers == 1 and model.mtp is not None
    model.eval()
    x = torch.tensor([list(b"def main():\n    return 0\n")])
    assert torch.isfinite(model(x).logits).all()
