"""The capstone (chapter 10): the mini-v3 preset and its derivation, V3's schedule shape and batch ramp, FIM,
MFU, and the pipeline: --until/--from, exact resume after SIGKILL in the middle of a stage, the Hugging Face
export round trip, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
from capstone_helpers import REPO, tiny_plan
from helpers import child_env, latest_weights, launch_cmd

from dslearn.capstone import CapstoneError, family, run, size_for_budget, stage_names
from dslearn.capstone.sizing import accounting, fitted_laws
from dslearn.cli import main as cli_main
from dslearn.config import ModelConfig, get_preset
from dslearn.data import FIM_TOKENS, FIMStream, TokenStream, fim_prompt, psm
from dslearn.scaling import flops_per_token, mtp_flops_per_token
from dslearn.train import TrainConfig, lr_at
from dslearn.train.mfu import matmul_peak, model_flops_per_token
from dslearn.train.schedule import V3_PHASES, v3_multiplier

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")


# --- the preset and its derivation ----------------------------------------------------------------------------
def test_preset_is_what_the_fitted_laws_choose():
    size = size_for_budget()
    assert get_preset("mini-v3") == ModelConfig(**family(size["width"]))
    m_opt = size["M_opt"]  # the chosen width's M is the candidate nearest M_opt in log space
    assert all(abs(math.log(size["M"] / m_opt)) <= abs(math.log(m / m_opt)) for m in size["candidates"].values())
    laws = fitted_laws()
    assert "chapter 01" in laws["source"]
    assert size["tokens"] == pytest.approx(size["C"] / size["M"])
    assert size["lr"] == pytest.approx(laws["eta_opt"](size["C"]))


def test_preset_carries_every_v3_choice():
    c = get_preset("mini-v3")
    assert (c.attention_type, c.mla_impl, c.scoring_func, c.topk_method) == ("mla", "naive", "sigmoid", "noaux_tc")
    assert c.topk_group < c.n_group and c.bias_update_speed > 0 and c.seq_aux_loss_alpha > 0
    assert c.first_k_dense_replace == 1 and c.num_nextn_predict_layers == 1 and c.norm_topk_prob
    a = accounting(c)
    assert a["activated_params"] < a["total_params"]
    assert a["kv_elements_per_token"] == (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers


# --- V3's schedule shape and batch ramp -----------------------------------------------------------------------
def test_v3_schedule_has_four_phases():
    steps, peak, warm = 1000, 1.0, 10
    lrs = [lr_at(s, steps, peak, warm, "v3") for s in range(steps)]
    assert lrs[0] == pytest.approx(0.1) and lrs[warm - 1] == pytest.approx(1.0)
    start, end = V3_PHASES["decay_start"], V3_PHASES["decay_end"]
    assert start == pytest.approx(10 / 14.8) and end == pytest.approx(14.3 / 14.8)
    assert all(v == 1.0 for v in lrs[warm:int(start * steps)])  # constant
    decay = lrs[int(start * steps) + 1:int(end * steps)]
    assert all(a >= b for a, b in zip(decay, decay[1:])) and decay[0] > 0.9 and decay[-1] < 0.12  # cosine
    assert v3_multiplier(0.98) == pytest.approx(2.2e-5 / 2.2e-4)  # tail 1
    assert lrs[-1] == pytest.approx(7.3e-6 / 2.2e-4)  # tail 2


def test_batch_ramp_grows_to_batch_size_in_whole_micro_batches():
    cfg = TrainConfig(steps=20, batch_size=16, grad_accum_steps=2, batch_ramp_start=4, batch_ramp_steps=6)
    sizes = [cfg.batch_size_at(s) for s in range(10)]
    assert sizes[0] == 4 and sizes[6:] == [16] * 4
    assert all(a <= b for a, b in zip(sizes, sizes[1:])) and all(b % 2 == 0 for b in sizes)
    assert cfg.tokens_before(10, 8) == sum(sizes) * 8
    with pytest.raises(ValueError, match="batch_ramp_start and batch_ramp_steps"):
        TrainConfig(batch_ramp_start=4)
    with pytest.raises(ValueError, match="batch_ramp_start"):
        TrainConfig(batch_size=8, batch_ramp_start=16, batch_ramp_steps=2)


# --- fill-in-the-middle -----------------------------------------------------------------------------------------
def test_psm_rearranges_prefix_suffix_middle():
    t = torch.tensor(list(b"abcdefgh"))
    out = psm(t, 2, 5)
    assert out.tolist() == [FIM_TOKENS[0], *b"ab", FIM_TOKENS[1], *b"fgh", FIM_TOKENS[2], *b"cde"]
    assert fim_prompt("ab", "fgh") == out.tolist()[:8]
    with pytest.raises(ValueError, match="cut1"):
        psm(t, 5, 2)


def test_fim_stream_rate_shape_and_determinism():
    text = bytes(range(32, 127)) * 200
    s = FIMStream(text, rate=0.1)
    x, y = s.batch(3, 400, 32, seed=1)
    assert x.shape == y.shape == (400, 32) and torch.equal(x[:, 1:], y[:, :-1])
    rows = (x == FIM_TOKENS[0]).any(1) | (y == FIM_TOKENS[0]).any(1)
    assert 0.05 < rows.float().mean() < 0.15  # about one window in ten
    x2, _ = s.batch(3, 400, 32, seed=1)
    assert torch.equal(x, x2)
    plain, _ = TokenStream(text).batch(3, 400, 32, seed=1)
    assert torch.equal(x[~rows], plain[~rows])  # the other windows are untouched
    with pytest.raises(ValueError, match="rate"):
        FIMStream(text, rate=1.5)


# --- MFU ----------------------------------------------------------------------------------------------------------
def test_model_flops_and_measured_peak():
    c = get_preset("mini-v3")
    assert model_flops_per_token(c, 128) == flops_per_token(c, 128) + 6 * 256 * c.hidden_size + mtp_flops_per_token(
        c, 128)
    p = matmul_peak("fp32", size=256, repeats=2)
    assert p > 1e8 and matmul_peak("fp32", size=256, repeats=2) == p  # measured once per process
    with pytest.raises(ValueError, match="dtype"):
        matmul_peak("fp64")


# --- the pipeline ---------------------------------------------------------------------------------------------
TRAINING = ["pretrain", "long_context", "cold_start_sft", "reasoning_rl", "rejection_sampling_sft", "final_rl"]


def _child(out, *kill, until="final_rl"):
    return subprocess.run(launch_cmd(1, str(REPO / "tests" / "capstone_helpers.py"), str(out), until, *map(str, kill)),
                          env=child_env(), capture_output=True, text=True, timeout=600)


def _metrics(path):
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_per_s") and k != "mfu"} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref")
    done = _child(ref)
    assert done.returncode == 0, done.stderr[-2000:]
    return ref


# pretraining (the batch ramp, FIM), GRPO (sampled rollouts) and rejection-sampling SFT (its sampled data,
# kept in pairs.json, must be the same after the kill)
@pytest.mark.parametrize("stage, step", [("pretrain", 6), ("reasoning_rl", 1), ("rejection_sampling_sft", 1)])
def test_sigkill_mid_stage_then_the_same_command_resumes_exactly(uninterrupted, tmp_path, stage, step):
    ref, cut = uninterrupted, tmp_path / "cut"
    killed = _child(cut, stage, step)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (cut / stage / "summary.json").exists()
    resumed = _child(cut)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in TRAINING:
        assert _metrics(cut / name) == _metrics(ref / name), name
        a, b = latest_weights(ref / name), latest_weights(cut / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((cut / stage / "summary.json").read_text())["resumed"]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The reduced pipeline through every stage (export checks transformers itself; report writes the files)."""
    pytest.importorskip("transformers", reason="the export stage checks the folder with transformers")
    out = tmp_path_factory.mktemp("capstone")
    torch.set_num_threads(1)
    done = run(out, progress=False, plan=tiny_plan(), echo=lambda s: None)
    return out, done


