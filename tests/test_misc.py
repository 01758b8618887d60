"""Plots, devices, and the repository's promises about itself (packaging, CI, style)."""

import os
import re
import shlex
import shutil
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


def _readme_commands() -> list[list[list[str]]]:
    """The commands of the README's first code block: one per line, each a list of `&&`-joined argument lists."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    commands = []
    for line in block.splitlines():
        parts = [[]]
        for word in shlex.split(line, comments=True):
            if word == "&&":
                parts.append([])
            else:
                parts[-1].append(word)
        if parts[0]:
            commands.append(parts)
    return commands


def _local_extras(install: list[str]) -> set[str] | None:
    """The extras of this package that a `pip install` argument list asks for ("." → none, ".[a,b]" → {a, b});
    None when it does not install this package."""
    local = [w for w in install if w == "." or w.startswith(".[")]
    return set(re.findall(r"[\w-]+", local[0][1:])) if local else None


def _runs(command: list[str], *program: str) -> bool:
    """Whether an argument list runs ``program`` (directly or as ``python -m``)."""
    return command[:len(program)] == list(program) or command[:2 + len(program)] == ["python", "-m", *program]


def test_readme_opens_with_install_and_main_job_then_install_and_test_suite():
    """What a newcomer copies first: command 1 installs the package and runs the main job (the capstone),
    command 2 installs it with the extra that provides pytest/nbval and runs the test suite; that suite covers
    tests and notebooks."""
    (install, *_, run), (install_dev, *_, test) = _readme_commands()[:2]
    assert install[:2] == install_dev[:2] == ["pip", "install"]
    assert _local_extras(install) is not None, install
    assert _runs(run, "dslearn", "capstone"), run
    assert "dev" in (_local_extras(install_dev) or set()), install_dev
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert {re.match(r"[\w-]+", r).group() for r in dev} >= {"pytest", "nbval"}
    assert _runs(test, "pytest"), test
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "notebooks" in ini["testpaths"] and "tests" in ini["testpaths"]
    assert "--nbval-lax" in ini["addopts"]


@pytest.mark.skipif(shutil.which("bash") is None, reason=".ci/run is a bash script")
@pytest.mark.parametrize("pytest_rc", [0, 1, 5])
def test_ci_installs_pinned_torch_runs_the_readme_tests_and_fails_when_none_ran(tmp_path, pytest_rc):
    """.ci/run executed with python3/python/pip/pytest replaced by stubs that log their arguments: it must
    install torch==2.13.0, run the README's test command (then, optionally, notebooks again at other thread
    counts), and fail when pytest fails or collects nothing (exit 5), pass when it passes."""
    (tmp_path / "repo" / ".ci").mkdir(parents=True)
    script = shutil.copy(ROOT / ".ci" / "run", tmp_path / "repo" / ".ci" / "run")
    stubs, log = tmp_path / "bin", tmp_path / "calls.log"
    stubs.mkdir()
    pytest_stub = f'echo "pytest $*" >> {log}; exit {pytest_rc}'
    for name, body in {
        # `python3 -m venv DIR`: a virtual environment whose activate script changes nothing
        "python3": f'echo "python3 $*" >> {log}; for a; do d=$a; done; mkdir -p "$d/bin"; : > "$d/bin/activate"',
        "python": f'if [ "$1 $2" = "-m pytest" ]; then shift 2; {pytest_stub}; fi; echo "python $*" >> {log}',
        "pip": f'echo "pip $*" >> {log}',
        "pytest": pytest_stub,
    }.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode == 0) == (pytest_rc == 0), done.stdout + done.stderr
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    installs = [c for c in calls if "install" in c and (c[0] == "pip" or c[1:3] == ["-m", "pip"])]
    assert any("torch==2.13.0" in c for c in installs), installs
    readme_test = _readme_commands()[1][-1]
    readme_args = readme_test[1:] if readme_test[0] == "pytest" else readme_test[3:]
    runs = [c[1:] for c in calls if c[0] == "pytest"]
    assert runs[0] == readme_args, runs  # the README's test command first, whole
    # then only re-runs of notebooks (the thread-count invariance check), never a narrower stand-in for the suite
    assert all(r and all(a.startswith("-") or a.startswith("notebooks/") for a in r) for r in runs[1:]), runs


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
