import json
import re
import subprocess
import sys

import pytest

from dslearn.cli import _resolve_key, build_configs, build_parser, main
from dslearn.config import ConfigError, get_preset
from dslearn.envcheck import run_checks
from dslearn.train import TrainConfig


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
    with pytest.raises(SystemExit) as e:
        main(["train", *args, "--out", str(out), "--no-resume"])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err


def test_paper_presets_are_not_trainable(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "deepseek-v3", "--out", str(tmp_path / "x"), "--no-progress"])
    assert e.value.code == 2 and "accounting only" in capsys.readouterr().err


def test_tour_defaults_are_the_documented_run():
    args = build_parser().parse_args(["tour"])
    assert (args.preset, args.steps, args.bf16) == ("tiny", 300, False)


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "dslearn", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "tour" in done.stdout


# --- configuring a run: --config, --set, flags ---------------------------------------------------------
def configs(*argv):
    return build_configs(build_parser().parse_args(["train", "--out", "unused", *argv]))


def test_cli_defaults_are_trainconfig_defaults_and_tour_keeps_its_own():
    _, tcfg = configs()
    assert tcfg == TrainConfig()  # one source of the numbers: warm-up 20, not a second default in the CLI
    cfg, tour = build_configs(build_parser().parse_args(["tour"]))
    assert cfg == get_preset("tiny")
    assert (tour.steps, tour.batch_size, tour.lr, tour.warmup_steps, tour.eval_every) == (300, 16, 3e-3, 30, 100)


def test_help_shows_the_defaults_and_the_precedence(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "linear warm-up steps (default: 20)" in text and "optimizer steps (default: 200)" in text
    assert "--set KEY=VALUE" in text and "--config FILE.json" in text and "later layers override" in text


def test_set_reaches_any_model_or_train_field():
    cfg, tcfg = configs("--set", "num_attention_heads=8", "--set", "model.attention_type=mla",
                        "--set", "kv_lora_rank=16", "--set", "qk_nope_head_dim=8", "--set", "qk_rope_head_dim=8",
                        "--set", "v_head_dim=16", "--set", 'rope_scaling={"type": "yarn", "factor": 4}',
                        "--set", "q_lora_rank=null", "--set", "mla_impl=absorbed",
                        "--set", "train.weight_decay=0.0", "--set", "grad_clip=null", "--set", "schedule=cosine")
    assert (cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads) == (8, 16, 8)  # derived again
    assert cfg.attention_type == "mla" and cfg.mla_impl == "absorbed" and cfg.rope_scaling["factor"] == 4
    assert (tcfg.weight_decay, tcfg.grad_clip, tcfg.schedule) == (0.0, None, "cosine")


def test_precedence_preset_then_config_then_set_then_flags(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": {"num_hidden_layers": 3, "intermediate_size": 200},
                                "train": {"steps": 5, "lr": 1e-3, "warmup_steps": 4, "batch_size": 8}}))
    cfg, tcfg = configs("--config", str(path), "--set", "steps=6", "--set", "intermediate_size=300",
                        "--steps", "7")
    assert (cfg.num_hidden_layers, cfg.intermediate_size, cfg.hidden_size) == (3, 300, 128)  # file, --set, preset
    assert (tcfg.steps, tcfg.lr, tcfg.warmup_steps, tcfg.batch_size) == (7, 1e-3, 4, 8)  # flag, file, file, file
    _, tcfg = configs("--set", "warmup_steps=9", "--warmup-steps", "2")
    assert tcfg.warmup_steps == 2  # a flag given outranks --set; a flag's default (20) outranks nothing


def test_config_file_can_be_a_run_directorys_config(tmp_path):
    saved = {"model_config": get_preset("tiny").to_dict() | {"num_hidden_layers": 2, "extra": {}},
             "train_config": TrainConfig(steps=11).to_dict()}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg, tcfg = configs("--preset", "small", "--config", str(tmp_path / "config.json"))
    assert cfg == get_preset("tiny").replace(num_hidden_layers=2) and tcfg.steps == 11


@pytest.mark.parametrize("argv, message", [
    (["--set", "hiden_size=3"], r"^error: unknown config key .*'hiden_size' \(did you mean hidden_size"),
    (["--set", "train.lrr=1"], r"^error: unknown TrainConfig field: 'lrr' \(did you mean lr"),
    (["--set", "num_hidden_layers"], r"^error: --set 'num_hidden_layers': expected KEY=VALUE$"),
    (["--set", "num_hidden_layers=0"], r"^error: ModelConfig.num_hidden_layers must be an integer >= 1, got 0$"),
    (["--set", "rope_theta=NaN"], r"^error: ModelConfig.rope_theta must be a finite number > 0, got nan$"),
    (["--set", "steps=0"], r"^error: TrainConfig.steps must be an integer >= 1, got 0$"),
    (["--config", "missing.json"], r"^error: --config missing.json: "),
    (["--config", "{bad}"], r"^error: --config .*bad.json: not valid JSON"),
    (["--config", "{sections}"], r"^error: unknown section\(s\) .*'modle' \(did you mean model"),
])
def test_bad_settings_exit_2_with_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "sections.json").write_text('{"modle": {}}')
    argv = [a.replace("{bad}", str(tmp_path / "bad.json")).replace("{sections}", str(tmp_path / "sections.json"))
            for a in argv]
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "run"), "--no-progress", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(message, err), err
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_ambiguous_keys_must_be_prefixed():
    with pytest.raises(ConfigError, match="ambiguous.*write model.seed or train.seed"):
        _resolve_key("seed", {"seed", "hidden_size"}, {"seed", "lr"})
    assert _resolve_key("train.seed", {"seed"}, {"seed"}) == ("train", "seed")


def test_set_changes_what_is_trained(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--seq-len", "16",
                 "--eval-every", "0", "--no-progress", "--set", "num_hidden_layers=1", "--set", "eval_windows=2",
                 "--set", "train.warmup_steps=0", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_config"]["num_hidden_layers"] == 1
    assert (saved["train_config"]["eval_windows"], saved["train_config"]["warmup_steps"]) == (2, 0)


def test_check_runs_without_torch():
    """`dslearn check` reports a broken torch instead of failing on it, so its parser imports no torch."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from dslearn.cli import main\n"
            "sys.exit(main(['check']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "[FAIL] torch" in done.stdout, done.stderr
