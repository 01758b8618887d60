"""Every user mistake on the command line and in the API: one line naming the option or field and what is
allowed, exit status 2 for a usage error (1 for a run that cannot go on), never a traceback, a hang or silence."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_dense_config

from dslearn.cli import build_parser, main
from dslearn.config import ACCOUNTING_ONLY, ConfigError, ModelConfig
from dslearn.generate import generate
from dslearn.model import CausalLM
from dslearn.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread_own_rng")
REPO = Path(__file__).resolve().parents[1]
QUICK = ["--steps", "2", "--batch-size", "2", "--seq-len", "32", "--eval-every", "0", "--warmup-steps", "1",
         "--no-progress"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(60):
        (root / f"mod_{i:02d}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i % 5}\n" * 40)
    return root


@pytest.fixture(autouse=True)
def use_small_corpus(small_corpus, monkeypatch):
    monkeypatch.setenv("DSLEARN_CORPUS_DIR", str(small_corpus))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_corpus):
    run = tmp_path_factory.mktemp("trained") / "run"
    old = os.environ.get("DSLEARN_CORPUS_DIR")
    os.environ["DSLEARN_CORPUS_DIR"] = str(small_corpus)
    try:
        assert main(["train", *QUICK, "--out", str(run)]) == 0
    finally:
        if old is None:
            del os.environ["DSLEARN_CORPUS_DIR"]
        else:
            os.environ["DSLEARN_CORPUS_DIR"] = old
    return run


def fails(argv, capsys, code=2) -> str:
    """Run the CLI; it must exit with ``code`` and one ``error: …`` line on stderr (returned)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- train -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], r"TrainConfig.steps must be an integer >= 1, got 0"),
    (["--lr", "nan"], r"TrainConfig.lr must be a finite number > 0, got nan"),
    (["--set", "beta1=2"], r"TrainConfig.beta1 must be in \[0, 1\], got 2"),
    (["--set", "weight_decay=-0.1"], r"TrainConfig.weight_decay must be .*>= 0, got -0.1"),
    (["--set", "min_lr_ratio=-0.5"], r"TrainConfig.min_lr_ratio must be in \[0, 1\], got -0.5"),
    (["--set", "checkpoint_minutes=0"], r"TrainConfig.checkpoint_minutes must be > 0 or None, got 0"),
    (["--set", "rope_theta=Infinity"], r"ModelConfig.rope_theta must be a finite number > 0, got inf"),
    (["--set", "initializer_range=NaN"], r"ModelConfig.initializer_range must be a finite number > 0, got nan"),
    (["--set", "routed_scaling_factor=Infinity"], r"ModelConfig.routed_scaling_factor must be a finite number"),
    (["--device", "tpu"], r"--device: unknown device 'tpu'; use 'cpu', 'cuda'"),
    (["--preset", "deepseek-v3"], r"argument --preset: preset 'deepseek-v3' describes a paper-scale model for "
                                  r"accounting only; train one of tiny, small"),
    (["--preset", "huge"], r"argument --preset: unknown preset 'huge'; choose one of tiny, small"),
    (["--steps", "many"], r"argument --steps: invalid int value: 'many'"),
])
def test_train_usage_errors(argv, message, tmp_path, capsys):
    line = fails(["train", "--out", str(tmp_path / "run"), "--no-progress", *argv], capsys)
    assert re.search(message, line), line
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path, capsys):
    line = fails(["train", "--out", str(tmp_path / "run"), "--device", "cuda", *QUICK], capsys)
    assert "--device: device 'cuda' was asked for, but torch sees no CUDA GPU; use 'cpu'" in line


@pytest.mark.parametrize("out", ["", "."])
def test_an_empty_out_is_refused_not_the_current_directory(out, capsys):
    line = fails(["train", "--out", out, *QUICK], capsys)
    assert "--out must name a run directory" in line


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert "is a file; --out must name a run directory" in fails(["train", "--out", str(tmp_path / "f"), *QUICK],
                                                                   capsys)


