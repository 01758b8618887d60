"""Chapter 09's template (reserved byte tokens) and world (graded additions, annotator, two languages)."""

import pytest

from dslearn.rl import template as T
from dslearn.rl import world as W


# --- template -----------------------------------------------------------------------------------
def test_reserved_bytes_never_occur_in_utf8_text():
    text = "what is 1+2? ÆØÅ é 中文 🙂 \x00\x7f"
    ids = list(text.encode("utf-8"))
    assert not set(ids) & set(range(0xF8, 0x100))
    assert T.encode_prompt(text) == [T.USER, *ids, T.ASSISTANT]


def test_parse_roundtrip_and_display():
    r = T.encode_response("5+7=12 put 2\nso 12", " 12 ")
    assert T.parse(r) == T.Parsed("5+7=12 put 2\nso 12", "12")
    assert T.display(T.encode_prompt("q") + r) == ("<|user|>q<|assistant|><think>5+7=12 put 2\nso 12</think>"
                                                   "<answer> 12 </answer><|eos|>")


@pytest.mark.parametrize("bad", [
    [T.THINK, 49, T.END_THINK, T.ANSWER, 49, T.END_ANSWER],  # no EOS
    [T.THINK, 49, T.END_THINK, T.ANSWER, 49, T.END_ANSWER, T.EOS, 49],  # text after EOS
    [49, T.THINK, 49, T.END_THINK, T.ANSWER, 49, T.END_ANSWER, T.EOS],  # text before THINK
    [T.THINK, 49, T.END_THINK, 32, T.ANSWER, 49, T.END_ANSWER, T.EOS],  # text between the blocks
    [T.THINK, T.THINK, 49, T.END_THINK, T.ANSWER, 49, T.END_ANSWER, T.EOS],  # repeated tag
    [T.ANSWER, 49, T.END_ANSWER, T.THINK, 49, T.END_THINK, T.EOS],  # blocks swapped
    [T.THINK, 49, T.END_THINK, T.ANSWER, 32, T.END_ANSWER, T.EOS],  # empty answer
    [T.THINK, 0xC3, T.END_THINK, T.ANSWER, 49, T.END_ANSWER, T.EOS],  # invalid UTF-8 in the think block
    [T.THINK, 0xFF, T.END_THINK, T.ANSWER, 49, T.END_ANSWER, T.EOS],  # the unused reserved byte
    [T.THINK, 49, T.END_THINK, T.ANSWER, *b"1" * 65, T.END_ANSWER, T.EOS],  # answer too long
])
def test_parse_is_strict(bad):
    assert T.parse(bad) is None


def test_encode_rejects_non_text():
    with pytest.raises(TypeError, match="question"):
        T.encode_prompt(b"bytes")


# --- world --------------------------------------------------------------------------------------
def test_problems_are_graded_distinct_carrying_and_split_by_arithmetic():
    train = W.problems(200, digits=3, language="en", split="train", seed=0)
    held = W.problems(50, digits=3, language="da", split="held_out", seed=0)
    assert len({(p.a, p.b) for p in train}) == 200
    assert all(p.difficulty == 3 and W.carries(p.a, p.b) >= 1 and p.split == "train" for p in train)
    assert all(p.split == "held_out" for p in held)
    # the split is by the sum, not the prompt: the same sum is held out in both languages
    assert {W.Problem(p.a, p.b, "en").split for p in held} == {"held_out"}
    assert not {(p.a, p.b) for p in train} & {(p.a, p.b) for p in held}
    assert held[0].question.startswith("HVAD ER ") and train[0].question.startswith("what is ")


@pytest.mark.parametrize("kwargs, field", [(dict(digits=7), "digits"), (dict(language="fr"), "language"),
                                           (dict(split="test"), "split"), (dict(n=0), "n")])
def test_problem_knobs_are_checked(kwargs, field):
    with pytest.raises(ValueError, match=field):
        W.problems(**{"n": 3, **kwargs})


def test_annotator_is_right_column_by_column_and_summarises():
    for p in W.problems(100, digits=4, seed=1) + W.problems(100, digits=2, language="da", seed=1):
        think = W.annotate(p)
        assert W.summary_answer(think) == p.answer
        assert think.splitlines()[-1].split()[0] == W.WORDS[p.language]["so"]
        assert W.consistency(think, p.language) == 1.0 and W.self_checks(think) == 0
        r = W.reward_parts(p, W.response(p, think))
        assert (r.accuracy, r.format, r.consistency) == (1.0, 1.0, 1.0)


