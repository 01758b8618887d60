"""Plots, devices, and the repository's promises about itself (packaging, CI, style)."""

import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import tomllib
import torch

from dslearn.devices import resolve_device

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]


def test_plot_loss_curves(tiny_config, text_streams, tmp_path):
    from dslearn.model import CausalLM
    from dslearn.plot import plot_loss_curves
    from dslearn.train import TrainConfig, Trainer

    cfg = TrainConfig(steps=4, batch_size=2, seq_len=16, eval_every=2, eval_windows=4, progress=False, log_every=1)
    Trainer(CausalLM(tiny_config), cfg, *text_streams, run_dir=tmp_path / "a").fit()
    ax = plot_loss_curves({"a": tmp_path / "a"})
    assert len(ax.lines) == 1 and len(ax.figure.axes[1].lines) == 1
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3, 4]
    with pytest.raises(FileNotFoundError, match="no metrics log"):
        plot_loss_curves(tmp_path / "missing")


def test_devices(monkeypatch):
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        resolve_device("cuda")


def _requirements(lines):
    return {re.sub(r"\s+", "", line) for line in lines}


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirements(project["dependencies"])
    for extra in ("dev", "triton"):
        declared |= _requirements(project["optional-dependencies"][extra])
    env_pip = []
    in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.strip() == "- pip:":
            in_pip = True
        elif in_pip and line.strip().startswith("- "):
            env_pip.append(line.strip()[2:])
    assert _requirements(env_pip) == declared


def test_test_command_covers_every_notebook_and_ci_pins_torch():
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "notebooks" in ini["testpaths"] and "tests" in ini["testpaths"]
    assert "--nbval-lax" in ini["addopts"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and "\npytest\n" in ci and "-eq 5" in ci
    readme = (ROOT / "README.md").read_text().splitlines()
    head = "\n".join(readme[:15])
    assert "dslearn tour" in head and "pytest" in head


def test_code_style_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_run_that_skips_a_notebook_fails():
    """The repository's conftest refuses a run over notebooks/ in which a notebook yields no test."""
    base = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    nb = str(ROOT / "notebooks")
    skipped = subprocess.run([*base, "-o", "addopts=", nb], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert skipped.returncode != 0
    assert "00_welcome.ipynb" in skipped.stdout + skipped.stderr
    assert "are in the run's paths but produced no tests" in skipped.stdout + skipped.stderr
    covered = subprocess.run([*base, "-o", "addopts=--nbval-lax", nb], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert covered.returncode == 0, covered.stdout + covered.stderr