def test_a_changed_recipe_on_resume(trained, capsys, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    line = fails(["train", *QUICK, "--lr", "1e-3", "--out", str(run)], capsys)
    assert re.search(r"cannot resume exactly from .*lr \(checkpoint 0.002, now 0.001\)", line), line


def test_a_finished_run_says_so_without_nan_throughput(trained, capsys, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    capsys.readouterr()
    assert main(["train", *QUICK, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "resuming from step 2" in out and "already reached step 2" in out
    assert "nan" not in out.lower(), out


def test_a_run_directory_in_use(capsys, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
                               "from dslearn.train.checkpoint import RunLock; l = RunLock(sys.argv[1]); l.acquire();"
                               "print('locked', flush=True); time.sleep(60)", str(tmp_path / "run"), str(REPO)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = fails(["train", *QUICK, "--out", str(tmp_path / "run")], capsys, code=1)
        assert f"is in use by another process (pid {holder.pid})" in line
    finally:
        holder.kill()
        holder.wait()


def test_no_intact_checkpoint_is_one_line(trained, capsys, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for f in (run / "checkpoints").glob("step_*/model.safetensors"):
        f.write_bytes(b"garbage")
    assert "no intact checkpoint in" in fails(["sample", str(run)], capsys, code=1)


def test_tour_twice_into_one_out(tmp_path, capsys):
    argv = ["tour", *QUICK, "--out", str(tmp_path / "tour")]
    assert main(argv) == 0
    assert "already holds a run" in fails(argv, capsys)


def test_tour_with_an_empty_prompt_is_refused_before_training(tmp_path, capsys):
    assert "--prompt must not be empty" in fails(["tour", *QUICK, "--prompt", "", "--out", str(tmp_path / "t")],
                                                 capsys)
    assert not (tmp_path / "t").exists()


# --- sample --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "--prompt must not be empty"),
    (["--top-k", "0"], r"--top-k must be an integer in 1..256 \(the vocabulary\), got 0"),
    (["--temperature", "-1"], r"--temperature must be a finite number >= 0 \(0 = greedy\), got -1.0"),
    (["--temperature", "inf"], r"--temperature must be a finite number >= 0 \(0 = greedy\), got inf"),
    (["--max-new-tokens", "0"], r"--max-new-tokens must be an integer >= 1, got 0"),
    (["--num-samples", "0"], r"--num-samples must be an integer >= 1, got 0"),
    (["--device", "tpu"], r"--device: unknown device 'tpu'"),
    (["--prompt", "x" * 300], r"--prompt is 300 tokens; the model's context holds 256"),
])
def test_sample_usage_errors(trained, argv, message, capsys):
    line = fails(["sample", str(trained), *argv], capsys)
    assert re.search(message, line), line


def test_sample_from_a_missing_run(tmp_path, capsys):
    line = fails(["sample", str(tmp_path / "nowhere")], capsys)
    assert re.search(r"sample: .*nowhere does not exist \(give a run directory written by", line), line


# --- --help -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "sample", "tour"])
def test_help_shows_every_default_and_only_trainable_presets(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = sub.format_help()
    for action in sub._actions:
        if action.option_strings and not action.required and action.dest not in ("help", "config", "overrides"):
            assert "default" in action.help, f"{command} {action.option_strings[0]}: {action.help}"
    untrainable = sorted(ACCOUNTING_ONLY)  # the paper presets: accounting only, never built
    assert untrainable and not any(p in text for p in untrainable), text


# --- the corpus reader ----------------------------------------------------------------------------------------
def test_corpus_path_that_is_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "file.py").write_text("x = 1\n")
    monkeypatch.setenv("DSLEARN_CORPUS_DIR", str(tmp_path / "file.py"))
    line = fails(["train", *QUICK, "--out", str(tmp_path / "run")], capsys, code=1)
    assert "is a file, not a directory" in line


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_or_a_link_to_dev_zero_in_the_corpus_is_skipped(small_corpus, tmp_path):
    import shutil

    root = tmp_path / "corpus"
    shutil.copytree(small_corpus, root)
    os.mkfifo(root / "pipe.py")
    os.symlink("/dev/zero", root / "zero.py")
    os.symlink(root / "mod_01.py", root / "link.py")  # a link to a regular file is read
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from dslearn.data import load_corpus; "
            "c = load_corpus(sys.argv[1]); print(sorted(c.train_files + c.val_files))")
    done = subprocess.run([sys.executable, "-c", code, str(root), str(REPO)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "'pipe.py'" not in done.stdout and "'zero.py'" not in done.stdout and "'link.py'" in done.stdout
    env = {**os.environ, "DSLEARN_CORPUS_DIR": str(root), "PYTHONPATH": str(REPO)}
    check = subprocess.run([sys.executable, "-m", "dslearn", "check"], capture_output=True, text=True, timeout=300,
                           env=env)
    assert "corpus" in check.stdout, check.stderr


# --- Ctrl-C on the command line ----------------------------------------------------------------------------
def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, small_corpus):
    run = tmp_path / "run"
    env = {**os.environ, "DSLEARN_CORPUS_DIR": str(small_corpus), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dslearn", "train", "--steps", "100000", "--batch-size", "2",
                             "--seq-len", "32", "--eval-every", "0", "--no-progress", "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    end = time.monotonic() + 180
    while time.monotonic() < end and not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = int((run / "checkpoints" / "LATEST").read_text()[5:])
    assert step >= 10 and f"run the same command again to resume from step {step}" in err, err
    assert "Traceback" not in err


# --- the API ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return CausalLM(tiny_dense_config()).eval()


@pytest.mark.parametrize("prompts, error, message", [
    ("def ", TypeError, r"prompts must be a list of token-id lists .*got str"),
    ([1, 2, 3], TypeError, r"prompts must be a list of token-id lists .*got list of int"),
    (torch.tensor([[1, 2, 3]]), TypeError, r"prompts must be a list of token-id lists .*got Tensor"),
    ([[1, 2.5]], TypeError, r"prompts must be a list of token-id lists"),
    ([[1, 256]], ValueError, r"prompt token ids must be in \[0, 256\) \(the model's vocab_size\)"),
    ([[-1]], ValueError, r"prompt token ids must be in \[0, 256\)"),
])
def test_generate_with_bad_prompts(model, prompts, error, message):
    with pytest.raises(error, match=message):
        generate(model, prompts, 3)


@pytest.mark.parametrize("temperature", [math.inf, math.nan, -0.5])
def test_generate_with_a_bad_temperature(model, temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        generate(model, [[1, 2]], 3, temperature=temperature)


def test_model_input_shape_and_range(model):
    with pytest.raises(ValueError, match=r"input_ids must be a \(batch, seq_len\) tensor of token ids, got \(3,\); "
                                         r"add a batch dimension"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 256\) \(vocab_size\), got ids in \[1, 300\]"):
        model(torch.tensor([[1, 300]]))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 256\)"):
        model(torch.tensor([[-1, 3]]))


@pytest.mark.parametrize("cls, field, value", [
    (ModelConfig, "rope_theta", math.inf), (ModelConfig, "initializer_range", math.nan),
    (ModelConfig, "routed_scaling_factor", math.inf), (TrainConfig, "beta1", 2.0),
    (TrainConfig, "weight_decay", -0.1), (TrainConfig, "min_lr_ratio", -0.1), (TrainConfig, "lr", math.inf),
])
def test_non_finite_or_out_of_range_fields(cls, field, value):
    with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.{field} must be"):
        cls(**{field: value})
