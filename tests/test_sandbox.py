"""The sandbox's contract: honest code passes, results compare by exact type, nothing the program does
raises out of ``run_code``, and without working isolation code rewards refuse to run (fail closed) unless
the caller opts in to the unprotected mode. The hostile programs are in test_sandbox_hostile.py."""


import pytest
from helpers import require_isolated_sandbox

import dslearn.rl.sandbox as sb
from dslearn.rl import rewards
from dslearn.rl.sandbox import Limits, SandboxUnavailable, run_code, same
from dslearn.rl.tasks import Problem

GENEROUS = Limits(wall_s=60.0)  # an honest program must pass on a loaded 2-core machine
SQUARE_CASES = [((2,), 4), ((3,), 9), ((-4,), 16)]


@pytest.fixture(params=["isolated", "basic"])
def mode(request):
    if request.param == "isolated":
        require_isolated_sandbox()
    return request.param


def run(source, cases=SQUARE_CASES, mode="isolated", limits=GENEROUS):
    return run_code(source, "f", cases, limits, allow_unprotected=mode == "basic", _mode=mode)


def test_an_honest_solution_passes(mode):
    r = run("def f(x):\n    return x * x\n", mode=mode)
    assert (r.passed, r.total, r.reward, r.error, r.mode) == (3, 3, 1.0, None, mode), r.error
    r = run("def f(x):\n    return x * x if x > 0 else 0\n", mode=mode)
    assert (r.passed, r.reward) == (2, 0.0), r.error
    r = run("def f(x):\n    return (x, x)\n", [((1,), (1, 1))], mode=mode)  # tuples compare as JSON lists
    assert r.reward == 1.0, r.error


def test_results_compare_by_exact_type(mode):
    assert run("def f(x):\n    return True\n", [((1,), 1)], mode=mode).reward == 0.0
    assert run("def f(x):\n    return 4.0\n", [((1,), 4)], mode=mode).reward == 0.0
    assert run("def f(x):\n    return 1\n", [((1,), True)], mode=mode).reward == 0.0
    assert run("def f(x):\n    return [1, 2.0]\n", [((1,), [1, 2.0])], mode=mode).reward == 1.0
    assert same({"a": [1, None]}, {"a": [1, None]}) and not same({"a": 1}, {"a": 1.0}) and not same(0, False)


@pytest.mark.parametrize("source", [
    "def f(x):\n    return '\ud800'\n",  # a lone surrogate: the source cannot even be encoded
    "import os\nos.symlink('/proc/kmsg', 'results.json')\n",
    "import os\nos.mkfifo('results.json')\n",
    "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\n",
    "def f(x):\n    return '\\udcff'\n",
])
def test_nothing_the_program_does_raises_out_of_run_code(mode, source):
    r = run(source, mode=mode, limits=Limits(wall_s=30.0))
    assert r.reward == 0.0, (r.error, r.outputs)


def test_basic_limits_hold_in_either_mode(mode):
    limits = Limits(wall_s=20.0, cpu_s=1, memory_mb=256, output_bytes=4096)
    for source in ("while True:\n    pass\n", "x = bytearray(10**10)\n", "while True:\n    print('x' * 10000)\n"):
        r = run(source, mode=mode, limits=limits)
        assert r.reward == 0.0 and r.error is not None, r.error
        assert len(r.stdout) <= limits.output_bytes


def test_without_isolation_code_rewards_fail_closed(monkeypatch):
    monkeypatch.setattr(sb, "sandbox_mode", lambda: "basic")
    monkeypatch.setattr(sb.shutil, "which", lambda name: None)
    monkeypatch.delenv(sb.OPT_IN, raising=False)
    with pytest.raises(SandboxUnavailable, match=r"refusing to run model-written code without isolation: "
                                                 r"bubblewrap is not installed \(Debian/Ubuntu: apt-get install "
                                                 r"bubblewrap.*allow_unprotected=True or set "
                                                 r"DSLEARN_ALLOW_UNPROTECTED_SANDBOX=1"):
        run_code("def f(x):\n    return x\n", "f", [((1,), 1)])
    problem = Problem("code", "square x", None, tests=tuple(SQUARE_CASES))
    text = "<think>square</think><answer>def f(x):\n    return x * x</answer>"
    with pytest.raises(SandboxUnavailable):
        rewards.accuracy_reward(problem, text)
    monkeypatch.setenv(sb.OPT_IN, "1")  # the explicit opt-in: runs, unprotected
    assert rewards.accuracy_reward(problem, text, Limits(wall_s=60.0)) == 1.0


def test_isolation_can_be_required_even_with_the_opt_in(monkeypatch):
    monkeypatch.setattr(sb, "sandbox_mode", lambda: "basic")
    with pytest.raises(SandboxUnavailable):
        run_code("def f(x):\n    return x\n", "f", [((1,), 1)], require_isolation=True, allow_unprotected=True)


def test_mode_is_basic_without_bubblewrap(monkeypatch):
    sb.sandbox_mode.cache_clear()
    monkeypatch.setattr(sb.shutil, "which", lambda name: None)
    try:
        assert sb.sandbox_mode() == "basic"
    finally:
        sb.sandbox_mode.cache_clear()