def test_whole_pipeline_writes_every_stage(whole_run):
    out, done = whole_run
    assert list(done) == stage_names()
    assert all(done[n]["cpu_s"] > 0 and done[n]["wall_s"] > 0 for n in done)
    ex = done["export"]
    assert ex["max_abs_logit_diff"] <= 1e-4 and ex["greedy_equal"] == ex["prompts"]
    rows = json.loads((out / "evaluate" / "table.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == TRAINING
    assert all(0 < r["val_bpb"] < 8 and 0 <= r["moe_maxvio"] for r in rows)
    assert all(0 <= r["pass@1"] <= 1 and 0 <= r["format"] <= 1 for r in rows)  # reasoning scored at every stage
    rs = done["rejection_sampling_sft"]
    assert rs["rs_sampled"] > 0 and (out / "rejection_sampling_sft" / "pairs.json").is_file()
    assert done["reasoning_rl"]["steps"] == tiny_plan()["post_training"]["reasoning_rl"]["steps"]
    lc = done["long_context"]
    assert {"long_bpb_plain_rope", "long_bpb_yarn_untrained", "long_bpb_after"} <= set(lc)
    report = (out / "report.md").read_text()
    assert "MFU" in report and "DeepSeek-V3" in report
    assert "chapter 09's R1 stages" in report and "**final_rl**" in report
    assert all((out / "report" / f).stat().st_size > 1000
               for f in ("losses.png", "pretraining.png", "experts.png", "rl.png"))


def test_until_stops_and_from_reruns_the_same_numbers(whole_run, tmp_path):
    out, done = whole_run
    again = run(out, progress=False, plan=tiny_plan(), echo=lambda s: None, until="pretrain")  # all done: skipped
    assert again["pretrain"] == done["pretrain"]
    before = latest_weights(out / "long_context")
    redone = run(out, progress=False, plan=tiny_plan(), echo=lambda s: None, from_="long_context",
                 until="long_context")
    assert not (out / "evaluate").exists()  # --from cleared the later stages; --until stopped before them
    after = latest_weights(out / "long_context")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert redone["long_context"]["long_bpb_after"] == done["long_context"]["long_bpb_after"]
    fresh = tmp_path / "fresh"
    run(fresh, progress=False, plan=tiny_plan(), echo=lambda s: None, until="pretrain")
    assert not (fresh / "long_context").exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(until="nope"), "--until 'nope': unknown stage; the stages are pretrain, long_context, cold_start_sft"),
    (dict(from_="pretrian"), "--from 'pretrian': unknown stage"),
    (dict(from_="export", until="pretrain"), "--from export comes after --until pretrain"),
    (dict(from_="long_context"), "--from long_context needs the stages before it finished; pretrain is not"),
    (dict(threads=0), "--threads must be an integer >= 1"),
])
def test_bad_input_is_one_line(tmp_path, kwargs, match):
    with pytest.raises(CapstoneError, match=match) as e:
        run(tmp_path / "run", progress=False, plan=tiny_plan(), echo=lambda s: None, **kwargs)
    assert "\n" not in str(e.value)


