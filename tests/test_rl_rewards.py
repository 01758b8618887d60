from collections import Counter

import pytest

from dslearn.rl import (
    UnsafeExpression,
    accuracy_reward,
    arithmetic,
    countdown,
    format_reward,
    parse_response,
    safe_eval,
    total_reward,
)
from dslearn.rl.safe_eval import numbers_used


def respond(answer, think="let me compute"):
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


# --- tasks --------------------------------------------------------------------------------
def test_arithmetic_answers_are_right_and_seeded():
    problems = arithmetic(50, digits=3, terms=3, ops="+-*/", seed=1)
    for p in problems:
        expr = p.question.removeprefix("What is ").removesuffix("?")
        assert safe_eval(expr) == int(p.answer)
        assert p.prompt.startswith(p.question) and "<answer>" in p.prompt
    assert problems == arithmetic(50, digits=3, terms=3, ops="+-*/", seed=1)
    assert problems != arithmetic(50, digits=3, terms=3, ops="+-*/", seed=2)
    assert len({p.question for p in problems}) == 50


def test_countdown_references_solve_their_problems():
    for p in countdown(60, n_numbers=4, max_number=25, seed=3):
        assert safe_eval(p.answer) == p.target and p.target > 0
        used = Counter(numbers_used(p.answer))
        assert all(used[k] <= Counter(p.numbers)[k] for k in used)
        assert accuracy_reward(p, respond(p.answer)) == 1.0


def test_held_out_never_overlaps_training():
    for make in (arithmetic, countdown):
        train = {p.question for p in make(300, seed=0, split="train")}
        held = {p.question for p in make(40, seed=0, split="held_out")}
        assert len(held) == 40 and not train & held
        assert all(p.split == "held_out" for p in make(10, seed=5, split="held_out"))


@pytest.mark.parametrize("call, message", [
    (lambda: arithmetic(0), "n must be"), (lambda: arithmetic(3, digits=9), "digits"),
    (lambda: arithmetic(3, ops="%"), "ops"), (lambda: countdown(3, n_numbers=1), "n_numbers"),
    (lambda: arithmetic(500, digits=1, terms=2, ops="+"), "could not draw"),
])
def test_bad_task_knobs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- the evaluator ------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("1+2*3", 7), ("(7-2)/5", 1), ("-3 + +4", 1), ("10/4", 2.5)])
def test_safe_eval_is_exact(text, value):
    assert safe_eval(text) == value


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "open('x')", "1.5 + 2", "a + 1", "[1, 2]", "1 if 1 else 2", "1/0",
    "9**9**9", "2**100", "10**13 + 1", "99999999 * 99999999 * 99999999", "'1' + '2'", "(lambda: 1)()", "1;2",
    "x" * 300, "2 <= 3", "~1", "7 // 2", "7 % 2",
])
def test_safe_eval_refuses(text):
    with pytest.raises(UnsafeExpression):
        safe_eval(text, allow_pow=True)


def test_bounded_powers_when_allowed():
    assert safe_eval("2**10", allow_pow=True, max_exponent=10) == 1024
    with pytest.raises(UnsafeExpression, match="BinOp is not allowed"):
        safe_eval("2**10")  # powers are off by default
    with pytest.raises(UnsafeExpression, match="exponents"):
        safe_eval("2**11", allow_pow=True, max_exponent=10)


# --- rewards and gaming -------------------------------------------------------------------
def test_a_correct_well_formed_response():
    p = arithmetic(1, seed=0)[0]
    assert accuracy_reward(p, respond(p.answer)) == 1.0
    assert format_reward(respond(p.answer)) == 1.0
    assert total_reward(p, respond(p.answer)) == pytest.approx(1.1)
    assert total_reward(p, respond(int(p.answer) + 1)) == pytest.approx(0.1)
    assert parse_response("  <think>a</think><answer> 42 </answer>\n") == ("a", "42")


GAMING = [
    "<answer>42</answer>",  # no thinking block
    "<think>x</think>",  # no answer
    "<think>x</think><answer></answer>",  # empty answer
    "<think>x</think><answer>   </answer>",  # whitespace answer
    "<think>x</think><answer>41</answer><answer>42</answer>",  # two answers, hoping one is right
    "<think>x</think><answer>42</answer> actually 43",  # text after the answer
    "<think><answer>42</answer></think><answer>42</answer>",  # tags nested in the thinking
    "<think>x</think><think>y</think><answer>42</answer>",  # repeated think blocks
    "<answer>42</answer><think>x</think>",  # wrong order
    "<think>x</think><answer>" + "4" * 70 + "</answer>",  # a long answer
    "<THINK>x</THINK><ANSWER>42</ANSWER>",  # wrong case
    "<think>x<answer>42</answer>",  # unclosed think
]


@pytest.mark.parametrize("text", GAMING)
def test_gaming_attempts_earn_nothing(text):
    from dslearn.rl import Problem

    p = Problem("arithmetic", "What is 40 + 2?", "42")
    assert format_reward(text) == 0.0
    assert accuracy_reward(p, text) == 0.0
    assert total_reward(p, text) == 0.0


def test_arithmetic_wants_the_number_not_an_expression():
    from dslearn.rl import Problem

    p = Problem("arithmetic", "What is 40 + 2?", "42")
    assert accuracy_reward(p, respond("40 + 2")) == 0.0
    assert accuracy_reward(p, respond("-42")) == 0.0
    assert accuracy_reward(p, respond("042")) == 1.0


def test_countdown_rules():
    from dslearn.rl import Problem

    p = Problem("countdown", "Using [3, 5, 7] make 26.", "3 * 7 + 5", (3, 5, 7), 26)
    assert accuracy_reward(p, respond("5 + 7 * 3")) == 1.0  # any valid expression counts
    assert accuracy_reward(p, respond("5 * 5 + 1")) == 0.0  # 5 twice, 1 not given
    assert accuracy_reward(p, respond("3 * 7 + 6")) == 0.0  # 6 not given
    assert accuracy_reward(p, respond("26")) == 0.0  # the target itself is not a given number
    assert accuracy_reward(p, respond("__import__('os')")) == 0.0
    assert accuracy_reward(p, respond("3 * 7 + 5.0")) == 0.0
    with pytest.raises(ValueError, match="no accuracy rule"):
        accuracy_reward(Problem("poetry", "q", "a"), respond("a"))


def test_code_problems_are_checked_by_running_hidden_tests():
    from dslearn.rl import code

    problems = code(10, n_tests=4, seed=0)
    assert len({p.question for p in problems}) == 10 and all(len(p.tests) == 4 for p in problems)
    for p in problems[:4]:
        assert accuracy_reward(p, respond(p.answer)) == 1.0, p.question
        assert format_reward(respond(p.answer), "code") == 1.0
    p = problems[0]
    assert accuracy_reward(p, respond("def f(*args):\n    return 0")) == 0.0
    assert accuracy_reward(p, respond("import os\nos.system('true')")) == 0.0
    assert accuracy_reward(p, "<answer>" + p.answer + "</answer>") == 0.0  # no thinking block
    assert format_reward(respond("x" * 1001), "code") == 0.0
    held = {q.question for q in code(5, seed=0, split="held_out")}
    assert not held & {q.question for q in code(40, seed=0, split="train")}
