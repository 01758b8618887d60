import subprocess
import sys

import pytest

from dslearn.cli import build_parser, main
from dslearn.envcheck import run_checks


def test_check_reports_ok_lines(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "[OK] python" in out and "[OK] torch" in out and "[OK] corpus" in out
    assert "interpreter mode" in out or "[WARN] triton" in out
    assert "[OK] bf16" in out and "[OK] threads" in out


def test_envcheck_marks_missing_modules(monkeypatch):
    import dslearn.envcheck as envcheck

    monkeypatch.setattr(envcheck, "REQUIRED", ("torch", "surely_not_a_module"))
    checks = {c.name: c for c in run_checks()}
    assert checks["surely_not_a_module"].status == "FAIL"
    assert "pip install surely_not_a_module" in checks["surely_not_a_module"].detail


@pytest.mark.parametrize("command", [[], ["check"], ["train"], ["sample"], ["tour"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: dslearn" in capsys.readouterr().out


def test_train_then_sample(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--preset", "tiny", "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--eval-every", "0",
            "--warmup-steps", "1", "--no-progress"]
    assert main(["train", *args, "--out", str(out)]) == 0
    assert (out / "checkpoints" / "LATEST").is_file() and (out / "metrics.jsonl").is_file()
    assert "validation" in capsys.readouterr().out
    assert main(["sample", str(out), "--prompt", "import ", "--max-new-tokens", "20", "--num-samples", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("import ") >= 2
    with pytest.raises(SystemExit, match="already holds a run"):
        try:
            main(["train", *args, "--out", str(out), "--no-resume"])
        except Exception as e:  # CheckpointError → surfaced as-is
            raise SystemExit(str(e)) from e


def test_paper_presets_are_not_trainable(tmp_path):
    with pytest.raises(SystemExit, match="accounting only"):
        main(["train", "--preset", "deepseek-v3", "--out", str(tmp_path / "x"), "--no-progress"])


def test_tour_defaults_are_the_documented_run():
    args = build_parser().parse_args(["tour"])
    assert (args.preset, args.steps, args.bf16) == ("tiny", 300, False)


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "dslearn", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "tour" in done.stdout