def test_slip_is_wrong_and_check_catches_it():
    p = W.Problem(385, 47)
    assert W.annotate(p) == "5+7=12 carry\n8+4+1=13 carry\n3+0+1=4\nso 432"
    assert W.annotate(p, slips={1}) == "5+7=12 carry\n8+4=12 carry\n3+0+1=4\nso 422"
    caught = W.annotate(p, slips={1}, checks={1})
    assert caught.splitlines()[2] == "check 8+4+1=13 fix"
    assert W.summary_answer(caught) == "432" and W.self_checks(caught) == 1
    assert W.reward_parts(p, W.response(p, W.annotate(p, slips={1}))).accuracy == 0.0
    assert W.annotate(p, checks={0}) == W.annotate(p)  # column 0 has no incoming carry: nothing to check
    # a slip in a carry column changes the carries that follow
    assert W.summary_answer(W.annotate(W.Problem(95, 5), slips={1})) == "90"


def test_consistency_counts_target_language_words():
    p = W.Problem(9985, 47, "da")
    mixed = W.annotate(p, switch_at=2)  # two columns in da (a word each), then 3 words in en
    assert mixed.splitlines() == ["5+7=12 MENTE", "8+4+1=13 MENTE", "9+0+1=10 carry", "9+0+1=10 carry", "so 10032"]
    assert W.consistency(mixed, "da") == pytest.approx(2 / 5)
    assert W.consistency(mixed, "en") == pytest.approx(3 / 5)
    assert W.consistency("1+2=3", "en") == 0.0
    assert W.consistency("so So SO", "en") == pytest.approx(1 / 3)  # a mixed-case word is in neither


def test_reward_parts_on_malformed_and_wrong():
    p = W.Problem(12, 89)
    assert W.reward_parts(p, [*b"101"]) == W.Rewards(0.0, 0.0, 0.0, 0, 3)
    assert W.summary_answer(W.annotate(W.Problem(95, 15))) == "110"  # the final carry is in the summary
    assert W.reward_parts(p, T.encode_response("so 101", "101")).accuracy == 1.0
    assert W.reward_parts(p, T.encode_response("so 101", "100+1")).accuracy == 0.0  # the number itself


def test_base_corpus_holds_imperfect_solutions_in_both_languages_and_plain_text():
    corpus = W.base_corpus(600, seed=3)
    docs = [d for d in corpus.split(b"\n\n") if d.startswith(bytes([T.USER]))]
    assert len(docs) == 600 and len(corpus.split(b"\n\n")) > 650  # plain text between them
    acc, langs, checks, mixed = [], set(), 0, 0
    for d in docs:
        ids = list(d)
        cut = ids.index(T.ASSISTANT) + 1
        q = bytes(ids[1:cut - 1]).decode()
        lang = "da" if q.startswith("HVAD") else "en"
        a, b = map(int, q.split()[-1].rstrip("?").split("+"))
        r = W.reward_parts(W.Problem(a, b, lang), ids[cut:])
        assert r.format == 1.0
        acc.append(r.accuracy)
        langs.add(lang)
        checks += r.checks > 0
        mixed += r.consistency < 1
    assert langs == {"en", "da"}
    assert 0.2 < sum(acc) / len(acc) < 0.8 and checks > 50 and mixed > 50
    assert not any(W.Problem(*map(int, bytes(list(d)[1:list(d).index(T.ASSISTANT)]).decode().split()[-1]
                                  .rstrip("?").split("+"))).split == "held_out" for d in docs)


def test_cold_start_pairs_are_correct_consistent_and_reflective():
    pairs = W.cold_start_pairs(120, seed=0)
    assert len(pairs) == 120
    fixes = 0
    for prompt, resp in pairs:
        q = bytes(prompt[1:-1]).decode()
        lang = "da" if q.startswith("HVAD") else "en"
        a, b = map(int, q.split()[-1].rstrip("?").split("+"))
        r = W.reward_parts(W.Problem(a, b, lang), resp)
        assert (r.accuracy, r.format, r.consistency) == (1.0, 1.0, 1.0)
        fixes += W.WORDS[lang]["fix"] in T.parse(resp).think.split()
    assert fixes > 5


def test_plain_pairs_have_no_think_block():
    pairs = W.plain_pairs(5, seed=0)
    assert len(pairs) == 5
    for prompt, resp in pairs:
        assert prompt[0] == T.USER and prompt[-1] == T.ASSISTANT and resp[-1] == T.EOS
        assert T.THINK not in resp and T.parse(resp) is None