def test_a_different_plan_in_the_same_directory_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.json").write_text(json.dumps({"quick": False}))
    with pytest.raises(CapstoneError, match="holds a default run whose plan differs"):
        run(tmp_path / "run", progress=False, plan=tiny_plan(), echo=lambda s: None, until="pretrain")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CapstoneError, match="is a file"):
        run(tmp_path / "file", progress=False, plan=tiny_plan(), echo=lambda s: None)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert cli_main(["capstone", "--quick", "--out", str(tmp_path / "r"), "--until", "nope", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --until 'nope': unknown stage")


def test_rejection_sampling_that_keeps_nothing_stops_with_one_line(tmp_path):
    plan = tiny_plan()  # twelve pretraining steps: the RL checkpoint writes no verifiable answer
    plan["post_training"]["rejection_sampling"]["allow_empty"] = False
    with pytest.raises(CapstoneError, match="rejection sampling kept none of 4 samples") as e:
        run(tmp_path / "run", progress=False, plan=plan, echo=lambda s: None, until="rejection_sampling_sft")
    assert "\n" not in str(e.value) and "--from reasoning_rl" in str(e.value)


def test_fp8_run_pretrains_and_exports_the_unquantised_twin(tmp_path):
    """--fp8: every linear layer (routed experts included) quantised with V3's tile scales, through pretraining
    and the context extension (the post-training stages share their code with the default run);
    transformers has no FP8 GEMMs, so the export is the same weights at full precision, checked as usual."""
    pytest.importorskip("transformers", reason="the export stage checks the folder with transformers")
    from dslearn.capstone import stages
    from dslearn.capstone.pipeline import Context

    plan = tiny_plan()
    plan["model"]["linear_impl"] = "fp8"
    run(tmp_path / "run", progress=False, plan=plan, echo=lambda s: None, until="long_context")
    ex = stages.export(Context(tmp_path / "run", plan, progress=False))  # the newest checkpoint: long_context's
    assert ex["stage"] == "long_context"
    assert ex["max_abs_logit_diff"] <= 1e-4 and ex["greedy_equal"] == ex["prompts"]
    assert 0 < ex["fp8_vs_full_precision_max_abs_logit_diff"] < 1.0  # quantisation moves the logits, a little
    meta = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert meta["model"]["linear_impl"] == "fp8"
